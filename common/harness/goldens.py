"""Goldens: the expected metrics of a paper's ci run, with tolerances that hold on any machine.

``expected/ci.json`` holds, per notebook and metric, the value of the canonical ci run and an
absolute tolerance built from three measured or declared sources, all recorded beside it so a
reader sees why a tolerance is what it is::

    atol = max(SIGMAS × seed spread, HARDWARE_K × hardware spread, floor)

- **seed spread**: standard deviation over ``n_seeds`` runs with the notebooks' ``seed`` shifted
  (the per-seed values are kept under ``seeds``);
- **hardware spread**: the largest deviation from the canonical value when the canonical seed is
  re-run under other numeric kernels that one machine can emulate (:data:`KERNEL_VARIANTS`: torch's
  ``ATEN_CPU_CAPABILITY``, MKL's ``MKL_ENABLE_INSTRUCTIONS`` (MKL dispatches differently on AMD and
  Intel), oneDNN's ``DNNL_MAX_CPU_ISA``, OpenBLAS's ``OPENBLAS_CORETYPE`` and another thread count; one
  variant is exactly the kernels of CI's second pass, ``make test-kernels``); the values are kept under
  ``hardware``;
- **floor**: from the metric's precision, ``REL_FLOOR[dtype] × |value|`` (float32 when the notebook
  recorded a float32 scalar, otherwise 1e-6 relative), or exact for integers.

A metric that measures rounding itself (a round-trip error near machine precision) is declared by
its notebook with ``record(name, value, log_factor=F)`` and compared on a log scale instead:
``max(value / golden, golden / value) <= F``, where F is the declared factor capped at
``max(3, r^3)`` with r the largest ratio the emulated kernels show. Booleans compare exactly. A per-seed
array compares element by element, each element with its own tolerance.

A code change that moves a metric by less than the noise between seeds and machines passes; a real
regression fails. ``make bless`` rewrites the file with provenance.

**Earlier blessings.** One machine's emulated kernels do not bound another CPU's (goldens blessed on an
Intel Xeon failed on an AMD EPYC). So a re-bless checks every canonical and kernel-variant value of every
earlier blessing against the new entries (:func:`review`), and the file keeps, under ``previous``, the values
each earlier machine gave (:func:`carry_earlier`): one blessing per machine key (CPU and torch's CPU
capability; the CPU alone for blessings made before the capability was recorded), the newest, other than
the machine of the file's own blessing, each with its ``code_hash`` and ``input_hash``; per metric the
canonical value (alone when every kernel variant gave it) or ``{"value": v, "hardware": {variant: w}}``
with only the variants that differ from it. A failing value blessed with the same code and input hashes
as the new goldens is a break (refused unless a reason is given); with other hashes it is stale (dropped
and listed). A file without ``previous`` (blessed before this existed) has no earlier values.
:func:`check_file` re-checks a file's stored earlier values without running anything
(``python -m common.harness goldens-check``).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

SIGMAS = 3.0
HARDWARE_K = 3.0
# relative floors by the precision a metric was computed in: 64 ulps of float32 where the notebook
# recorded a float32 scalar; 1e-6 otherwise (about 8 float32 ulps: most metrics come from float32
# networks through float64 reductions, and CPUs differ by a few float32 ulps); 4 ulps for bfloat16/float16
REL_FLOOR = {"float16": 4 * 2.0 ** -10, "bfloat16": 4 * 2.0 ** -7, "float32": 64 * 2.0 ** -23, "default": 1e-6}
# a declared log_factor is capped by what the emulated kernels show: at most max(LOG_MIN, worst ratio^3)
LOG_MIN = 3.0
ABSOLUTE_FLOOR = 1e-12

# The numeric kernels `make bless` emulates on one machine (each: environment of the kernel).
KERNEL_VARIANTS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": "2"},
    "sse": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "DNNL_MAX_CPU_ISA": "SSE41",
            "OPENBLAS_CORETYPE": "Nehalem", "OMP_NUM_THREADS": "1"},
    # exactly the Makefile's KERNELS_ENV (CI's second pass, `make test-kernels`; tests/test_cli.py keeps them
    # equal): torch's generic kernels with MKL's AVX2 path, a pairing neither variant above has. On an Intel
    # Xeon, MKL's AVX2 sgemm rounds rows 0-7 and 8-15 of a 16-row batch differently, so an identity that is
    # exactly 0 under the other two variants was 1.5e-5 here and failed CI (dreamcatalyst, 2026-12-05).
    "test_kernels": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "2"},
}
# The environment variables that select numeric kernels (recorded in provenance).
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE",
               "OMP_NUM_THREADS", "MKL_NUM_THREADS")

RULE = (f"atol = max({SIGMAS:g} x stdev over seeds, {HARDWARE_K:g} x max |kernel variant - canonical|, "
        f"floor = REL_FLOOR[dtype] x |value| (exact for integers)), per element for arrays; metrics recorded "
        f"with log_factor=F compare as max(v/g, g/v) <= min(F, max({LOG_MIN:g}, r^3)), r the largest "
        f"kernel-variant ratio")


def _numbers(values) -> list[float]:
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def _is_array(value) -> bool:
    return isinstance(value, (list, tuple))


def _elements(value) -> list:
    return list(value) if _is_array(value) else [value]


def _columns(values: list) -> list[list]:
    runs = [_elements(v) for v in values if v is not None]
    if len(runs) < 2 or len({len(r) for r in runs}) != 1:
        return []
    return [list(column) for column in zip(*runs, strict=True)]


def seed_spreads(values: list) -> list[float]:
    """Standard deviation over seeds, one per element (one for a scalar; zeros when shapes differ)."""
    columns = _columns(values)
    if not columns:
        return [0.0] * len(_elements(values[0]))
    out = []
    for column in columns:
        numbers = _numbers(column)
        out.append(statistics.stdev(numbers) if len(numbers) >= 2 else 0.0)
    return out


def seed_spread(values: list) -> float:
    """The largest per-element standard deviation over seeds."""
    return max(seed_spreads(values), default=0.0)


class HardwareDependenceError(ValueError):
    """A metric changes shape, or becomes NaN, under another numeric kernel: no tolerance can cover that."""


def hardware_spreads(canonical, variants: list) -> list[float]:
    """|variant - canonical|, largest over kernel variants, one per element."""
    base = _elements(canonical)
    worst = [0.0] * len(base)
    for other in variants:
        other = _elements(other)
        if len(other) != len(base):
            raise HardwareDependenceError(f"{len(base)} values on the canonical kernels, {len(other)} on another")
        for i, (a, b) in enumerate(zip(base, other, strict=True)):
            if a is None or b is None:
                if a is not b:
                    raise HardwareDependenceError(f"NaN on one kernel only ({a!r} vs {b!r})")
                continue
            if math.isfinite(float(a)) and math.isfinite(float(b)):
                worst[i] = max(worst[i], abs(float(a) - float(b)))
    return worst


def hardware_spread(canonical, variants: list) -> float:
    """The largest |variant - canonical| over kernel variants and elements."""
    return max(hardware_spreads(canonical, variants), default=0.0)


def floors(value, dtype: str | None = None) -> list[float]:
    """The tolerance floor from the metric's precision, one per element (0 for integers: exact)."""
    rel = REL_FLOOR.get(dtype or "default", REL_FLOOR["default"])
    out = []
    for v in _elements(value):
        if isinstance(v, int) and not isinstance(v, bool):
            out.append(0.0)
        elif v is None or not math.isfinite(float(v)):
            out.append(ABSOLUTE_FLOOR)
        else:
            out.append(max(rel * abs(float(v)), ABSOLUTE_FLOOR))
    return out


