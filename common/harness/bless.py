"""``make bless PAPER=x``: rewrite ``expected/ci.json`` from fresh runs, with provenance.

1. The canonical ci run gives the golden values (it must pass its claims).
2. ``n_seeds - 1`` further runs with the notebooks' ``seed`` parameter shifted give each metric's
   seed spread.
3. The canonical seed re-run under each of :data:`goldens.KERNEL_VARIANTS` (other numeric kernels one
   machine can emulate) gives its hardware spread.
4. When a golden file exists, every canonical and kernel-variant value of its blessing and of the earlier
   blessings it keeps (other machines) must pass the new entries (:func:`goldens.supersede`); otherwise the
   file is left unchanged and :class:`goldens.BreaksEarlierBlessingsError` names the failing metrics, unless
   ``allow_breaking_previous`` gives the reason, which the new provenance records. The earlier values that
   still pass are carried into the new file (``previous``).

The tolerance rule is in :mod:`common.harness.goldens`; every per-seed and per-kernel value is kept in
the file so a reader sees why a tolerance is what it is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import goldens, provenance, runner, spec
from .io import atomic_write_json, read_json

SEED_PARAMETER = "seed"


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
    try:
        built = goldens.supersede(read_json(target) if target.is_file() else None, built, allow_breaking_previous)
    except goldens.BreaksEarlierBlessingsError:
        # the canonical results were made for goldens that do not exist: not current for the old ones either
        atomic_write_json(folder / "provenance.json", {**prov, "goldens_hash": None})
        raise
    check = built["provenance"].get("previous_check")
    if check:
        print(f"{slug}: the new goldens accept all {check['values']} value(s) of the earlier blessings "
              f"({', '.join(check['machines'])})" if not check["failed"] else
              f"warning: {slug}: the new goldens reject {check['failed']} of {check['values']} earlier value(s); "
              f"allowed: {allow_breaking_previous}")
    atomic_write_json(target, built)
    # the canonical results were checked against nothing (they made the goldens): they are current for them
    atomic_write_json(folder / "provenance.json", {**prov, "goldens_hash": goldens.file_hash(target)})
    return target
