"""Tests of common/score_distillation.py: SDS/DDS/PDS identities and the affine views."""

import math

import pytest
import torch

from common.diffusion.schedule import VPSchedule
from common.score_distillation import (
    affine_thetas,
    affine_views,
    apply_render_gradient,
    dds_grad,
    pds_coefficients,
    pds_grad,
    sds_grad,
)


class LinearEps:
    """A toy model eps(x, t, y) = 0.5 x + 0.1 y (a known function, so gradients have exact answers)."""

    def __init__(self):
        self.schedule = VPSchedule()

    def eps(self, x, t, y=None):
        y = torch.zeros(x.shape[0]) if y is None else y.to(x.dtype)
        return 0.5 * x + 0.1 * y[:, None]


def _data(b=3, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)


def test_sds_equals_weighted_eps_residual():
    m, (x, eps) = LinearEps(), _data()
    y, t = torch.tensor([1, 2, 3]), 0.4
    a, s = m.schedule.alpha(t), m.schedule.sigma(t)
    expect = 2.0 * (0.5 * (a * x + s * eps) + 0.1 * y[:, None].double() - eps)
    torch.testing.assert_close(sds_grad(m, x, y, t, eps=eps, weight=2.0), expect)


def test_dds_zero_when_source_equals_target_and_noise_cancels():
    m, (x, eps) = LinearEps(), _data()
    y = torch.tensor([4, 5, 6])
    assert torch.all(dds_grad(m, x, x, y, y, 0.5, eps=eps) == 0)
    # the injected noise cancels: with a linear model the DDS gradient does not depend on eps
    x2 = x + 1.0
    g1 = dds_grad(m, x2, x, y, y, 0.5, eps=eps)
    g2 = dds_grad(m, x2, x, y, y, 0.5, eps=-eps)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(g1, torch.full_like(x, 0.5 * float(m.schedule.alpha(0.5))))


def test_pds_latent_difference_matches_closed_form():
    m, (x, eps) = LinearEps(), _data()
    x_src = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ys, yt = torch.tensor([1, 1, 1]), torch.tensor([7, 7, 7])
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    g = pds_grad(m, x, x_src, yt, ys, t, eps=eps, eps_prev=torch.randn_like(x))
    c0, c1, st, ap = pds_coefficients(m.schedule, t)
    a, s = m.schedule.alpha(t), m.schedule.sigma(t)
    psi = ((ap - c0 - c1 * a) / st)[:, None]
    chi = (c0 * s / (a * st))[:, None]
    e_t = 0.5 * (a[:, None] * x + s[:, None] * eps) + 0.7
    e_s = 0.5 * (a[:, None] * x_src + s[:, None] * eps) + 0.1
    torch.testing.assert_close(g, psi * (x - x_src) + chi * (e_t - e_s))
    assert torch.all(pds_grad(m, x, x, ys, ys, t, eps=eps) == 0)


def test_pds_coefficients_are_a_posterior():
    sch = VPSchedule()
    t = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    c0, c1, st, ap = pds_coefficients(sch, t, stride=1)
    # the one-step posterior of x_{t-1} given (x_t, x0) has mean c0 x0 + c1 x_t; its marginal mean is alpha_{t-1} x0,
    # so with stride 1 PDS's identity weight psi_t = (alpha_{t-1} - c0 - c1 alpha_t) / sigma_tilde vanishes
    torch.testing.assert_close(c0 + c1 * sch.alpha(t), ap)
    assert torch.all(st > 0)


def test_pds_coefficients_match_the_official_discrete_arithmetic():
    """Official pds.py: 500 DDIM steps on 1000, t_prev = t - 2, betas[t], alphas[t] one-step, alphas_cumprod[t_prev]."""
    sch = VPSchedule()
    for n in (20, 100, 500, 950):
        t = sch.t_of_step(n)
        beta, abar_t, abar_p = sch.betas[n], sch.alphas_cumprod[n], sch.alphas_cumprod[n - 2]
        c0 = abar_p.sqrt() * beta / (1 - abar_t)
        c1 = (1 - beta).sqrt() * (1 - abar_p) / (1 - abar_t)
        st = ((1 - abar_p) / (1 - abar_t) * beta).sqrt()
        got = pds_coefficients(sch, t)
        for a, b in zip(got, (c0, c1, st, abar_p.sqrt()), strict=True):
            torch.testing.assert_close(a.reshape(()), b, rtol=1e-9, atol=1e-12)
    # with the official stride the identity weight psi_t is positive and dominates chi_t at small t
    t = torch.tensor([0.03, 0.1, 0.5, 0.9], dtype=torch.float64)
    c0, c1, st, ap = pds_coefficients(sch, t)
    psi = (ap - c0 - c1 * sch.alpha(t)) / st
    chi = c0 * sch.sigma(t) / (sch.alpha(t) * st)
    assert torch.all(psi > 0) and psi[0] > 5 * chi[0] and psi[-1] < 0.1 * chi[-1]
    with pytest.raises(ValueError):
        pds_coefficients(sch, 0.5, stride=0)


def test_render_gradient_surrogate():
    x = torch.randn(4, 64, requires_grad=True)
    g = torch.randn(4, 64)
    apply_render_gradient(x, g).backward()
    torch.testing.assert_close(x.grad, g)


def test_identity_view_returns_image_and_views_are_differentiable():
    img = torch.rand(2, 64) * 2 - 1
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    torch.testing.assert_close(affine_views(img, eye), img, atol=1e-5, rtol=0)
    # a shift of one pixel (2/8 in normalised units) moves the content by one column, background enters
    shift = torch.tensor([[[1.0, 0, 0.25], [0, 1.0, 0]]])
    out = affine_views(img, shift).reshape(2, 8, 8)
    torch.testing.assert_close(out[:, :, :-1], img.reshape(2, 8, 8)[:, :, 1:], atol=1e-5, rtol=0)
    assert torch.allclose(out[:, :, -1], torch.tensor(-1.0))
    th = affine_thetas(6, generator=torch.Generator().manual_seed(0)).reshape(2, 3, 2, 3)
    x = img.clone().requires_grad_(True)
    affine_views(x, th).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_affine_thetas_ranges():
    th = affine_thetas(500, max_angle_deg=10, max_shift_px=1, generator=torch.Generator().manual_seed(0)).double()
    ang = torch.atan2(th[:, 1, 0], th[:, 0, 0])
    assert ang.abs().max() <= math.radians(10) + 1e-6
    assert th[:, :, 2].abs().max() <= 0.25 + 1e-6
    torch.testing.assert_close(th[:, 0, 0] ** 2 + th[:, 1, 0] ** 2, torch.ones(500, dtype=torch.float64))


def test_errors():
    m, (x, eps) = LinearEps(), _data()
    with pytest.raises(ValueError):
        sds_grad(m, x, torch.zeros(3, dtype=torch.long), 1.5, eps=eps)
    with pytest.raises(ValueError):
        dds_grad(m, x, x[:2], torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError):
        affine_views(torch.zeros(2, 63), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError):
        affine_thetas(0)
