"""``make bless PAPER=x``: rewrite ``expected/ci.json`` from fresh runs, with provenance.

The canonical ci run gives the golden values; ``n_seeds - 1`` further runs with the
notebooks' ``seed`` parameter shifted give each metric's spread, hence its tolerance
(see :mod:`common.harness.goldens`). The canonical run must pass its claims.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import goldens, provenance, runner, spec
from .io import atomic_write_json, read_json

SEED_PARAMETER = "seed"


def bless(slug: str, n_seeds: int = 5, *, papers_root: Path | None = None, results_root: Path | None = None,
          progress: bool = True) -> Path:
    if n_seeds < 2:
        raise ValueError("n_seeds must be at least 2 to measure a spread")
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
    with tempfile.TemporaryDirectory() as scratch:
        for offset in offsets:
            shifted = {key: {SEED_PARAMETER: seed + offset} for key, seed in base_seed.items()}
            sub = runner.run_paper(slug, "ci", papers_root=papers_root, per_notebook=shifted,
                                   destination=Path(scratch) / f"seed-offset-{offset}", check_goldens=False,
                                   check_claims=False, progress=progress, failed_root=Path(scratch) / "failed")
            if not sub.ok:
                raise RuntimeError(f"{slug}: run with seed offset {offset} failed:\n{sub.summary()}")
            per_seed.append(read_json(sub.destination / "metrics.json")["notebooks"])
    prov = read_json(folder / "provenance.json")
    record = {
        "commit": prov["git"]["commit"],
        "dirty": prov["git"]["dirty"],
        "code_hash": prov["code_hash"],
        "input_hash": prov["input_hash"],
        "created": provenance.now(),
        "device": prov["device_label"],
        "seeds": {k: [s + o for o in [0, *offsets]] for k, s in base_seed.items()},
        "rule": f"atol = max({goldens.SIGMAS:g} * stdev over seeds, {goldens.RELATIVE_FLOOR:g} * |value|, "
                f"{goldens.ABSOLUTE_FLOOR:g})",
    }
    target = spec.load(slug, papers_root).root / "expected" / "ci.json"
    atomic_write_json(target, goldens.build(per_seed, base["volatile"], record))
    return target