def floor(value, dtype: str | None = None) -> float:
    return max(floors(value, dtype), default=0.0)


def tolerance(values: list, variants: list | None = None, dtype: str | None = None) -> dict:
    """The golden entry's tolerance fields for a metric: ``values[0]`` is the canonical seed.

    For a per-seed array every field is a list with one entry per element.
    """
    seeds = seed_spreads(values)
    hardware = hardware_spreads(values[0], variants or [])
    low = floors(values[0], dtype)
    atol = [max(SIGMAS * a, HARDWARE_K * b, c) for a, b, c in zip(seeds, hardware, low, strict=True)]
    if _is_array(values[0]):
        return {"spread": seeds, "hardware_spread": hardware, "floor": low, "atol": atol}
    return {"spread": seeds[0], "hardware_spread": hardware[0], "floor": low[0], "atol": atol[0]}


def log_factor(declared: float, canonical, variants: list) -> tuple[float, float]:
    """(factor used, worst measured ratio): the declared factor, capped at max(LOG_MIN, worst ratio^3)."""
    worst = 1.0
    for other in variants:
        for a, b in zip(_elements(canonical), _elements(other), strict=False):
            if a is None or b is None or a == b:
                continue
            a, b = float(a), float(b)
            if a > 0 and b > 0:
                worst = max(worst, a / b, b / a)
            else:
                worst = math.inf
    return min(float(declared), max(LOG_MIN, worst ** 3)), worst


