"""Notebook parameters: reading the ``parameters`` cell and validating overrides.

papermill only warns about unknown parameters; here an unknown name or a value of
the wrong type is an error that names the parameter, the notebook and what it takes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml


class ParameterError(ValueError):
    """A parameter override is unknown or has the wrong type."""


def declared_parameters(notebook: Path) -> dict[str, object]:
    """``{name: default}`` from the notebook's ``parameters`` cell (via papermill)."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    defaults = {}
    for name, info in declared.items():
        try:
            defaults[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            raise ParameterError(
                f"{notebook.name}: the default of parameter {name!r} ({info['default']!r}) is not a literal; "
                "parameters cells may only assign literals"
            ) from None
    return defaults


def parse_assignments(tokens: list[str] | str | None) -> dict:
    """Parse ``['seed=3', 'n_runs=5', "budgets=[500, 1000]"]`` (or one space-separated string).

    Values are read as YAML scalars/lists, so ``5`` is an int, ``0.5`` a float,
    ``true`` a bool and ``abc`` a string.
    """
    if tokens is None:
        return {}
    if isinstance(tokens, str):
        import shlex

        tokens = shlex.split(tokens)
    values = {}
    for token in tokens:
        name, sep, raw = token.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ParameterError(f"cannot read parameter {token!r}: write name=value, e.g. seed=3")
        try:
            values[name] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ParameterError(f"cannot read the value of {name!r}: {exc}") from None
    return values


def _type_name(value) -> str:
    return "None" if value is None else type(value).__name__


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def check_value(notebook: str, name: str, value, default) -> object:
    """Return ``value`` (ints are accepted for float parameters) or raise ParameterError."""
    if default is None:
        return value
    expected = type(default)
    ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        ok = False
    if expected is list and isinstance(value, tuple):
        return list(value)
    if not ok:
        raise ParameterError(
            f"{notebook}: parameter {name!r} takes {_article(_type_name(default))} (default {default!r}), "
            f"got {value!r} ({_type_name(value)})"
        )
    return value


def resolve(notebooks: dict[str, dict], overrides_by_notebook: dict[str, dict], user: dict) -> dict[str, dict]:
    """Effective overrides per notebook.

    ``notebooks`` maps notebook name to its declared defaults; ``overrides_by_notebook``
    holds the profile's overrides; ``user`` the command-line ones, which apply to every
    notebook that declares them and must be declared by at least one.
    """
    unknown = sorted(n for n in user if not any(n in declared for declared in notebooks.values()))
    if unknown:
        available = sorted({n for declared in notebooks.values() for n in declared})
        raise ParameterError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; the notebooks take: {', '.join(available)}"
        )
    effective = {}
    for notebook, declared in notebooks.items():
        chosen = {}
        for name, value in (overrides_by_notebook.get(notebook) or {}).items():
            if name not in declared:
                raise ParameterError(
                    f"{notebook}: the profile sets unknown parameter {name!r}; it takes: {', '.join(sorted(declared))}"
                )
            chosen[name] = check_value(notebook, name, value, declared[name])
        for name, value in user.items():
            if name in declared:
                chosen[name] = check_value(notebook, name, value, declared[name])
        effective[notebook] = chosen
    return effective
