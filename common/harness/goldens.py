"""Goldens: the expected metrics of a paper's ci run, with tolerances from the seed spread.

``expected/ci.json`` holds, per notebook and metric, the value at the ci profile's
own seed and an absolute tolerance ``atol = max(3 * spread, floor)`` where ``spread``
is the standard deviation of the metric over ``len(seeds)`` runs with different
seeds. A code change that alters a metric by less than the seed-to-seed noise passes;
a real regression fails. ``make bless`` rewrites the file with provenance.
"""

from __future__ import annotations

import math
import statistics

SIGMAS = 3.0
RELATIVE_FLOOR = 1e-9
ABSOLUTE_FLOOR = 1e-12


def tolerance(values: list) -> tuple[float, float]:
    """(spread, atol) for a metric observed at several seeds."""
    numbers = [float(v) for v in values if v is not None and not isinstance(v, bool)]
    numbers = [v for v in numbers if math.isfinite(v)]
    spread = statistics.stdev(numbers) if len(numbers) >= 2 else 0.0
    scale = max((abs(v) for v in numbers), default=0.0)
    return spread, max(SIGMAS * spread, RELATIVE_FLOOR * scale, ABSOLUTE_FLOOR)


def build(per_seed_metrics: list[dict], volatile: dict, provenance: dict) -> dict:
    """Goldens from ``per_seed_metrics[k][notebook][name]``; entry 0 is the ci seed."""
    base = per_seed_metrics[0]
    notebooks = {}
    for notebook, metrics in base.items():
        entries = {}
        for name, value in metrics.items():
            if name in volatile.get(notebook, ()):
                continue
            if isinstance(value, bool):
                entries[name] = {"value": value}
                continue
            values = [run.get(notebook, {}).get(name) for run in per_seed_metrics]
            spread, atol = tolerance(values)
            entries[name] = {"value": value, "spread": spread, "atol": atol}
        notebooks[notebook] = entries
    # volatile metrics (wall times) get no golden, but their names are kept: claims may read them
    volatile_names = {notebook: sorted(volatile.get(notebook, ())) for notebook in base}
    return {"provenance": provenance, "notebooks": notebooks, "volatile": volatile_names}


def compare(goldens: dict, metrics: dict, volatile: dict) -> list[str]:
    """Problems found comparing a run's ``metrics[notebook][name]`` with goldens (empty = pass)."""
    problems = []
    expected_notebooks = goldens.get("notebooks", {})
    for notebook in sorted(set(expected_notebooks) | set(metrics)):
        expected = expected_notebooks.get(notebook)
        got = metrics.get(notebook)
        if expected is None:
            problems.append(f"{notebook}: no goldens for this notebook (run `make bless`)")
            continue
        if got is None:
            problems.append(f"{notebook}: goldens exist but the notebook recorded nothing")
            continue
        for name in sorted(set(got) - set(expected) - set(volatile.get(notebook, ()))):
            problems.append(f"{notebook}: new metric {name} has no golden (run `make bless` if intended)")
        for name, entry in sorted(expected.items()):
            if name not in got:
                problems.append(f"{notebook}: metric {name} has a golden but was not recorded")
                continue
            value, target = got[name], entry["value"]
            if isinstance(target, bool) or isinstance(value, bool) or target is None or value is None:
                if value != target:
                    problems.append(f"{notebook}: {name} = {value!r}, golden {target!r}")
                continue
            if not math.isclose(value, target, rel_tol=0.0, abs_tol=entry["atol"]):
                problems.append(
                    f"{notebook}: {name} = {value:.6g}, golden {target:.6g} ± {entry['atol']:.3g} "
                    f"(3 × seed spread {entry.get('spread', 0):.3g})"
                )
    return problems