def build(per_seed_metrics: list[dict], volatile: dict, provenance: dict, *, variants: dict | None = None,
          log_factors: dict | None = None, dtypes: dict | None = None) -> dict:
    """Goldens from ``per_seed_metrics[k][notebook][name]`` (entry 0 is the canonical ci seed) and the
    canonical seed's metrics under each kernel variant, ``variants[variant][notebook][name]``.

    ``log_factors[notebook][name]`` and ``dtypes[notebook][name]`` are what the notebooks declared.
    """
    base = per_seed_metrics[0]
    variants = variants or {}
    notebooks = {}
    for notebook, metrics in base.items():
        entries = {}
        factors = (log_factors or {}).get(notebook, {})
        kinds = (dtypes or {}).get(notebook, {})
        for name, value in metrics.items():
            if name in volatile.get(notebook, ()):
                continue
            if isinstance(value, bool):
                entries[name] = {"value": value}
                continue
            values = [run.get(notebook, {}).get(name) for run in per_seed_metrics]
            other = {v: run.get(notebook, {}).get(name) for v, run in variants.items()}
            entry = {"value": value, "seeds": values, "hardware": other}
            if name in factors:
                # rounding-level metric: compared on a log scale, within the declared factor capped by
                # what the emulated kernels show (a generous declaration cannot hide a regression)
                used, worst = log_factor(factors[name], value, list(other.values()))
                entry.update({"compare": "log", "factor": used, "declared_factor": float(factors[name]),
                              "hardware_ratio": worst})
                outside = [v for v, x in other.items() if compare_metric(name, x, entry)]
                if outside:
                    raise HardwareDependenceError(
                        f"{notebook}: {name}: the kernel variant(s) {outside} differ by more than the declared "
                        f"log_factor {factors[name]:g} ({_fmt(value)} vs {_fmt([other[v] for v in outside])})")
            else:
                try:
                    entry.update(tolerance(values, list(other.values()), kinds.get(name)))
                except HardwareDependenceError as exc:
                    raise HardwareDependenceError(f"{notebook}: {name}: {exc}") from None
                if kinds.get(name):
                    entry["dtype"] = kinds[name]
            entries[name] = entry
        notebooks[notebook] = entries
    # volatile metrics (wall times) get no golden, but their names are kept: claims may read them
    volatile_names = {notebook: sorted(volatile.get(notebook, ())) for notebook in base}
    return {"provenance": provenance, "rule": RULE, "notebooks": notebooks, "volatile": volatile_names}


def _log_close(value, target, factor: float) -> bool:
    if value == target:
        return True
    if value is None or target is None:
        return False
    value, target = float(value), float(target)
    if not (math.isfinite(value) and math.isfinite(target)) or value <= 0 or target <= 0:
        return False
    return max(value / target, target / value) <= factor


def _close(value, target, atol: float) -> bool:
    if value is None or target is None:
        return value is target
    return math.isclose(float(value), float(target), rel_tol=0.0, abs_tol=atol)


