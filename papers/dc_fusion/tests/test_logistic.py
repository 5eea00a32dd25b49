import numpy as np
import pytest

from papers.dc_fusion import logistic as L


def _data():
    return L.simulate_data(400, np.random.default_rng(0))


def test_gradient_and_hessian_match_finite_differences():
    target = L.LogisticTarget.from_data(*_data(), prior_var=2.0)
    beta = np.array([[-1.0, 0.3, 0.2, -0.1, 0.5]])
    grad, hess = target.grad_and_hessian(beta)
    eps = 1e-6
    for i in range(5):
        e = np.zeros((1, 5))
        e[0, i] = eps
        fd = (target.log_density(beta + e) - target.log_density(beta - e)) / (2 * eps)
        assert grad[0, i] == pytest.approx(fd[0], rel=1e-5, abs=1e-6)
        g_plus, _ = target.grad_and_hessian(beta + e)
        g_minus, _ = target.grad_and_hessian(beta - e)
        assert np.allclose(hess[0, :, i], (g_plus - g_minus)[0] / (2 * eps), rtol=1e-4, atol=1e-5)


def test_product_of_shards_is_the_full_posterior():
    X, y = _data()
    full = L.LogisticTarget.from_data(X, y, 1.0)
    product = L.LogisticTarget.product(L.split_targets(X, y, 4))
    beta = np.random.default_rng(1).standard_normal((6, 5))
    assert product.prior_var == pytest.approx(1.0)
    assert np.allclose(product.log_density(beta), full.log_density(beta))


def test_random_walk_metropolis_on_a_gaussian_closed_form():
    rng = np.random.default_rng(2)
    mean, cov = np.array([1.0, -2.0]), np.array([[1.0, 0.6], [0.6, 2.0]])
    prec = np.linalg.inv(cov)
    def logd(b):
        return -0.5 * np.einsum("ni,ij,nj->n", b - mean, prec, b - mean)

    draws, acc = L.random_walk_metropolis(logd, rng.standard_normal((4000, 2)) * 3, 2.38**2 / 2 * cov, 200, rng)
    assert 0.2 < acc < 0.5
    assert np.allclose(draws.mean(0), mean, atol=0.1)
    assert np.allclose(np.cov(draws, rowvar=False), cov, atol=0.15)


def test_consensus_is_exact_for_gaussian_sub_posteriors():
    rng = np.random.default_rng(3)
    subs = [rng.multivariate_normal([m, 0.0], np.eye(2) * 2, size=20_000) for m in (1.0, -1.0)]
    out = L.consensus_monte_carlo(subs)
    assert np.allclose(out.mean(0), 0.0, atol=0.03) and np.allclose(out.var(0), 1.0, atol=0.05)


def test_kde_mc_concentrates_between_agreeing_sub_posteriors():
    rng = np.random.default_rng(4)
    subs = [rng.normal(0.0, 1.0, size=(500, 1)) for _ in range(3)]
    out = L.kde_monte_carlo(subs, 3000, rng, bandwidth=0.3, anneal=False)
    assert abs(out[1000:].mean()) < 0.15 and 0.15 < out[1000:].var() < 0.6   # product of N(0,1)³ is N(0, 1/3)


def test_iad_samples_identity_and_disjoint():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((5000, 2))
    assert L.iad_samples(a, a) == pytest.approx(0.0, abs=1e-12)
    assert L.iad_samples(a, a + 50) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError):
        L.split_targets(*_data(), C=0)


def test_semiparametric_kde_mc_recovers_a_gaussian_product():
    """Gaussian sub-posteriors N(±1, 2 I): the product is N(0, I); the semiparametric product is exact in
    the large-bandwidth limit (it becomes the Gaussian fits' product) and close at a moderate bandwidth."""
    rng = np.random.default_rng(6)
    subs = [rng.multivariate_normal([m, 0.0], np.eye(2) * 2, size=3000) for m in (1.0, -1.0)]
    wide = L.semiparametric_kde_monte_carlo(subs, 4000, rng, bandwidth=1e3, anneal=False)
    assert np.allclose(wide.mean(0), 0.0, atol=0.08) and np.allclose(wide.var(0), 1.0, atol=0.1)
    # the index chain is sticky at a moderate bandwidth: 15 000 sweeps give a Monte Carlo error of ~0.06
    moderate = L.semiparametric_kde_monte_carlo(subs, 15_000, rng, bandwidth=0.5, anneal=False)[1000:]
    assert np.allclose(moderate.mean(0), 0.0, atol=0.15) and np.allclose(moderate.var(0), 1.0, atol=0.2)
    with pytest.raises(ValueError):
        L.semiparametric_kde_monte_carlo(subs[:1], 10, rng)
