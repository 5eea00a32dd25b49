"""Analytic twins: eps = -sigma grad log q_t (autograd), the Gaussian closed-form ODE, GMM/Gaussian agreement."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from common.diffusion.schedule import VPSchedule
from common.diffusion.twins import DeltaTwin, GaussianTwin, GMMTwin

SCHEDULE = VPSchedule()


def toy_data(n=300, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g, dtype=torch.float64)
    x = centres[y] + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    return x, y


def autograd_eps(log_prob, x, t):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x).sum(), x)
    return -SCHEDULE.sigma(torch.as_tensor(t)) * grad


@pytest.mark.parametrize("t", [0.02, 0.3, 0.9])
def test_eps_is_minus_sigma_grad_log_q(t):
    x_train, y_train = toy_data()
    x = torch.randn(16, x_train.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = y_train[:16]
    gauss = GaussianTwin.fit(x_train, SCHEDULE)
    gmm = GMMTwin.fit(x_train, y_train, SCHEDULE)
    delta = DeltaTwin.fit(x_train, SCHEDULE, y_train)
    torch.testing.assert_close(gauss.eps(x, t), autograd_eps(lambda z: gauss.log_prob(z, t), x, t))
    torch.testing.assert_close(gmm.eps(x, t), autograd_eps(lambda z: gmm.log_prob(z, t), x, t))
    torch.testing.assert_close(delta.eps(x, t), autograd_eps(lambda z: delta.log_prob(z, t), x, t))
    torch.testing.assert_close(delta.eps(x, t, y), autograd_eps(lambda z: delta.log_prob(z, t, y), x, t))
    # conditional GMM: the score of the class component alone
    for k in range(3):
        mask = y_train == k
        single = GMMTwin.fit(x_train[mask], y_train[mask], SCHEDULE)
        rows = y == k
        torch.testing.assert_close(gmm.eps(x[rows], t, y[rows]), single.eps(x[rows], t))


def test_gaussian_closed_form_matches_solve_ivp():
    x_train, _ = toy_data()
    twin = GaussianTwin.fit(x_train, SCHEDULE)
    x_T = torch.randn(4, x_train.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t_from, t_to = 0.8, 0.05
    s_from, s_to = float(SCHEDULE.edm_sigma(t_from)), float(SCHEDULE.edm_sigma(t_to))

    def rhs(s, flat):  # EDM PF-ODE: dx_e/dsigma_e = eps(alpha x_e, t(sigma_e))
        t = SCHEDULE.t_from_edm_sigma(torch.tensor(s))
        x_e = torch.from_numpy(flat).reshape(x_T.shape)
        return twin.eps(SCHEDULE.alpha(t) * x_e, t).reshape(-1).numpy()

    x_e0 = (x_T / SCHEDULE.alpha(t_from)).reshape(-1).numpy()
    sol = solve_ivp(rhs, (s_from, s_to), x_e0, method="DOP853", rtol=1e-11, atol=1e-12)
    t_end = SCHEDULE.t_from_edm_sigma(torch.tensor(s_to))
    numeric = torch.from_numpy(sol.y[:, -1]).reshape(x_T.shape) * SCHEDULE.alpha(t_end)
    closed = twin.ode_solution(x_T, t_from, t_end)
    np.testing.assert_allclose(closed.numpy(), numeric.numpy(), atol=1e-6, rtol=0)


def test_gaussian_ode_round_trip_and_data_end():
    x_train, _ = toy_data()
    twin = GaussianTwin.fit(x_train, SCHEDULE)
    x = torch.randn(5, x_train.shape[1], dtype=torch.float64)
    back = twin.ode_solution(twin.ode_solution(x, 0.9, 0.1), 0.1, 0.9)
    torch.testing.assert_close(back, x)
    assert twin.ode_solution(x.float(), 0.9, 0.0).dtype == torch.float32


def test_gmm_with_one_class_equals_gaussian():
    x_train, _ = toy_data()
    y_one = torch.zeros(len(x_train), dtype=torch.long)
    gauss = GaussianTwin.fit(x_train, SCHEDULE)
    gmm = GMMTwin.fit(x_train, y_one, SCHEDULE, shrinkage=None)
    x = torch.randn(8, x_train.shape[1], dtype=torch.float64)
    for t in (0.01, 0.5):
        torch.testing.assert_close(gmm.eps(x, t), gauss.eps(x, t))
        torch.testing.assert_close(gmm.log_prob(x, t), gauss.log_prob(x, t))


def test_delta_twin_points_to_nearest_training_point():
    x_train, _ = toy_data()
    twin = DeltaTwin.fit(x_train, SCHEDULE)
    t = SCHEDULE.t_min
    x = x_train[:10] + 0.05 * torch.randn(10, x_train.shape[1], dtype=torch.float64)
    x0 = (x - SCHEDULE.sigma(t) * twin.eps(x, t)) / SCHEDULE.alpha(t)
    nearest = torch.cdist(x, x_train).argmin(1)
    torch.testing.assert_close(x0, x_train[nearest], atol=1e-6, rtol=0)


def test_samples_have_the_fitted_moments_and_dtype():
    x_train, y_train = toy_data()
    gauss = GaussianTwin.fit(x_train, SCHEDULE)
    s = gauss.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.mean(0), gauss.mu, atol=0.05)
    gmm = GMMTwin.fit(x_train, y_train, SCHEDULE)
    xs, ys = gmm.sample(3000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(xs[ys == 1].mean(0), gmm.means[1], atol=0.1)
    assert gmm.responsibilities(xs[:5], 0.01).shape == (5, 3)
    assert gauss.eps(x_train[:3].float(), 0.5).dtype == torch.float32
    with pytest.raises(ValueError):
        GMMTwin.fit(x_train, y_train, SCHEDULE, shrinkage="oas")
