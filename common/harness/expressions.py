"""A small, safe evaluator for claim checks.

A claim's ``check`` is an expression over recorded metric names, for example::

    soug.T1000.stratified_svarm.mse * 10 < soug.T1000.approshapley.mse
    0.35 <= soug.T1000.svarm.mse / soug.T500.svarm.mse <= 0.7

Grammar (a subset of Python's expression syntax, parsed with :mod:`ast` and walked
here; nothing is ever passed to ``eval``): numbers, ``True``/``False``, dotted metric
names, unary ``+ - not``, binary ``+ - * / ** %``, comparisons (chained allowed),
``and``/``or``, parentheses, and the functions ``min``, ``max``, ``abs``, ``log``,
``log10``, ``sqrt``, ``exp``. A metric may be a per-seed array (a list recorded by the
notebook); it must be reduced by ``min``, ``max``, ``mean``, ``median`` or ``len`` before
arithmetic. Powers are computed in floating point, so every expression is evaluated in
bounded time; an overflow raises :class:`ExpressionError`. Metric names are identifiers joined by dots; a name part
may not start with a digit (write ``T1000``, not ``1000``).
"""

from __future__ import annotations

import ast
import math
import operator
import statistics
from collections.abc import Mapping

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
FUNCTIONS = {
    "min": min,
    "max": max,
    "mean": statistics.fmean,
    "median": statistics.median,
    "len": len,
    "abs": abs,
    "log": math.log,
    "log10": math.log10,
    "sqrt": math.sqrt,
    "exp": math.exp,
}


class ExpressionError(ValueError):
    """The check expression is malformed or uses something outside the grammar."""


class MissingMetricError(KeyError):
    """The check names a metric that the run never recorded."""

    def __init__(self, names: list[str]):
        super().__init__(names)
        self.names = names

    def __str__(self) -> str:
        return "metric(s) never recorded: " + ", ".join(self.names)


def _parse(expression: str) -> ast.Expression:
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("a check must be a non-empty string")
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"a check may have at most {MAX_LENGTH} characters, got {len(expression)}")
    try:
        return ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse check {expression!r}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"cannot parse check {expression[:80]!r}: {type(exc).__name__}: {exc}") from None


def _dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def metric_names(expression: str) -> list[str]:
    """The metric names an expression refers to, in order of first appearance."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        name = _dotted_name(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name is not None:
            if name not in FUNCTIONS and name not in ("True", "False") and name not in names:
                names.append(name)
            return
        if isinstance(node, ast.Call):
            for arg in node.args:
                visit(arg)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    tree = _parse(expression)
    validate(expression)
    visit(tree.body)
    return names


def validate(expression: str) -> None:
    """Raise :class:`ExpressionError` unless the expression is inside the grammar (constant
    sub-expressions are computed, so an overflow such as ``2.0 ** 2000`` is caught here)."""
    _guarded(_parse(expression).body, None, expression)


def _guarded(body: ast.AST, metrics, expression: str):
    try:
        return _reject_array(_walk(body, metrics), body)
    except RecursionError:
        raise ExpressionError(f"check {expression[:80]!r} is nested too deeply") from None


def evaluate(expression: str, metrics: Mapping[str, float]):
    """Evaluate ``expression`` with metric values from ``metrics``.

    Raises :class:`MissingMetricError` listing every name the run did not record.
    """
    missing = [name for name in metric_names(expression) if name not in metrics]
    if missing:
        raise MissingMetricError(missing)
    return _guarded(_parse(expression).body, metrics, expression)


class _Unknown:
    """A metric's value while validating (no metrics yet): operations on it stay unknown."""

    def __repr__(self) -> str:
        return "<metric>"


_UNKNOWN = _Unknown()
MAX_LENGTH = 4000
ARRAY_FUNCTIONS = ("min", "max", "mean", "median", "len")


