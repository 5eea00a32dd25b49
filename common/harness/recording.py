"""The notebook-side API: ``record``, ``figure``, ``show_claims``, ``claim_verdicts``.

Inside a run started by the runner, every call writes to the run folder at once
(atomically), so a crash later in the notebook never loses what was recorded. In an
interactive session nothing is written; values are kept in memory and displayed.

``record`` also emits a display output in scrapbook's JSON format (mime type
``application/scrapbook.scrap.json+json``), so tools that read scraps from executed
notebooks find the metrics too; scrapbook itself is not a dependency.
"""

from __future__ import annotations

import atexit
import math
import re
import resource
import sys
from pathlib import Path

import numpy as np

from . import context
from .io import atomic_write_bytes, atomic_write_json, sha256_bytes

METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
SCRAP_MIME = "application/scrapbook.scrap.json+json"

_metrics: dict[str, float | int | bool | list] = {}
_volatile: set[str] = set()
_log_factors: dict[str, float] = {}
_dtypes: dict[str, str] = {}
_figures: dict[str, dict] = {}
_devices: set[str] = set()  # what common.device.pick_device chose in this kernel
_checkpoints: dict[str, str] = {}  # zoo checkpoints loaded in this kernel: name -> sha256 of the weights
_checkpoint_manifests: dict[str, str] = {}  # ... and of their manifests (configs and numbers a run may read)
_LOW_PRECISION = ("float32", "float16", "bfloat16")


def recorded() -> dict:
    """A copy of the metrics recorded so far in this kernel."""
    return dict(_metrics)


def _dtype_of(value) -> str | None:
    """``float32``/``float16``/``bfloat16`` when the value is a NumPy or torch scalar/array of that type."""
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    return dtype if dtype in _LOW_PRECISION else None


