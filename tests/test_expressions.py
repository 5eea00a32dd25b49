import math

import pytest

from common.harness import expressions
from common.harness import expressions as ex


def test_arithmetic_comparisons_and_functions():
    metrics = {"a.mse": 0.05, "b.mse": 2.5, "x": -3.0}
    assert ex.evaluate("a.mse * 10 < b.mse", metrics) is True
    assert ex.evaluate("0.35 <= a.mse / b.mse * 20 <= 0.7", metrics) is True
    assert ex.evaluate("max(a.mse, b.mse) == 2.5 and abs(x) == 3", metrics) is True
    assert ex.evaluate("min(a.mse, 1) + log10(100) - sqrt(4)", metrics) == pytest.approx(0.05)
    assert ex.evaluate("not (x > 0) or False", metrics) is True


def test_metric_names_in_order_without_functions():
    assert ex.metric_names("max(a.b, c) / a.b < log(d.e_f)") == ["a.b", "c", "d.e_f"]


def test_missing_metric_is_named():
    with pytest.raises(ex.MissingMetricError, match="never recorded: b"):
        ex.evaluate("a < b", {"a": 1})


def test_division_by_zero_gives_nan_not_crash():
    assert math.isnan(ex.evaluate("a / b", {"a": 1, "b": 0}))


@pytest.mark.parametrize("source", [
    "__import__('os').system('true')",
    "a.__class__",  # parses as a dotted name, which is fine, but cannot reach attributes:
    "[a for a in b]",
    "lambda: 1",
    "a if b else c",
    "a[0]",
    "'text' == a",
    "open('x')",
    "max(a, key=b)",
    "a is b",
])
def test_rejects_everything_outside_the_grammar(source):
    if source == "a.__class__":
        # dotted names are metric names: evaluating looks up the literal key, never an attribute
        with pytest.raises(ex.MissingMetricError):
            ex.evaluate(source, {"a": 1})
        return
    with pytest.raises(ex.ExpressionError):
        ex.validate(source)


def test_syntax_error_is_an_expression_error():
    with pytest.raises(ex.ExpressionError, match="cannot parse"):
        ex.validate("a <")


# --- bad input is an ExpressionError, in bounded time -------------------------------------------

@pytest.mark.parametrize("text", ["9**9**9", "10**100000", "2.0**2000", "exp(1000)", "x ** 1e6"])
def test_overflow_is_an_expression_error(text):
    import time

    start = time.perf_counter()
    with pytest.raises(expressions.ExpressionError, match="overflow"):
        expressions.validate(text)
        expressions.evaluate(text, {"x": 10.0})
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text", ["-" * 3000 + "1", "(" * 500 + "x" + ")" * 500, "x + " * 1200 + "x"])
def test_pathological_expressions_are_rejected(text):
    with pytest.raises(expressions.ExpressionError):
        expressions.validate(text)


def test_per_seed_arrays_must_be_reduced():
    metrics = {"gap": [0.1, 0.3, 0.2], "b": 1.0}
    assert expressions.evaluate("mean(gap) > 0.19 and min(gap) > 0 and len(gap) == 3", metrics)
    assert expressions.evaluate("median(gap)", metrics) == pytest.approx(0.2)
    for text in ("gap > 0", "gap + b", "max(gap, b)", "log(gap)", "mean(b)"):
        with pytest.raises(expressions.ExpressionError):
            expressions.evaluate(text, metrics)


def test_negative_base_fractional_power_is_nan():
    import math

    assert math.isnan(expressions.evaluate("x ** 0.5", {"x": -4.0}))
