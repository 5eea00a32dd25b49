"""Every paper's notebooks, executed at the ci profile through the runner, pass claims and goldens.

Runs go to a git-ignored folder (.cache/test-results), never to results/. When the committed
results are not stale (same code hash) and were made on the same CPU model with the same numeric
kernels (the environment variables of ``goldens.NUMERIC_ENV``), the fresh metrics must equal them (to
1e-9): the same seed gives the same metrics on the same machine. Elsewhere only the goldens apply;
their tolerances cover other kernels (``make test-kernels`` re-runs this file under emulated ones).
"""

import math

import pytest

from common.harness import provenance, runner, spec
from common.harness.io import read_json

CACHE = spec.REPO_ROOT / ".cache"


def _kernels(env: dict | None) -> dict:
    """The kernel-selecting variables, with the Makefile's default of one thread made explicit."""
    env = {k: v for k, v in (env or {}).items() if v}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])  # MKL follows OMP unless told otherwise
    return env


@pytest.mark.parametrize("slug", spec.list_papers())
def test_ci_profile(slug):
    report = runner.run_paper(slug, "ci", results_root=CACHE / "test-results", failed_root=CACHE / "test-failed",
                              progress=False)
    assert report.ok, report.summary()
    committed = spec.REPO_ROOT / "results" / slug / "ci"
    if not (committed / "provenance.json").is_file():
        pytest.skip(f"no committed results for {slug} yet")
    stored = read_json(committed / "provenance.json")
    if stored["code_hash"] != provenance.code_hash(spec.load(slug)):
        return  # committed results are stale; the scoreboard says so
    if stored.get("device_label") != provenance.device_label(provenance.device()):
        return  # float kernels may differ between CPU models; the goldens still apply
    if _kernels(stored.get("numeric_env")) != _kernels(provenance.numeric_env()):
        return  # other numeric kernels selected by the environment; the goldens still apply
    fresh = read_json(report.destination / "metrics.json")
    old = read_json(committed / "metrics.json")
    for notebook, metrics in old["notebooks"].items():
        volatile = set(old["volatile"].get(notebook, []))
        for name, value in metrics.items():
            if name in volatile:
                continue
            got = fresh["notebooks"][notebook][name]
            # equal up to float noise between CPUs (SIMD paths); a changed random stream is far larger
            pairs = list(zip(got, value, strict=False)) if isinstance(got, list) and isinstance(value, list) else [
                (got, value)]
            same = got == value or (
                (not isinstance(got, list) or len(got) == len(value)) and all(
                    a is not None and b is not None and not isinstance(a, (bool, list))
                    and not isinstance(b, (bool, list)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
                    for a, b in pairs))
            assert same, f"{notebook}: {name} = {got!r} differs from the committed {value!r} with the same code"
