"""Every paper's notebooks, executed at the ci profile through the runner, pass claims and goldens.

Runs go to a git-ignored folder (.cache/test-results), never to results/. When the committed
results are not stale (same code hash) and were made on the same CPU model with the same numeric
kernels (the environment variables of ``goldens.NUMERIC_ENV``), the fresh metrics must equal them (to
1e-9): the same seed gives the same metrics on the same machine. Elsewhere only the goldens apply;
their tolerances cover other kernels (``make test-kernels`` re-runs this file under emulated ones).

Claims decided on wall-clock times are measurements of the machine as much as of the method: under the
emulated kernels (no SIMD in torch, two workers) the same code is several times slower, and a speed
comparison against a compiled peer can flip. Such a claim that fails here is reported as a warning naming
the machine, not a test failure; the committed verdict states the machine it was measured on. A claim
counts as wall-clock when its check or ``decisive`` reads a ``volatile`` metric (no golden) and it is a
``paper`` claim or the metric's name says time (see :data:`TIME_NAME`): volatile metrics read by sanity
and peer claims are otherwise float-noise residuals of identities, which must hold everywhere.
"""

import math
import re
import warnings

import pytest

from common.harness import expressions, provenance, runner, spec
from common.harness.io import read_json

CACHE = spec.REPO_ROOT / ".cache"
TIME_NAME = re.compile(r"(^|[._])(time|timing|seconds|speedup)([._]|$)")


def _kernels(env: dict | None) -> dict:
    """The kernel-selecting variables, with the Makefile's default of one thread made explicit."""
    env = {k: v for k, v in (env or {}).items() if v}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])  # MKL follows OMP unless told otherwise
    return env


def _timed_claims(slug: str) -> set[str]:
    """The wall-clock claims of ``slug`` (see the module docstring)."""
    golden = spec.REPO_ROOT / "papers" / slug / "expected" / "ci.json"
    volatile = {n for names in read_json(golden).get("volatile", {}).values() for n in names} if golden.is_file() else set()
    timed = set()
    for claim in spec.load(slug).claims:
        names = expressions.metric_names(claim.check) + (expressions.metric_names(claim.decisive) if claim.decisive else [])
        read = volatile & set(names)
        if read and (claim.kind == "paper" or any(TIME_NAME.search(n) for n in read)):
            timed.add(claim.id)
    return timed


def _only_timed_claims_failed(report, timed: set[str]) -> bool:
    return (not report.errors and all(n.ok for n in report.notebooks) and not report.golden_problems
            and all(c.id in timed for c in report.claims if c.must_hold_but_failed))


@pytest.mark.parametrize("slug", spec.list_papers())
def test_ci_profile(slug):
    report = runner.run_paper(slug, "ci", results_root=CACHE / "test-results", failed_root=CACHE / "test-failed",
                              progress=False)
    if not report.ok and _only_timed_claims_failed(report, _timed_claims(slug)):
        failed = [f"{c.id} ({c.message})" for c in report.claims if c.must_hold_but_failed]
        warnings.warn(f"{slug}: wall-clock claim(s) did not hold on this machine "
                      f"({provenance.device_label(provenance.device())}, {provenance.numeric_env()}): {'; '.join(failed)}",
                      stacklevel=1)
        return
    assert report.ok, report.summary()
    committed = spec.REPO_ROOT / "results" / slug / "ci"
    if not (committed / "provenance.json").is_file():
        pytest.skip(f"no committed results for {slug} yet")
    stored = read_json(committed / "provenance.json")
    if provenance.stale_reason(stored, spec.load(slug)) is not None:
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


def test_wall_clock_rule_spares_identities():
    """Timing claims are recognised; float-noise identities that read volatile residuals stay hard."""
    assert {"admm_faster_than_interior_point", "admm_iteration_cost_quadratic"} <= _timed_claims("convex_relu")
    assert "exact_admm_matches_clarabel" not in _timed_claims("convex_relu")
    assert not _timed_claims("lp_sensitivity_sampling") & {"lewis_weights_sum_to_rank", "l1_sensitivities_match_linprog"}
    assert "ours_as_fast_as_umap_learn_same_knn" in _timed_claims("umap")  # a peer claim on a time metric


def test_only_timed_failures_are_soft():
    from types import SimpleNamespace as NS

    def report(*failed, errors=(), golden=()):
        claims = [NS(id=c, must_hold_but_failed=True) for c in failed] + [NS(id="ok", must_hold_but_failed=False)]
        return NS(errors=list(errors), notebooks=[NS(ok=True)], golden_problems=list(golden), claims=claims)

    assert _only_timed_claims_failed(report("t"), {"t"})
    assert not _only_timed_claims_failed(report("t", "x"), {"t"})
    assert not _only_timed_claims_failed(report("t", golden=["drift"]), {"t"})
    assert not _only_timed_claims_failed(report("t", errors=["boom"]), {"t"})
