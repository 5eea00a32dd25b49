import numpy as np
import pytest

from papers.dc_fusion import experiments as E
from papers.dc_fusion import fusion as F


def test_gaussian_product_is_exact():
    a = F.GaussianTarget([1.0], [[2.0]])
    b = F.GaussianTarget([-1.0], [[2.0]])
    p = F.GaussianTarget.product([a, b])
    assert np.allclose(p.mean, 0.0) and np.allclose(p.cov, 1.0)
    t = F.GaussianTarget(np.zeros(1), [[16.0]])
    assert np.allclose(F.GaussianTarget.product([t] * 16).cov, 1.0)


def test_tree_schedules():
    assert F.tree_schedule(4, "fork_and_join") == [[[0, 1, 2, 3]]]
    assert F.tree_schedule(4, "balanced") == [[[0, 1], [2, 3]], [[0, 1]]]
    assert F.tree_schedule(5, "balanced") == [[[0, 1], [2, 3], [4]], [[0, 1], [2]], [[0, 1]]]
    assert F.tree_schedule(4, "progressive") == [[[0, 1], [2], [3]], [[0, 1], [2]], [[0, 1]]]
    with pytest.raises(ValueError):
        F.tree_schedule(4, "star")
    with pytest.raises(ValueError):
        F.tree_schedule(1, "balanced")


def test_rho1_is_zero_for_a_flat_path_weight_and_negative_otherwise():
    t = F.GaussianTarget(np.zeros(2), np.eye(2))
    x = np.zeros((3, 2))
    # φ - Φ = ½|x|², bridge pinned at 0 at both ends still moves: log ρ1 < 0
    assert np.all(t.log_rho1(x, x, 1.0, np.eye(2)) < 0)
    far = np.full((3, 2), 3.0)
    assert np.all(t.log_rho1(far, far, 1.0, np.eye(2)) < t.log_rho1(x, x, 1.0, np.eye(2)))


def test_fusion_step_is_exact_in_distribution():
    """Fusing two N(±1, 2) samples gives N(0, 1): weighted mean and variance match."""
    rng = np.random.default_rng(0)
    n = 40_000
    a, b = F.GaussianTarget([1.0], [[2.0]]), F.GaussianTarget([-1.0], [[2.0]])
    children = [F.ParticleSet.unweighted(t.sample(n, rng)) for t in (a, b)]
    fused, precond, diag = F.fusion_step(children, [a, b], [np.eye(1) * 2, np.eye(1) * 2], 1.0, rng,
                                         ess_threshold=0.0)
    w = np.exp(fused.log_w)
    mean = np.sum(w * fused.y[:, 0])
    var = np.sum(w * (fused.y[:, 0] - mean) ** 2)
    assert mean == pytest.approx(0.0, abs=0.03) and var == pytest.approx(1.0, abs=0.04)
    assert np.allclose(precond, 1.0)
    assert 0 < diag.ess_rho1 <= diag.ess_rho0 <= 1


def test_fusion_step_input_errors():
    rng = np.random.default_rng(0)
    t = F.GaussianTarget([0.0], [[1.0]])
    p = F.ParticleSet.unweighted(np.zeros(4))
    with pytest.raises(ValueError):
        F.fusion_step([p], [t], [np.eye(1)], 1.0, rng)
    with pytest.raises(ValueError):
        F.fusion_step([p, p], [t, t], [np.eye(1)] * 2, 0.0, rng)
    with pytest.raises(ValueError):
        F.fusion_step([p, F.ParticleSet.unweighted(np.zeros(5))], [t, t], [np.eye(1)] * 2, 1.0, rng)
    with pytest.raises(ValueError):
        F.GaussianTarget([0.0], [[-1.0]])


def test_trees_agree_at_c2_and_recover_the_target():
    runs = [E.tempered_run(2, tree, 4000, 1.0, seed=3) for tree in F.TREES]
    assert runs[0]["iad"] == runs[1]["iad"] == runs[2]["iad"]           # one identical fusion
    r = E.tempered_run(8, "balanced", 4000, 1.0, seed=3)
    assert r["levels"] == 3 and r["iad"] < 0.1


def test_rho0_ess_theory_values():
    assert E.rho0_ess_theory(1, 2, 1.0) == pytest.approx(np.sqrt(0.75))
    assert E.rho0_ess_theory(2, 2, 1.0) == pytest.approx(0.75)
    assert E.rho0_ess_theory(1, 16, 1.0) == pytest.approx(0.75**7.5)


def test_iad_exact_cases():
    rng = np.random.default_rng(1)
    big = rng.standard_normal(200_000)
    assert F.integrated_absolute_distance(big, 0.0, 1.0, 0.1) < 0.02
    shifted = F.integrated_absolute_distance(big + 10.0, 0.0, 1.0, 0.1)
    assert shifted == pytest.approx(1.0, abs=0.01)                     # disjoint supports: TV = 1
    kde = F.gaussian_kde_on_grid(np.zeros(1), np.arange(-2, 2.0001, 0.01), 0.5)
    assert np.trapezoid(kde, dx=0.01) == pytest.approx(1.0, abs=1e-3)
