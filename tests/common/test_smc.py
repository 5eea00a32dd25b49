import numpy as np
import pytest

from common import smc


def test_normalise_and_ess_exact_small_cases():
    lw = np.log([1.0, 1.0, 2.0])
    assert np.allclose(np.exp(smc.normalise_log_weights(lw)), [0.25, 0.25, 0.5])
    assert smc.ess(lw) == pytest.approx(16 / 6)                     # (Σw)² / Σw² = 16 / 6
    assert smc.ess(np.zeros(7)) == pytest.approx(7.0)
    assert smc.ess([0.0, -np.inf, -np.inf]) == pytest.approx(1.0)
    assert smc.ess(lw + 1000.0) == pytest.approx(16 / 6)            # no overflow in log space
    assert smc.ess(np.array([-2000.0, -2000.0])) == pytest.approx(2.0)


def test_cess_equals_ess_under_uniform_previous_weights_and_exact_case():
    v = np.log([1.0, 2.0, 3.0, 4.0])
    assert smc.cess(np.zeros(4), v) == pytest.approx(smc.ess(v))
    previous = np.log([0.5, 0.5, 0.0 + 1e-300, 1e-300])
    # N (Σ W v)² / Σ W v² with W = (½, ½, 0, 0), v = (1, 2, ., .): 4 · 1.5² / 2.5
    assert smc.cess(previous, v) == pytest.approx(4 * 1.5**2 / 2.5)


def test_bad_weights_raise():
    with pytest.raises(ValueError):
        smc.ess([-np.inf, -np.inf])
    with pytest.raises(ValueError):
        smc.ess([np.nan, 0.0])
    with pytest.raises(ValueError):
        smc.resample(np.zeros(3), np.random.default_rng(0), scheme="bogus")


@pytest.mark.parametrize("scheme", sorted(smc.RESAMPLERS))
def test_resampling_counts_are_unbiased(scheme):
    rng = np.random.default_rng(1)
    weights = np.array([0.05, 0.4, 0.0, 0.3, 0.25])
    reps = 4_000
    counts = np.zeros((reps, weights.size))
    with np.errstate(divide="ignore"):
        log_weights = np.log(weights)
    for r in range(reps):
        idx = smc.resample(log_weights, rng, scheme)
        assert idx.size == weights.size
        counts[r] = np.bincount(idx, minlength=weights.size)
    expected = weights.size * weights
    se = counts.std(axis=0, ddof=1) / np.sqrt(reps) + 1e-12
    assert np.all(np.abs(counts.mean(axis=0) - expected) < 5 * se + 1e-9)
    assert np.all(counts[:, 2] == 0)                                 # zero weight, never drawn


def test_systematic_and_residual_counts_bracket_expected_counts():
    rng = np.random.default_rng(2)
    lw = np.log(rng.dirichlet(np.ones(50)))
    expected = 50 * np.exp(smc.normalise_log_weights(lw))
    for _ in range(200):
        c = np.bincount(smc.systematic_resample(lw, rng), minlength=50)
        assert np.all(c >= np.floor(expected) - 1e-9) and np.all(c <= np.ceil(expected) + 1e-9)
        r = np.bincount(smc.residual_resample(lw, rng), minlength=50)
        assert np.all(r >= np.floor(expected)) and r.sum() == 50


def test_resample_other_size():
    idx = smc.resample(np.zeros(4), np.random.default_rng(0), "stratified", n=8)
    assert np.array_equal(np.bincount(idx, minlength=4), [2, 2, 2, 2])


def test_bridge_endpoints_and_marginal_moments():
    rng = np.random.default_rng(3)
    n, T = 40_000, 2.0
    x0, y = np.full((n, 1), 1.0), np.full((n, 1), -1.0)
    times = np.array([0.0, 0.5, 1.5, 2.0])
    path = smc.sample_brownian_bridge(x0, y, T, times, rng, cov=[[4.0]])
    assert np.allclose(path[:, 0], 1.0) and np.allclose(path[:, -1], -1.0)
    # X_t ~ N(x0 + t/T (y - x0), Λ t (T - t) / T) and Cov(X_s, X_t) = Λ s (T - t) / T for s < t
    assert path[:, 1, 0].mean() == pytest.approx(0.5, abs=0.03)
    assert path[:, 1, 0].var() == pytest.approx(4 * 0.5 * 1.5 / 2, rel=0.03)
    assert np.cov(path[:, 1, 0], path[:, 2, 0])[0, 1] == pytest.approx(4 * 0.5 * 0.5 / 2, rel=0.06)


def test_quadratic_bridge_closed_form_limits():
    a, b = np.array([0.3, -1.0]), np.array([1.2, 0.4])
    assert np.allclose(smc.bridge_quadratic_log_expectation_1d(a, b, 0.0, 1.0), 0.0)
    # small k: log E ≈ -(k²/2) E∫W² with E∫₀ᵀ W² = T(a² + ab + b²)/3 + T²/6
    k, T = 1e-3, 1.5
    first_order = -(k**2 / 2) * (T * (a**2 + a * b + b**2) / 3 + T**2 / 6)
    assert np.allclose(smc.bridge_quadratic_log_expectation_1d(a, b, k, T), first_order, rtol=1e-4)
    # huge k stays finite and very negative
    assert np.all(np.isfinite(smc.bridge_quadratic_log_expectation_1d(a, b, 1e4, 1.0)))


def test_quadratic_bridge_closed_form_matches_monte_carlo():
    rng = np.random.default_rng(4)
    n, T = 20_000, 1.0
    x0 = np.tile([[0.5, -0.2]], (n, 1))
    y = np.tile([[-0.4, 0.7]], (n, 1))
    mean = np.array([0.1, 0.0])
    A = np.array([[2.0, 0.6], [0.6, 1.0]])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    exact = smc.bridge_quadratic_log_expectation(x0[:1], y[:1], T, mean, A, cov)[0]
    integral = smc.bridge_path_integral(lambda x: 0.5 * np.einsum("ni,ij,nj->n", x - mean, A, x - mean),
                                        x0, y, T, 200, rng, cov)
    mc = np.log(np.mean(np.exp(-integral)))
    assert mc == pytest.approx(exact, abs=0.01)


def test_bridge_input_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        smc.sample_brownian_bridge(np.zeros((2, 1)), np.zeros((3, 1)), 1.0, [0, 1], rng)
    with pytest.raises(ValueError):
        smc.bridge_quadratic_log_expectation_1d(0.0, 0.0, 1.0, -1.0)
    with pytest.raises(ValueError):
        smc.bridge_path_integral(lambda x: x[:, 0], np.zeros(2), np.zeros(2), 1.0, 0, rng)