def _fmt(value) -> str:
    if _is_array(value):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def compare_metric(name: str, value, entry: dict) -> str | None:
    """A problem description when ``value`` does not match the golden ``entry`` (None = match)."""
    target = entry["value"]
    if isinstance(target, bool) or isinstance(value, bool):
        return None if value == target else f"{name} = {value!r}, golden {target!r}"
    got, want = _elements(value), _elements(target)
    if _is_array(value) != _is_array(target) or len(got) != len(want):
        return f"{name} = {_fmt(value)}, golden {_fmt(target)} (shape differs)"
    if entry.get("compare") == "log":
        factor = entry["factor"]
        if all(_log_close(v, t, factor) for v, t in zip(got, want, strict=True)):
            return None
        return f"{name} = {_fmt(value)}, golden {_fmt(target)} (log scale: within a factor {factor:g} required)"
    atols = _elements(entry["atol"])
    if len(atols) != len(want):
        atols = [max(atols)] * len(want)  # goldens blessed before per-element tolerances
    bad = [i for i, (v, t, a) in enumerate(zip(got, want, atols, strict=True)) if not _close(v, t, a)]
    if not bad:
        return None
    i = bad[0]
    where = f"[{i}] " if _is_array(target) else ""
    pick = (lambda x: _elements(x)[i] if len(_elements(x)) == len(want) else max(_elements(x)))  # noqa: E731
    return (f"{name}{where} = {_fmt(got[i])}, golden {_fmt(want[i])} ± {atols[i]:.3g} (3 × seed spread "
            f"{SIGMAS * pick(entry.get('spread', 0)):.3g}, {HARDWARE_K:g} × hardware spread "
            f"{HARDWARE_K * pick(entry.get('hardware_spread', 0)):.3g}, floor {pick(entry.get('floor', 0)):.3g})")


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
            problem = compare_metric(name, got[name], entry)
            if problem:
                problems.append(f"{notebook}: {problem}")
    return problems


# --- earlier blessings: what other machines and older code gave, checked on every re-bless ------------

PREVIOUS = "previous"  # the key of a golden file's earlier blessings (absent in files blessed before it existed)
CANONICAL = "canonical"  # the kernel label of a blessing's canonical value


def machine(provenance: dict) -> str:
    """The CPU a blessing ran on: ``provenance["cpu"]``, else the CPU part of the device label
    (``"CPU (2 cores): AMD EPYC"`` -> ``"AMD EPYC"``; files blessed before ``cpu`` was recorded)."""
    cpu = provenance.get("cpu")
    if cpu:
        return str(cpu)
    label = str(provenance.get("device") or "unknown machine")
    if label.startswith("CPU (") and "): " in label:
        return label.split("): ", 1)[1]
    return label


def machine_key(blessing_or_provenance: dict) -> tuple[str, str | None]:
    """(CPU, torch's CPU capability) of a stored blessing (``machine``, ``cpu_capability``) or of a golden
    file's provenance (``cpu``/``device``, ``cpu_capability``). The capability is None for blessings made
    before it was recorded: such a key matches any capability of the same CPU (:func:`same_machine`)."""
    cpu = blessing_or_provenance.get("machine") or machine(blessing_or_provenance)
    return str(cpu), blessing_or_provenance.get("cpu_capability") or None


