"""Tests of common.cfg_inversion: exact answers on a linear-Gaussian model, invariants, budgets."""

import pytest
import torch

from common.cfg_inversion import (
    cfg,
    ddim_move,
    guided_pair,
    invert_fixed,
    invert_fixed_point,
    invert_null_embedding,
    omega_schedule,
    reconstruct,
)
from common.diffusion import ddim, load_digits_eps, load_digits_split
from common.diffusion.samplers import ddim_timesteps
from common.diffusion.schedule import VPSchedule


class LinearModel:
    """ε(x, t, y) = c_y(t) x with a per-label scalar: the conditional and unconditional predictions differ."""

    def __init__(self):
        self.schedule = VPSchedule()

    def eps(self, x, t, y=None):
        t = torch.as_tensor(t, dtype=x.dtype)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        scale = torch.where(y == 10, 0.1, 0.15 + 0.01 * y.to(x.dtype)) if y is not None else torch.full_like(t, 0.1)
        return (scale * (0.5 + t))[:, None] * x + 0.2 * t[:, None]


@pytest.fixture(scope="module")
def digits():
    split = load_digits_split()
    return load_digits_eps("ci"), split.x_heldout[:8], split.y_heldout[:8]


def test_cfg_and_move_identities():
    u, c = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(cfg(u, c, 0.0), u) and torch.allclose(cfg(u, c, 1.0), c)
    w = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(cfg(u, c, w)[2], 2 * c[2] - u[2])
    x, e = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    there = ddim_move(x, e, 0.9, 0.436, 0.5, 0.866)
    assert torch.allclose(ddim_move(there, e, 0.5, 0.866, 0.9, 0.436), x)  # same eps: exactly reversible


def test_guided_pair_matches_separate_calls(digits):
    model, x, y = digits
    u, c = guided_pair(model, x, 0.4, y)
    assert torch.allclose(c, model.eps(x, 0.4, y), atol=1e-5)
    assert torch.allclose(u, model.eps(x, 0.4, torch.full_like(y, 10)), atol=1e-5)


def test_omega_schedule_shapes():
    assert omega_schedule(2.0, 3, 2).shape == (3, 2)
    assert torch.equal(omega_schedule(torch.tensor([1.0, 2.0, 3.0]), 3, 2)[:, 1], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        omega_schedule(torch.ones(4), 3, 2)


def test_fixed_inversion_of_linear_model_and_passes():
    model, ts = LinearModel(), ddim_timesteps(10, "trailing")
    x0, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
    inv = invert_fixed(model, x0, ts, y, 3.0)
    assert inv.passes == 20 and inv.omegas.shape == (10, 4) and len(inv.trajectory) == 11
    assert invert_fixed(model, x0, ts, y, 1.0).passes == 10  # conditional model only
    rec = reconstruct(model, inv, ts, y)
    assert rec.passes == 20
    # the generation step undoes the inversion step only up to the approximate-noise error: not exact
    assert (rec.x0 - x0).abs().max() > 1e-6


def test_fixed_point_inversion_is_near_exact_and_converges():
    model, ts = LinearModel(), ddim_timesteps(10, "trailing")
    x0, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
    err = []
    for n_iter in (0, 2, 40):
        inv = invert_fixed_point(model, x0, ts, y, 3.0, n_iter)
        assert inv.passes == 2 * 10 * (1 + n_iter)
        err.append(float((reconstruct(model, inv, ts, y).x0 - x0).abs().max()))
    assert err[0] > err[1] > err[2] and err[2] < 1e-6
    # a latent generated with ω is recovered by the fixed-point inversion
    guided = ddim(_Guided(model, 3.0), torch.randn(4, 6, dtype=torch.float64), ts, y)
    inv = invert_fixed_point(model, guided, ts, y, 3.0, 30)
    assert torch.allclose(reconstruct(model, inv, ts, y).x0, guided, atol=1e-8)


class _Guided:
    def __init__(self, model, w):
        self.model, self.w, self.schedule = model, w, model.schedule

    def eps(self, x, t, y=None):
        return cfg(*guided_pair(self.model, x, t, y), self.w)


def test_replay_orders_differ_only_for_varying_omegas():
    model, ts = LinearModel(), ddim_timesteps(6, "trailing")
    x0, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([1, 2])
    inv = invert_fixed(model, x0, ts, y, torch.linspace(1.0, 4.0, 6))
    a = reconstruct(model, inv, ts, y).x0
    b = reconstruct(model, inv, ts, y, replay="inversion_order").x0
    assert not torch.allclose(a, b)
    const = invert_fixed(model, x0, ts, y, 2.0)
    assert torch.allclose(reconstruct(model, const, ts, y).x0, reconstruct(model, const, ts, y, replay="inversion_order").x0)
    with pytest.raises(ValueError):
        reconstruct(model, inv, ts, y, replay="backwards")


def test_null_embedding_inversion_improves_on_asymmetric(digits):
    model, x, y = digits
    ts = ddim_timesteps(5, "trailing")
    inv = invert_null_embedding(model, x, ts, y, omega=3.0, n_iter=5, lr=1e-2)
    assert inv.null_embeddings.shape == (5, 8, 128)
    assert inv.passes == 5 + 5 * (1 + 5 + 1) and inv.backward_passes == 25
    with torch.no_grad():
        err_nti = (reconstruct(model, inv, ts, y).x0 - x).pow(2).mean()
        err_asym = (reconstruct(model, invert_fixed(model, x, ts, y, 1.0), ts, y, omega=3.0).x0 - x).pow(2).mean()
    assert err_nti < err_asym


def test_errors():
    model, ts = LinearModel(), ddim_timesteps(4, "trailing")
    with pytest.raises(ValueError):
        invert_fixed(model, torch.randn(2, 3), ts, None)
    with pytest.raises(ValueError):
        invert_fixed(model, torch.randn(2, 3), ts.flip(0), torch.tensor([1, 2]))
    with pytest.raises(ValueError):
        invert_fixed_point(model, torch.randn(2, 3), ts, torch.tensor([1, 2]), 2.0, -1)
