import math

import numpy as np
import pytest
import torch

from common.preference import (
    dpo_loss,
    duality_gap,
    exact_inpo_update,
    exact_mnpo_update,
    exact_sppo_update,
    fit_table,
    history_weights,
    inpo_loss,
    mnpo_loss,
    regularized_duality_gap,
    simpo_loss,
    sppo_loss,
    win_rate,
)

RPS = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])  # rock, paper, scissors: P[i, j] = P(i ≻ j)


def _random_game(K, rng):
    a = rng.random((K, K))
    P = np.triu(a, 1) + np.tril(1 - a.T, -1)
    np.fill_diagonal(P, 0.5)
    return P


def test_dpo_and_simpo_losses_match_their_formulas():
    t = torch.tensor
    assert dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1).item() == pytest.approx(math.log(2))
    # margin 0.1 * ((-1 - -3) - (-2 - -2)) = 0.2
    assert dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.1).item() == pytest.approx(math.log1p(math.exp(-0.2)))
    # SimPO: beta * (-4/2 - -9/3) - gamma = 2 * 1 - 0.5
    assert simpo_loss(t(-4.0), t(-9.0), beta=2.0, gamma=0.5, len_w=2.0, len_l=3.0).item() == pytest.approx(
        math.log1p(math.exp(-1.5)))
    assert sppo_loss(t(-1.0), t(-1.5), t(1.0), eta=2.0).item() == pytest.approx((0.5 - 1.0) ** 2)


def test_mnpo_with_one_history_policy_is_inpo_and_matches_the_official_form():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(7, generator=g) for _ in range(6)]
    a = inpo_loss(*x, eta=3.0, rho=0.25)
    b = mnpo_loss(x[0], x[1], x[2], x[3], [x[4]], [x[5]], eta=3.0, rho=0.25)
    assert torch.equal(a, b)
    # official mnpo_loss: logits = pi - ratio*ref - (1-ratio)*sum lambda_j hist_j; (logits - 1/(2 eta_code))^2
    h = [torch.randn(7, generator=g) for _ in range(4)]
    ours = mnpo_loss(x[0], x[1], x[2], x[3], [h[0], h[1]], [h[2], h[3]], eta=4.0, rho=1 / 3, weights=[3.0, 1.0])
    logits = (x[0] - x[1]) - (x[2] - x[3]) / 3 - (2 / 3) * (0.75 * (h[0] - h[2]) + 0.25 * (h[1] - h[3]))
    torch.testing.assert_close(ours, (logits - 1 / (2 * 0.25)) ** 2)


def test_history_weights_truncate_and_normalise():
    np.testing.assert_allclose(history_weights(3), [1 / 3] * 3)
    np.testing.assert_allclose(history_weights(1, [1.0, 0.0]), [1.0])
    np.testing.assert_allclose(history_weights(2, [1.0, 0.0]), [1.0, 0.0])
    np.testing.assert_allclose(history_weights(2, [0.0, 0.0]), [0.5, 0.5])
    with pytest.raises(ValueError):
        history_weights(0)
    with pytest.raises(ValueError):
        history_weights(2, [-1.0, 1.0])


def test_duality_gap_on_rock_paper_scissors():
    assert duality_gap(RPS, np.ones(3) / 3) == pytest.approx(0.0, abs=1e-12)
    assert duality_gap(RPS, np.array([1.0, 0.0, 0.0])) == pytest.approx(1.0)   # paper beats rock surely
    rng = np.random.default_rng(1)
    P = _random_game(6, rng)
    pi = rng.dirichlet(np.ones(6))
    # equals 2 (max_y P(y ≻ π) − 1/2) and max over pure opponents
    assert duality_gap(P, pi) == pytest.approx(2 * ((P @ pi).max() - 0.5))
    assert win_rate(P, pi, pi) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        duality_gap(np.ones((3, 3)), np.ones(3) / 3)