def same_machine(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    """Same CPU, and the same torch CPU capability where both are known (old files: the CPU alone)."""
    return a[0] == b[0] and (a[1] is None or b[1] is None or a[1] == b[1])


def machine_label(key: tuple[str, str | None]) -> str:
    """``"AMD EPYC (torch AVX2)"``, or the CPU alone when the capability is not known."""
    return f"{key[0]} (torch {key[1]})" if key[1] else key[0]


def _stored_values(entry: dict):
    """What an earlier blessing keeps of a golden entry: the canonical value when every kernel variant gave it,
    else ``{"value": v, "hardware": {variant: w}}`` with only the variants that differ from ``v``."""
    value = entry["value"]
    differ = {k: v for k, v in sorted((entry.get("hardware") or {}).items()) if v != value}
    return {"value": value, "hardware": differ} if differ else value


def _earlier_values(stored) -> list[tuple[str, object]]:
    """(kernel, value) pairs of one stored metric: the canonical value first, then the differing variants."""
    if isinstance(stored, dict):
        return [(CANONICAL, stored.get("value")), *sorted((stored.get("hardware") or {}).items())]
    return [(CANONICAL, stored)]


def _header(key: tuple[str, str | None], prov: dict) -> dict:
    """A stored blessing's identity: machine key, commit, the code and input hashes it was blessed with, date."""
    out = {"machine": key[0]}
    if key[1]:
        out["cpu_capability"] = key[1]
    out.update({"commit": prov.get("commit"), "code_hash": prov.get("code_hash"),
                "input_hash": prov.get("input_hash"), "created": prov.get("created")})
    return out


def blessing(golden: dict) -> dict:
    """A golden file's own blessing as an earlier one: its machine key, commit, code and input hashes (from
    the file's provenance), date and stored values."""
    prov = golden.get("provenance") or {}
    return {**_header(machine_key(prov), prov),
            "notebooks": {nb: {name: _stored_values(entry) for name, entry in sorted(entries.items())}
                          for nb, entries in sorted((golden.get("notebooks") or {}).items())}}


def blessings(golden: dict) -> list[dict]:
    """Every blessing a golden file knows, oldest first: its stored earlier ones, then its own."""
    return [*(golden.get(PREVIOUS) or []), blessing(golden)]


@dataclass(frozen=True)
class EarlierFailure:
    """One value an earlier blessing gave that a golden entry no longer accepts."""

    notebook: str
    metric: str
    machine: str
    commit: str | None
    kernel: str  # "canonical" or the kernel variant's name
    value: object
    problem: str  # compare_metric's description: value, golden ± tolerance
    cpu_capability: str | None = None
    code_hash: str | None = None
    input_hash: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return self.machine, self.cpu_capability

    def __str__(self) -> str:
        commit = f", commit {self.commit[:10]}" if self.commit else ""
        code = f", code {self.code_hash[:10]}" if self.code_hash else ""
        return (f"{self.notebook}: {self.problem} [blessed on {machine_label(self.key)}, {self.kernel} kernels"
                f"{commit}{code}]")


def _comparable(golden: dict, notebook: str, name: str) -> dict | None:
    """The current entry an earlier value is checked against (None: the metric is gone or volatile now)."""
    if name in (golden.get("volatile") or {}).get(notebook, ()):
        return None
    return ((golden.get("notebooks") or {}).get(notebook) or {}).get(name)


def check_earlier(earlier: list[dict], golden: dict) -> tuple[list[EarlierFailure], int]:
    """(failures, number of values checked): every canonical and kernel-variant value ``v`` of the ``earlier``
    blessings, for each metric that ``golden`` still has and does not declare volatile, against its entry
    ``(g, atol)`` with :func:`compare_metric`, exactly as a run on that machine would be compared:
    ``|v - g| <= atol`` per element, ``max(v/g, g/v) <= factor`` on a log scale, ``v == g`` for booleans.
    Metrics the golden no longer has are skipped (nothing to compare with; :func:`count_gone`)."""
    failures, checked = [], 0
    for earlier_blessing in earlier:
        key = machine_key(earlier_blessing)
        for notebook, metrics in sorted((earlier_blessing.get("notebooks") or {}).items()):
            for name, stored in sorted(metrics.items()):
                entry = _comparable(golden, notebook, name)
                if entry is None:
                    continue
                for kernel, value in _earlier_values(stored):
                    checked += 1
                    problem = compare_metric(name, value, entry)
                    if problem:
                        failures.append(EarlierFailure(
                            notebook, name, key[0], earlier_blessing.get("commit"), kernel, value, problem,
                            key[1], earlier_blessing.get("code_hash"), earlier_blessing.get("input_hash")))
    return failures, checked


def count_gone(earlier: list[dict], golden: dict) -> int:
    """How many values of the ``earlier`` blessings belong to a notebook or metric ``golden`` no longer has
    (not checked, not carried; volatile metrics are not counted)."""
    notebooks = golden.get("notebooks") or {}
    return sum(len(_earlier_values(stored)) for b in earlier
               for notebook, metrics in (b.get("notebooks") or {}).items()
               for name, stored in metrics.items()
               if name not in (notebooks.get(notebook) or {})
               and name not in (golden.get("volatile") or {}).get(notebook, ()))


def carry_earlier(earlier: list[dict], golden: dict) -> list[dict]:
    """The ``previous`` list of a new golden file, oldest first: of the ``earlier`` blessings (oldest first),
    the newest per machine key (:func:`same_machine`), without the machine of ``golden``'s own blessing (its
    new values supersede that machine's older ones); per blessing only the metrics ``golden`` still compares
    (present, not volatile) whose every stored value passes its entry, whatever code they were blessed with
    (each blessing keeps its own code and input hashes); a blessing with nothing left is dropped."""
    own = machine_key(golden.get("provenance") or {})
    newest: list[dict] = []
    for earlier_blessing in earlier:
        key = machine_key(earlier_blessing)
        # the newest supersedes: the order stays oldest first, by each machine's newest blessing
        newest = [b for b in newest if not same_machine(machine_key(b), key)] + [earlier_blessing]
    carried = []
    for earlier_blessing in newest:
        key = machine_key(earlier_blessing)
        if same_machine(key, own):
            continue
        notebooks = {}
        for notebook, metrics in sorted((earlier_blessing.get("notebooks") or {}).items()):
            kept = {}
            for name, stored in sorted(metrics.items()):
                entry = _comparable(golden, notebook, name)
                if entry is not None and not any(compare_metric(name, v, entry) for _, v in _earlier_values(stored)):
                    kept[name] = stored
            if kept:
                notebooks[notebook] = kept
        if notebooks:
            carried.append({**_header(key, earlier_blessing), "notebooks": notebooks})
    return carried


def check_file(golden: dict) -> tuple[list[EarlierFailure], int]:
    """A golden file's stored earlier values against its current entries (no run needed)."""
    return check_earlier(golden.get(PREVIOUS) or [], golden)


@dataclass(frozen=True)
class Review:
    """What a re-bless finds among the earlier values (:func:`review`)."""

    own: tuple[str, str | None]  # the new blessing's machine key
    machines: list[str]  # labels of every earlier blessing's machine
    checked: int
    same_cpu: list[EarlierFailure]  # same code and inputs, same CPU: nondeterminism (a break)
    other_cpu: list[EarlierFailure]  # same code and inputs, other CPU: machine dependence (a break)
    stale: list[EarlierFailure]  # blessed with other code or inputs: dropped, not a refusal
    gone: int  # values of notebooks or metrics that no longer exist: skipped

    @property
    def breaks(self) -> list[EarlierFailure]:
        return [*self.other_cpu, *self.same_cpu]

    def break_lines(self) -> list[str]:
        """The broken values, one per line, other CPUs first, then this CPU (always listed, never only counted)."""
        lines = []
        if self.other_cpu:
            lines.append(f"{len(self.other_cpu)} value(s) from another CPU, same code and inputs "
                         "(this machine's kernels do not bound that one's):")
            lines += [f"  {f}" for f in self.other_cpu]
        if self.same_cpu:
            lines.append(f"{len(self.same_cpu)} value(s) from this CPU ({machine_label(self.own)}), same code and "
                         "inputs (the computation is not deterministic):")
            lines += [f"  {f}" for f in self.same_cpu]
        return lines

    def note_lines(self) -> list[str]:
        """The stale values dropped and the skipped count (printed by every re-bless)."""
        lines = []
        if self.stale:
            lines.append(f"{len(self.stale)} earlier value(s) blessed with other code or inputs fail the new goldens: "
                         "stale, dropped from 'previous':")
            lines += [f"  {f}" for f in self.stale]
        if self.gone:
            lines.append(f"{self.gone} earlier value(s) skipped: their notebook or metric no longer exists")
        return lines


def review(previous: dict, built: dict) -> Review:
    """Every value of every blessing ``previous`` knows (its own and its stored ones) against ``built``,
    sorted by the rule: a failing value blessed with the same ``code_hash`` and ``input_hash`` as ``built``
    is a break (on another CPU: machine dependence; on the same CPU: nondeterminism); blessed with another
    code or input hash (or an unknown one), it is stale."""
    prov = built.get("provenance") or {}
    own = machine_key(prov)
    earlier = blessings(previous)
    failures, checked = check_earlier(earlier, built)
    code, inputs = prov.get("code_hash"), prov.get("input_hash")
    breaks, stale = [], []
    for f in failures:
        same_code = code is not None and f.code_hash == code and f.input_hash == inputs
        (breaks if same_code else stale).append(f)
    return Review(own, sorted({machine_label(machine_key(b)) for b in earlier}), checked,
                  [f for f in breaks if same_machine(f.key, own)], [f for f in breaks if not same_machine(f.key, own)],
                  stale, count_gone(earlier, built))


class BreaksEarlierBlessingsError(RuntimeError):
    """New goldens would reject values that an earlier blessing with the same code and inputs gave."""

    def __init__(self, message: str, failures: list[EarlierFailure], stale: list[EarlierFailure] | None = None):
        super().__init__(message)
        self.failures = failures
        self.stale = stale or []


def _broken_metrics(failures: list[EarlierFailure], own: tuple[str, str | None]) -> list[str]:
    """One line per (notebook, metric, machine): which kernels' values fail (for provenance and messages)."""
    grouped: dict[tuple, list[str]] = {}
    for f in failures:
        grouped.setdefault((f.notebook, f.metric, f.key, f.commit), []).append(f.kernel)
    return [f"{nb}: {name} ({machine_label(key)}{', this CPU' if same_machine(key, own) else ''}, commit "
            f"{(commit or '?')[:10]}: {', '.join(kernels)})" for (nb, name, key, commit), kernels in grouped.items()]


def supersede(previous: dict | None, built: dict, allow_breaking_previous: str | None = None,
              found: Review | None = None) -> dict:
    """The golden file to write in place of ``previous`` (None: there was none): ``built`` with the
    earlier blessings carried under ``previous`` and the check recorded in its provenance.

    Every value of every earlier blessing is checked against ``built`` and sorted by :func:`review`
    (``found``, when the caller already has it). Breaks (same code and inputs) raise
    :class:`BreaksEarlierBlessingsError`, listing each, unless ``allow_breaking_previous`` gives the reason;
    then the reason and the broken metrics go into ``provenance["allow_breaking_previous"]``. Stale values
    (other code or inputs) are no refusal: they are dropped, and ``previous_check["stale"]`` records how
    many and from which code hashes. Passing values are carried (:func:`carry_earlier`).
    """
    if allow_breaking_previous is not None and not allow_breaking_previous.strip():
        raise ValueError("allow_breaking_previous needs a reason (it is recorded in the goldens' provenance)")
    if previous is None:
        return built
    found = found or review(previous, built)
    provenance = dict(built.get("provenance") or {})
    check = {"machines": found.machines, "values": found.checked, "failed": len(found.breaks)}
    if found.stale:
        hashes: dict[str, int] = {}
        for f in found.stale:
            hashes[str(f.code_hash)] = hashes.get(str(f.code_hash), 0) + 1
        check["stale"] = {"dropped": len(found.stale), "code_hashes": dict(sorted(hashes.items()))}
    if found.gone:
        check["skipped_gone"] = found.gone
    provenance["previous_check"] = check
    if found.breaks and allow_breaking_previous is None:
        raise BreaksEarlierBlessingsError(
            f"the new goldens reject {len(found.breaks)} of the {found.checked} value(s) that earlier blessings "
            "with the same code and inputs gave:\n" + "\n".join(found.break_lines()), found.breaks, found.stale)
    if found.breaks:
        provenance["allow_breaking_previous"] = {"reason": allow_breaking_previous.strip(),
                                                 "broken": _broken_metrics(found.breaks, found.own)}
    out = {**built, "provenance": provenance}
    carried = carry_earlier(blessings(previous), out)
    if carried:
        out[PREVIOUS] = carried
    return out


def file_hash(path: Path) -> str | None:
    """sha256 of a goldens file (None when it does not exist): results record the goldens they were checked on."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
