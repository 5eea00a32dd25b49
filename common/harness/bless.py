"""``make bless PAPER=x``: rewrite ``expected/ci.json`` from fresh runs, with provenance.

1. The canonical ci run gives the golden values (it must pass its claims).
2. ``n_seeds - 1`` further runs with the notebooks' ``seed`` parameter shifted give each metric's
   seed spread.
3. The canonical seed re-run under each of :data:`goldens.KERNEL_VARIANTS` (other numeric kernels one
   machine can emulate) gives its hardware spread.
4. When a golden file exists, every canonical and kernel-variant value of its blessing and of the earlier
   blessings it keeps must pass the new entries (:func:`goldens.supersede`). A failing value blessed with the
   same code and input hashes is a break (another CPU: machine dependence; this CPU: nondeterminism): the
   file is left unchanged and :class:`goldens.BreaksEarlierBlessingsError` lists each, unless
   ``allow_breaking_previous`` gives the reason, which the new provenance records. A failing value blessed
   with other code or inputs is stale: listed and dropped. Passing values are carried (``previous``).

If anything fails after the canonical run replaced the results (a refusal, a failing sub-run, a
:class:`goldens.HardwareDependenceError`), that run is marked as checked against no goldens
(``goldens_hash: null``): an unchecked run is never left current.

The tolerance rule is in :mod:`common.harness.goldens`; every per-seed and per-kernel value is kept in
the file so a reader sees why a tolerance is what it is.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import goldens, provenance, runner, spec
from .io import atomic_write_json, read_json

SEED_PARAMETER = "seed"


def cpu_capability(prov: dict) -> str | None:
    """torch's CPU capability on the machine that blessed: what the canonical run's notebooks recorded
    (``torch.backends.cpu.get_cpu_capability()``), else this process's torch when it is installed."""
    for notebook in (prov.get("notebooks") or {}).values():
        found = (notebook.get("kernel") or {}).get("torch_cpu_capability")
        if found:
            return str(found)
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - no torch, or too old to say: the CPU string alone keys the machine
        return None


def _mark_unchecked(folder: Path) -> None:
    """The canonical results at ``folder`` were checked against no goldens: not current for any."""
    path = folder / "provenance.json"
    try:
        if path.is_file():
            atomic_write_json(path, {**read_json(path), "goldens_hash": None})
    except Exception as exc:  # noqa: BLE001 - never hide the failure that got us here
        print(f"warning: could not mark {path} as unchecked ({exc}); treat that run as stale", file=sys.stderr)


def bless(slug: str, n_seeds: int = 5, *, papers_root: Path | None = None, results_root: Path | None = None,
          progress: bool = True, variants: dict | None = None, allow_breaking_previous: str | None = None) -> Path:
    """Run the paper ``n_seeds + len(variants)`` times and write ``papers/<slug>/expected/ci.json``.

    ``allow_breaking_previous``: the reason to write goldens that reject values an earlier blessing gave
    (recorded in the new file's provenance); without it such goldens are refused.
    """
    if n_seeds < 2:
        raise ValueError("n_seeds must be at least 2 to measure a spread")
    if allow_breaking_previous is not None and not allow_breaking_previous.strip():
        raise ValueError("--allow-breaking-previous needs a reason (it is recorded in the goldens' provenance)")
    variants = goldens.KERNEL_VARIANTS if variants is None else variants
    report = runner.run_paper(slug, "ci", papers_root=papers_root, results_root=results_root,
                              check_goldens=False, progress=progress)
    print(report.summary())
    if not report.ok:
        raise RuntimeError(f"{slug}: the ci run failed; fix it before blessing goldens")
    folder = report.destination
    done = False
    try:
        base = read_json(folder / "metrics.json")
        per_seed = [base["notebooks"]]
        paper, declared, _ = runner.prepare(slug, "ci", {}, papers_root)
        base_seed = {paper.notebook_key(nb): d.get(SEED_PARAMETER) for nb, d in declared.items()}
        if not all(isinstance(s, int) for s in base_seed.values()):
            raise ValueError(f"{slug}: every notebook needs an int parameter {SEED_PARAMETER!r} to measure the seed spread")
        offsets = list(range(1, n_seeds))
        on_kernels = {}
        with tempfile.TemporaryDirectory() as scratch:
            def sub_run(label: str, **kwargs) -> dict:
                sub = runner.run_paper(slug, "ci", papers_root=papers_root, destination=Path(scratch) / label,
                                       check_goldens=False, check_claims=False, progress=progress,
                                       failed_root=Path(scratch) / "failed", **kwargs)
                if not sub.ok:
                    raise RuntimeError(f"{slug}: bless run {label} failed:\n{sub.summary()}")
                return read_json(sub.destination / "metrics.json")["notebooks"]

            for offset in offsets:
                shifted = {key: {SEED_PARAMETER: seed + offset} for key, seed in base_seed.items()}
                per_seed.append(sub_run(f"seed-offset-{offset}", per_notebook=shifted))
            for name, env in variants.items():
                on_kernels[name] = sub_run(f"kernels-{name}", env=env)
        prov = read_json(folder / "provenance.json")
        record = {
            "commit": prov["git"]["commit"],
            "dirty": prov["git"]["dirty"],
            "code_hash": prov["code_hash"],
            "input_hash": prov["input_hash"],
            "created": provenance.now(),
            "device": prov["device_label"],
            "cpu": prov["device"].get("cpu"),
            "cpu_capability": cpu_capability(prov),
            "numeric_env": prov.get("numeric_env"),
            "seeds": {k: [s + o for o in [0, *offsets]] for k, s in base_seed.items()},
            "kernel_variants": variants,
        }
        target = spec.load(slug, papers_root).root / "expected" / "ci.json"
        built = goldens.build(per_seed, base["volatile"], record, variants=on_kernels,
                              log_factors=base.get("log_factors"), dtypes=base.get("dtypes"))
        moved = [name for entries in built["notebooks"].values() for name, e in entries.items()
                 if any(v != e["value"] for v in (e.get("hardware") or {}).values())]
        if variants and not moved:
            print(f"warning: {slug}: no metric moved under any kernel variant; on this machine the variants may not "
                  f"change the kernels (tolerances then rest on the seed spread and the precision floors)")
        previous = read_json(target) if target.is_file() else None
        if previous is not None:
            found = goldens.review(previous, built)
            for line in found.note_lines():
                print(f"{slug}: {line}")
            # a refusal raises here (the finally below marks the canonical run as checked against nothing)
            built = goldens.supersede(previous, built, allow_breaking_previous, found)
            if found.breaks:
                print(f"warning: {slug}: the new goldens reject {len(found.breaks)} of {found.checked} earlier "
                      f"value(s) blessed with the same code and inputs; allowed: {allow_breaking_previous}\n"
                      + "\n".join(found.break_lines()))
            else:
                print(f"{slug}: the new goldens accept every value of the earlier blessings with the same code and "
                      f"inputs ({found.checked} value(s) checked, from {', '.join(found.machines)})")
        atomic_write_json(target, built)
        # the canonical results were checked against nothing (they made the goldens): they are current for them
        atomic_write_json(folder / "provenance.json", {**prov, "goldens_hash": goldens.file_hash(target)})
        done = True
        return target
    finally:
        if not done:
            _mark_unchecked(folder)