@pytest.mark.parametrize("sampler", ["current", "population"])
def test_exact_mnpo_update_is_the_population_minimiser_of_the_loss(sampler):
    """Minimise the expected loss (6) over all pairs and labels; compare with the closed form (7)."""
    rng = np.random.default_rng(2)
    K = 4
    P = _random_game(K, rng)
    logs = [np.log(rng.dirichlet(np.ones(K))) for _ in range(4)]
    log_ref, hist = logs[0], logs[1:]
    eta, rho = 1.5, 0.3
    lam = history_weights(3)
    mu = np.exp(hist[0]) if sampler == "current" else sum(lam[j] * np.exp(hist[j]) for j in range(3))
    i, j = np.meshgrid(np.arange(K), np.arange(K), indexing="ij")
    weight = torch.tensor(mu[i] * mu[j])                                  # pair (i, j) drawn i.i.d. from μ
    p_ij = torch.tensor(P[i, j])
    H = [torch.tensor(h) for h in hist]
    ref = torch.tensor(log_ref)

    def expected_loss(logp):
        # label i ≻ j with prob P[i, j]: the pair enters as (y_w, y_l) = (i, j), else (j, i)
        fwd = mnpo_loss(logp[i], logp[j], ref[i], ref[j], [h[i] for h in H], [h[j] for h in H], eta=eta, rho=rho)
        bwd = mnpo_loss(logp[j], logp[i], ref[j], ref[i], [h[j] for h in H], [h[i] for h in H], eta=eta, rho=rho)
        return (weight * (p_ij * fwd + (1 - p_ij) * bwd)).sum()

    fitted = fit_table(expected_loss, hist[0], steps=800, lr=0.05)
    exact = exact_mnpo_update(P, log_ref, hist, eta=eta, rho=rho, sampler=sampler)
    np.testing.assert_allclose(fitted, exact, atol=2e-4)


def test_exact_updates_normalise_and_inpo_is_mnpo_with_one_opponent():
    rng = np.random.default_rng(3)
    P = _random_game(5, rng)
    log_ref, log_t = np.log(rng.dirichlet(np.ones(5))), np.log(rng.dirichlet(np.ones(5)))
    new = exact_sppo_update(P, log_t, eta=2.0)
    target = np.exp(log_t) * np.exp(2.0 * P @ np.exp(log_t))
    np.testing.assert_allclose(np.exp(new), target / target.sum())
    np.testing.assert_array_equal(exact_inpo_update(P, log_ref, log_t, eta=2.0, rho=0.5),
                                  exact_mnpo_update(P, log_ref, [log_t], eta=2.0, rho=0.5))
    with pytest.raises(ValueError):
        exact_mnpo_update(P, log_ref, [log_t], eta=2.0, rho=1.5)
    with pytest.raises(ValueError):
        exact_mnpo_update(P, log_ref, [log_t], eta=2.0, rho=0.5, sampler="bogus")


def test_regularized_gap_vanishes_at_the_inpo_fixed_point_and_is_nonnegative():
    rng = np.random.default_rng(4)
    P = _random_game(6, rng)
    log_ref = np.log(rng.dirichlet(np.ones(6)))
    eta, rho = 2.0, 0.5
    log_pi = log_ref
    for _ in range(200):
        log_pi = exact_inpo_update(P, log_ref, log_pi, eta=eta, rho=rho)
    assert regularized_duality_gap(P, np.exp(log_pi), log_ref, tau=rho / eta) == pytest.approx(0.0, abs=1e-10)
    for _ in range(5):
        pi = rng.dirichlet(np.ones(6))
        assert regularized_duality_gap(P, pi, log_ref, tau=0.3) >= -1e-12


def test_argument_checks():
    t = torch.zeros(2)
    with pytest.raises(ValueError):
        dpo_loss(t, t, t, t, beta=0.0)
    with pytest.raises(ValueError):
        simpo_loss(t, t, beta=1.0, gamma=-1.0)
    with pytest.raises(ValueError):
        mnpo_loss(t, t, t, t, [t], [], eta=1.0, rho=0.5)
    with pytest.raises(ValueError):
        fit_table(lambda lp: lp.sum(), np.zeros(3), steps=0)