def _reject_array(value, node: ast.AST):
    if isinstance(value, (list, tuple)):
        raise ExpressionError(
            f"{ast.unparse(node)!r} is a per-seed array; reduce it first with one of {list(ARRAY_FUNCTIONS)}")
    return value


def _arith(func, *args):
    """Apply an arithmetic operator in bounded time: powers are taken in floating point."""
    if any(a is _UNKNOWN for a in args):
        return _UNKNOWN
    try:
        if func is operator.pow:
            base, exponent = (float(a) for a in args)
            return math.pow(base, exponent)
        return func(*args)
    except ZeroDivisionError:
        return math.nan
    except OverflowError:
        raise ExpressionError(f"overflow computing {func.__name__}{tuple(args)!r}") from None
    except ValueError:  # math domain error, e.g. a negative number to a fractional power
        return math.nan


def _walk(node: ast.AST, metrics: Mapping[str, float] | None):
    """Evaluate ``node``; with ``metrics=None`` only validate (metric names are unknown values,
    constant sub-expressions are still computed, so ``2.0 ** 2000`` fails when the claim is loaded)."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float)):
            return node.value
        raise ExpressionError(f"only numbers and booleans are allowed as constants, not {node.value!r}")
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted_name(node)
        if name is None:
            raise ExpressionError("attributes are only allowed inside dotted metric names")
        if name in FUNCTIONS:
            raise ExpressionError(f"{name} is a function; call it with parentheses")
        if name in ("True", "False"):
            return name == "True"
        return _UNKNOWN if metrics is None else metrics[name]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _reject_array(_walk(node.left, metrics), node.left)
        right = _reject_array(_walk(node.right, metrics), node.right)
        return _arith(_BINARY[type(node.op)], left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _reject_array(_walk(node.operand, metrics), node.operand)
        return _arith(_UNARY[type(node.op)], value)
    if isinstance(node, ast.BoolOp):
        values = [_reject_array(_walk(v, metrics), v) for v in node.values]
        if any(v is _UNKNOWN for v in values):
            return _UNKNOWN
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ExpressionError("only < <= > >= == != comparisons are allowed")
        operands = [node.left, *node.comparators]
        values = [_reject_array(_walk(n, metrics), n) for n in operands]
        if any(v is _UNKNOWN for v in values):
            return _UNKNOWN
        return all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:], strict=False))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function {ast.unparse(node.func)!r}; allowed: {sorted(FUNCTIONS)}")
        if node.keywords or not node.args:
            raise ExpressionError(f"{name}() takes positional arguments only")
        args = [_walk(a, metrics) for a in node.args]
        arrays = [a for a in args if isinstance(a, (list, tuple))]
        if arrays:
            if name not in ARRAY_FUNCTIONS or len(args) != 1:
                raise ExpressionError(f"{name}() cannot take a per-seed array; array reductions: {list(ARRAY_FUNCTIONS)} "
                                      "with the array as their only argument")
            values = [math.nan if v is None else v for v in args[0]]
            if name == "len":
                return len(values)
            if not values or any(isinstance(v, float) and math.isnan(v) for v in values):
                return math.nan  # min/max/median of an array with a NaN would depend on its position
            return FUNCTIONS[name](values)
        if name in ("mean", "median", "len") and (len(args) != 1 or args[0] is not _UNKNOWN):
            raise ExpressionError(f"{name}() takes one per-seed array")
        if any(a is _UNKNOWN for a in args):
            return _UNKNOWN
        try:
            return FUNCTIONS[name](*args)
        except OverflowError:
            raise ExpressionError(f"overflow computing {name}{tuple(args)!r}") from None
        except TypeError as exc:
            raise ExpressionError(f"{ast.unparse(node)!r}: {exc}") from None
        except ValueError:  # math domain error: log of a negative number
            return math.nan
    raise ExpressionError(f"{type(node).__name__} is not allowed in a check ({ast.unparse(node)!r})")
