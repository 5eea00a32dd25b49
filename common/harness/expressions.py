"""A small, safe evaluator for claim checks.

A claim's ``check`` is an expression over recorded metric names, for example::

    soug.T1000.stratified_svarm.mse * 10 < soug.T1000.approshapley.mse
    0.35 <= soug.T1000.svarm.mse / soug.T500.svarm.mse <= 0.7

Grammar (a subset of Python's expression syntax, parsed with :mod:`ast` and walked
here; nothing is ever passed to ``eval``): numbers, ``True``/``False``, dotted metric
names, unary ``+ - not``, binary ``+ - * / ** %``, comparisons (chained allowed),
``and``/``or``, parentheses, and the functions ``min``, ``max``, ``abs``, ``log``,
``log10``, ``sqrt``, ``exp``. Metric names are identifiers joined by dots; a name part
may not start with a digit (write ``T1000``, not ``1000``).
"""

from __future__ import annotations

import ast
import math
import operator
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
    try:
        return ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse check {expression!r}: {exc.msg}") from None


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
    """Raise :class:`ExpressionError` unless the expression is inside the grammar."""
    _walk(_parse(expression).body, metrics=None)


def evaluate(expression: str, metrics: Mapping[str, float]):
    """Evaluate ``expression`` with metric values from ``metrics``.

    Raises :class:`MissingMetricError` listing every name the run did not record.
    """
    missing = [name for name in metric_names(expression) if name not in metrics]
    if missing:
        raise MissingMetricError(missing)
    return _walk(_parse(expression).body, metrics)


def _walk(node: ast.AST, metrics: Mapping[str, float] | None):
    checking = metrics is None
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
        return 0.0 if checking else metrics[name]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left, metrics), _walk(node.right, metrics)
        if checking:
            return 0.0
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            return math.nan
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _walk(node.operand, metrics)
        return 0.0 if checking else _UNARY[type(node.op)](value)
    if isinstance(node, ast.BoolOp):
        values = [_walk(v, metrics) for v in node.values]
        if checking:
            return True
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ExpressionError("only < <= > >= == != comparisons are allowed")
        values = [_walk(node.left, metrics)] + [_walk(c, metrics) for c in node.comparators]
        if checking:
            return True
        return all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:], strict=False))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function {ast.unparse(node.func)!r}; allowed: {sorted(FUNCTIONS)}")
        if node.keywords or not node.args:
            raise ExpressionError(f"{name}() takes positional arguments only")
        args = [_walk(a, metrics) for a in node.args]
        if checking:
            return 0.0
        try:
            return FUNCTIONS[name](*args)
        except (ValueError, OverflowError):
            return math.nan
    raise ExpressionError(f"{type(node).__name__} is not allowed in a check ({ast.unparse(node)!r})")