def _as_scalar(name: str, value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if hasattr(value, "item") and not isinstance(value, (bool, int, float)):
        try:
            value = value.item()  # torch scalars
        except (TypeError, ValueError, RuntimeError):
            pass
    if not isinstance(value, (bool, int, float)):
        raise TypeError(f"record({name!r}, ...): a metric must be a number, a bool or a 1-D sequence of numbers "
                        f"(per-seed values), got {type(value).__name__}")
    if isinstance(value, float) and math.isinf(value):
        raise ValueError(f"record({name!r}, ...): infinite value")
    return value


def _as_metric(name: str, value):
    """A scalar, or a list of scalars for a 1-D sequence (per-seed values)."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "shape") and len(getattr(value, "shape", ())) == 1):
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        if not items:
            raise ValueError(f"record({name!r}, ...): an empty sequence")
        out = [_as_scalar(name, v) for v in items]
        if any(isinstance(v, bool) for v in out):
            raise TypeError(f"record({name!r}, ...): a sequence must hold numbers, not booleans")
        return out
    if hasattr(value, "shape") and len(getattr(value, "shape", ())) > 1:
        raise ValueError(f"record({name!r}, ...): only scalars and 1-D sequences are metrics, got shape {value.shape}")
    return _as_scalar(name, value)


def record(name: str, value, *, volatile: bool = False, log_factor: float | None = None):
    """Record metric ``name`` = ``value`` for this run and return the value.

    ``value`` is a number, a bool, or a 1-D sequence of numbers (per-seed values, so that claims can be
    decided across seeds: see :mod:`common.stats`).

    ``volatile=True`` marks metrics that legitimately change from run to run (wall
    times): they are stored and usable in claims but never compared with goldens.
    ``log_factor=F`` marks a metric that measures rounding itself (a round-trip error near machine
    precision): its golden is compared on a log scale, within a factor ``F`` (> 1), because other CPUs'
    kernels move it by tens of percent.
    A name may be recorded once per run; in an interactive session re-recording
    overwrites, so cells can be re-run.
    """
    if not isinstance(name, str) or not METRIC_NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} must be dot-separated identifiers, e.g. 'soug.T1000.svarm.mse'")
    if log_factor is not None and (isinstance(log_factor, bool) or not isinstance(log_factor, (int, float))
                                   or not log_factor > 1):
        raise ValueError(f"record({name!r}, ...): log_factor must be a number > 1, got {log_factor!r}")
    dtype = _dtype_of(value)
    value = _as_metric(name, value)
    if context.run_dir() is not None and name in _metrics:
        raise ValueError(f"metric {name!r} was already recorded in this run")
    _metrics[name] = value
    if volatile:
        _volatile.add(name)
    if log_factor is not None:
        _log_factors[name] = float(log_factor)
    if dtype is not None:
        _dtypes[name] = dtype
    _flush()
    _emit_scrap(name, value)
    return value


def record_many(values: dict, *, prefix: str = "", volatile: bool = False) -> None:
    """Record every ``{name: value}`` of a mapping, optionally under ``prefix``."""
    for name, value in values.items():
        record(f"{prefix}.{name}" if prefix else name, value, volatile=volatile)


def _emit_scrap(name: str, value) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is None:
        return
    payload = {"name": name, "data": _jsonable(value),
               "encoder": "json", "version": 1}
    display({SCRAP_MIME: payload}, raw=True, metadata={"scrapbook": {"name": name, "data": True, "display": False}})


def _jsonable(value):
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _kernel_numerics() -> dict:
    """What the kernel itself sees: the kernel-selecting environment and torch's CPU capability."""
    import os

    from .goldens import NUMERIC_ENV

    info = {"numeric_env": {name: os.environ.get(name) for name in NUMERIC_ENV}}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            info["torch_threads"] = torch.get_num_threads()
        except Exception:  # noqa: BLE001 - informational only
            pass
    return info


def note_device(label: str) -> None:
    """Remember the device a notebook computes on (``common.device.pick_device`` calls this)."""
    _devices.add(str(label))
    _flush()


def note_checkpoint(name: str, sha256: str | None = None, manifest_sha256: str | None = None) -> None:
    """Remember a zoo checkpoint this notebook loaded (``common.zoo.load_checkpoint`` and ``load_manifest``
    call this): the sha256 of its weights and of its manifest.

    The runner stores them in ``provenance.json`` (``checkpoints``, ``checkpoint_manifests``); retraining a
    checkpoint or editing its manifest makes the result stale.
    """
    if sha256 is not None:
        _checkpoints[str(name)] = str(sha256)
    if manifest_sha256 is not None:
        _checkpoint_manifests[str(name)] = str(manifest_sha256)
    _flush()


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _flush() -> None:
    folder = context.run_dir()
    if folder is None:
        return
    atomic_write_json(folder / "metrics.json", {
        "metrics": {k: _jsonable(v) for k, v in _metrics.items()},
        "volatile": sorted(_volatile),
        "log_factors": dict(sorted(_log_factors.items())),
        "dtypes": dict(sorted(_dtypes.items())),
    })
    atomic_write_json(folder / "figures.json", _figures)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the kernel's CPU time: a budget that load does not inflate
    atomic_write_json(folder / "kernel.json", {"peak_rss_mb": round(_peak_rss_mb(), 1),
                                               "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), **_kernel_numerics(),
                                               **({"device": sorted(_devices)} if _devices else {}),
                                               **({"checkpoints": dict(sorted(_checkpoints.items()))} if _checkpoints else {}),
                                               **({"checkpoint_manifests": dict(sorted(_checkpoint_manifests.items()))}
                                                  if _checkpoint_manifests else {})})


atexit.register(_flush)


def figure(name: str, fig=None):
    """Save a matplotlib figure as ``figures/<name>.png`` and ``.svg`` and return it.

    Files are written deterministically (no timestamps or random ids) and their sha256
    recorded in ``figures.json``, so an unchanged plot gives unchanged bytes.
    """
    import matplotlib.pyplot as plt

    if not re.match(r"^[A-Za-z0-9_\-]+$", name or ""):
        raise ValueError(f"figure name {name!r} must be letters, digits, '-' or '_'")
    fig = fig or plt.gcf()
    folder = context.run_dir()
    if folder is None:
        return fig
    entries = {}
    for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        import io

        buffer = io.BytesIO()
        with plt.rc_context({"svg.hashsalt": "repro", "svg.fonttype": "path"}):
            fig.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight", metadata=metadata)
        data = buffer.getvalue()
        relative = Path("figures") / f"{name}.{fmt}"
        atomic_write_bytes(folder / relative, data)
        entries[fmt] = {"path": str(relative), "sha256": sha256_bytes(data)}
    _figures[name] = entries
    _flush()
    return fig


def _spec_for_session():
    from . import spec

    slug = context.current_paper()
    if slug:
        return spec.load(slug, context.papers_root())
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "paper.yaml").is_file():
            return spec.load(folder.name, folder.parent)
    raise RuntimeError("cannot find this notebook's paper.yaml (run the notebook from its folder)")


def _results():
    from .claims import evaluate_claims

    paper = _spec_for_session()
    profile = context.current_profile()
    return paper, evaluate_claims(paper, profile, _metrics, only_recorded=True)


def show_claims():
    """Display this notebook's claims with our values beside the paper's (a DataFrame)."""
    import pandas as pd

    paper, results = _results()
    statements = {c.id: c for c in paper.claims}
    rows = []
    for r in results:
        claim = statements[r.id]
        rows.append({
            "claim": r.id,
            "statement": claim.statement,
            "kind": claim.kind,
            "source": claim.source,
            "paper": claim.paper_value if claim.paper_value is not None else "",
            "ours": _format(r.value) if r.value is not None else ", ".join(f"{k}={_format(v)}" for k, v in r.metrics.items()),
            "status": r.status,
        })
    frame = pd.DataFrame(rows, columns=["claim", "kind", "statement", "source", "paper", "ours", "status"])
    return frame.style.hide(axis="index") if len(frame) else frame


def claim_verdicts() -> None:
    """Print claim ids and statuses only (no numbers), for the nbval-checked last cell."""
    _, results = _results()
    width = max([len(r.id) for r in results] + [5])
    print(f"{'claim':<{width}}  {'kind':<6}  status")
    for r in results:
        print(f"{r.id:<{width}}  {r.kind:<6}  {r.status}")
    if not results:
        print("(no claims are checked by this notebook at this profile)")


def _format(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
