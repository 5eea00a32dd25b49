import numpy as np
import pytest

from papers.lp_sensitivity_sampling.lp_sensitivity_sampling import (
    draw_rows,
    l1_sensitivities_linprog,
    leverage_scores,
    lewis_weights,
    lp_regression,
    lp_sensitivities,
    relative_errors,
    required_sample_size,
    required_sample_size_interval,
    sampling_scores,
    slope_over_reached,
    spiky_instance,
    total_variation,
)


def _gauss(n=30, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_identity_rows_have_sensitivity_one():
    # each row e_j is the only row that sees coordinate j: sigma = 1 for every p, S = d
    for p in (1.0, 1.5, 3.0):
        np.testing.assert_allclose(lp_sensitivities(np.eye(3), p), 1.0, rtol=1e-6)


def test_duplicated_rows_share_sensitivity():
    # two copies of e_1 (and e_2 once): |x1|^p / (2|x1|^p + |x2|^p) has supremum 1/2
    A = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(lp_sensitivities(A, 1.0), [0.5, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(lp_sensitivities(A, 3.0), [0.5, 0.5, 1.0], rtol=1e-6)


def test_p2_sensitivities_are_leverage_scores():
    A = _gauss()
    np.testing.assert_allclose(lp_sensitivities(A, 2.0), leverage_scores(A), rtol=1e-5)
    assert leverage_scores(A).sum() == pytest.approx(3.0)


def test_l1_sensitivities_match_linprog():
    A = _gauss(25, 3, 1)
    np.testing.assert_allclose(lp_sensitivities(A, 1.0), l1_sensitivities_linprog(A), rtol=1e-6)


def test_zero_row_has_zero_sensitivity():
    A = np.vstack([_gauss(10, 2), np.zeros(2)])
    assert lp_sensitivities(A, 1.0)[-1] == 0.0


def test_sensitivity_is_invariant_to_column_transforms():
    A = _gauss(20, 3, 2)
    R = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 1.0]])
    np.testing.assert_allclose(lp_sensitivities(A @ R, 1.5), lp_sensitivities(A, 1.5), rtol=1e-5)


def test_lewis_weights_equal_leverage_at_p2():
    A = _gauss(40, 4, 3)
    np.testing.assert_allclose(lewis_weights(A, 2.0), leverage_scores(A), rtol=1e-12)


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0])
def test_lewis_weights_fixed_point_and_sum(p):
    A = _gauss(40, 4, 4)
    w = lewis_weights(A, p)
    assert w.sum() == pytest.approx(4.0, rel=1e-8)
    # w_i = tau_i(W^{1/2 - 1/p} A)
    np.testing.assert_allclose(leverage_scores(A * (w ** (0.5 - 1 / p))[:, None]), w, rtol=1e-7)


def test_lewis_weights_reject_p4():
    with pytest.raises(ValueError):
        lewis_weights(_gauss(), 4.0)


def test_draw_rows_inverse_cdf_and_scale():
    idx, scale = draw_rows([1.0, 0.0, 3.0], 4, [0.1, 0.3, 0.5, 0.99])
    assert list(idx) == [0, 2, 2, 2]
    np.testing.assert_allclose(scale, 1 / (4 * np.array([0.25, 0.75, 0.75, 0.75])))
    with pytest.raises(ValueError):
        draw_rows([1.0, 2.0], 3, [0.1, 0.2])
    with pytest.raises(ValueError):
        draw_rows([-1.0, 2.0], 1, [0.1])


def test_unknown_sampler():
    with pytest.raises(ValueError):
        sampling_scores(_gauss(), 1.0, "leverage")


def test_full_sample_recovers_the_optimum():
    inst = spiky_instance(30, 2, 2, 1.0, random_state=0)
    # all rows with equal probability: drawing each row exactly once (uniforms at the cell centres)
    u = (np.arange(30) + 0.5) / 30
    errs = relative_errors(inst, np.ones(30), [30], u[None, :])
    assert errs[0, 0] == 0.0


def test_lp_regression_p1_exact_fit():
    A = _gauss(15, 2, 5)
    x0 = np.array([1.0, -2.0])
    np.testing.assert_allclose(lp_regression(A, A @ x0, 1.0), x0, atol=1e-6)


def test_spiky_instance_raises_sensitivity_at_p1():
    s0 = lp_sensitivities(spiky_instance(40, 2, 0, 1.0, random_state=0).augmented, 1.0).sum()
    s2 = lp_sensitivities(spiky_instance(40, 2, 2, 1.0, random_state=0).augmented, 1.0).sum()
    assert s2 > s0
    assert s2 <= 3 + 1e-6  # at most d for p < 2 (d = 3 columns of [A b])


def test_required_sample_size():
    ms = [10, 20, 40]
    errs = np.array([[1.0, 0.5, 0.1]] * 4)
    # crossing 0.3 between 20 (0.5) and 40 (0.1): log-log interpolation
    t = np.log(0.5 / 0.3) / np.log(0.5 / 0.1)
    assert required_sample_size(ms, errs, 0.3) == pytest.approx(20 * 2**t)
    assert required_sample_size(ms, errs, 2.0) == 10
    assert required_sample_size(ms, errs, 0.01) == float("inf")
    lo, hi = required_sample_size_interval(ms, errs, 0.3, random_state=0)
    assert lo == hi == pytest.approx(20 * 2**t)
    with pytest.raises(ValueError):
        required_sample_size([20, 10], errs[:, :2], 0.3)


def test_required_sample_size_exact_zero_column_is_the_grid_bound():
    # referee's case (ci, p = 1, k = 4): q90 = 3.87 at m = 12, exactly 0 from m = 18 on. The crossing is in
    # (12, 18]; interpolating towards log(0) used to return 12.02, where the criterion still fails.
    ms = [8, 12, 18, 27, 40]
    errs = np.zeros((10, 5))
    errs[:, 0], errs[:, 1] = 28.7, 3.87
    assert required_sample_size(ms, errs, 0.3) == 18.0
    errs[:, 2] = 5e-7  # below ERR_FLOOR (solver round-off) counts as exact too
    assert required_sample_size(ms, errs, 0.3) == 18.0
    lo, hi = required_sample_size_interval(ms, errs, 0.3, random_state=0)
    assert lo == hi == 18.0
    # an all-zero error column at the first grid point: met at ms[0]
    assert required_sample_size(ms, np.zeros((4, 5)), 0.3) == 8.0


def test_total_variation():
    assert total_variation([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert total_variation([1.0, 0.0], [0.0, 3.0]) == pytest.approx(1.0)
    assert total_variation([3.0, 1.0], [1.0, 1.0]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        total_variation([1.0], [1.0, 2.0])


def test_sensitivities_dominate_lewis_weights_above_p2():
    # for p > 2, sigma_i >= w_i (Cauchy-Schwarz at x = M^{-1} a_i), hence S >= d
    A = spiky_instance(40, 3, 2, 3.0, random_state=1).augmented
    sigma, w = lp_sensitivities(A, 3.0), lewis_weights(A, 3.0)
    assert np.all(sigma >= w * (1 - 1e-6))
    assert sigma.sum() >= A.shape[1] * (1 - 1e-6)


def test_slope_over_reached_excludes_censored():
    S = [1.0, 2.0, 4.0, 8.0]
    iv, n_cens = slope_over_reached(S, [10.0, 20.0, 40.0, float("inf")])
    assert n_cens == 1 and iv.n == 3 and iv.estimate == pytest.approx(1.0)
    iv, n_cens = slope_over_reached(S, [10.0, float("inf"), 40.0, float("inf")])
    assert iv is None and n_cens == 2
