"""Unit tests of papers.polaris: the closed-form ω_t, the dynamic-exact update, budgets, metrics."""

import pytest
import torch

from common.cfg_inversion import invert_fixed, reconstruct
from common.diffusion.samplers import ddim_timesteps
from common.diffusion.schedule import VPSchedule
from papers.polaris import (
    class_edit,
    dynamic_exact_omega,
    invert_polaris,
    per_row_psnr,
    per_row_rmse,
    polaris_omega,
    round_trip,
    ssim_8x8,
    tag,
    target_labels,
)


class LinearModel:
    def __init__(self):
        self.schedule = VPSchedule()

    def eps(self, x, t, y=None):
        t = torch.as_tensor(t, dtype=x.dtype)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        scale = torch.where(y == 10, 0.1, 0.15 + 0.01 * y.to(x.dtype))
        return (scale * (0.5 + t))[:, None] * x + 0.2 * t[:, None] * x.pow(2)


def test_polaris_omega_is_the_least_squares_minimiser():
    g = torch.Generator().manual_seed(0)
    du, dc = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(5, 16, generator=g, dtype=torch.float64)
    w = polaris_omega(du, dc, omega_max=1e9)
    # orthogonality: the residual (1-ω)Δu + ωΔc is orthogonal to Δc − Δu
    residual = (1 - w[:, None]) * du + w[:, None] * dc
    assert torch.allclose((residual * (dc - du)).sum(1), torch.zeros(5, dtype=torch.float64), atol=1e-10)
    # and no ω on a fine grid does better
    grid = torch.linspace(-5, 5, 2001, dtype=torch.float64)
    obj = ((1 - grid[:, None, None]) * du + grid[:, None, None] * dc).pow(2).sum(2)
    assert torch.all(obj.min(0).values >= residual.pow(2).sum(1) - 1e-12)


def test_polaris_omega_exact_small_case_clip_and_fallback():
    du = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    dc = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    assert polaris_omega(du, dc).item() == pytest.approx(0.5)  # (1 + 1) / 4
    assert polaris_omega(du, 2 * du).item() == 0.0  # -1 clipped at 0
    assert polaris_omega(du, 0.95 * du).item() == 15.0  # 0.05 / 0.0025 = 20, clipped at 15
    assert polaris_omega(du, du).item() == 1.0  # zero denominator: the fallback


def test_dynamic_exact_update():
    w = torch.tensor([2.0], dtype=torch.float64)
    du = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    dc = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    gap = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    # a = -1 * du + 2 dc = (-1, 2); <a, b> = 1; ||b||^2 = 2 → ω = 2 + 1 / (2 + 1e-6)
    assert dynamic_exact_omega(w, du, dc, gap).item() == pytest.approx(2.5, abs=1e-6)


def test_invert_polaris_budget_and_first_step():
    model, ts = LinearModel(), ddim_timesteps(8, "trailing")
    x0, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 4, 9])
    inv = invert_polaris(model, x0, ts, y)
    assert inv.passes == invert_fixed(model, x0, ts, y, 5.0).passes == 16
    assert torch.all(inv.omegas[-1] == 1.0)  # the first inversion step (cleanest interval) uses ω = 1
    assert torch.all((inv.omegas >= 0) & (inv.omegas <= 15))
    # with its own ω_t as a fixed table, fixed-ω inversion is the same computation
    same = invert_fixed(model, x0, ts, y, inv.omegas)
    assert torch.allclose(same.x_T, inv.x_T)
    dyn = invert_polaris(model, x0, ts, y, variant="dynamic_exact")
    assert dyn.passes == 16
    with pytest.raises(ValueError):
        invert_polaris(model, x0, ts, y, variant="other")


def test_metrics():
    x = torch.rand(4, 64, dtype=torch.float64) * 2 - 1
    assert torch.allclose(ssim_8x8(x, x), torch.ones(4, dtype=torch.float64))
    assert torch.all(per_row_rmse(x, x) == 0)
    y = x + 0.1
    assert torch.allclose(per_row_psnr(x, y), torch.full((4,), 10 * torch.log10(torch.tensor(4 / 0.01)).item(), dtype=torch.float64))
    assert tag(7.5) == "w7p5" and tag(5.0) == "w5"
    assert torch.equal(target_labels(torch.tensor([0, 9])), torch.tensor([1, 0]))
    with pytest.raises(ValueError):
        target_labels(torch.tensor([1]), shift=10)


def test_class_edit_with_same_label_is_reconstruction():
    model, ts = LinearModel(), ddim_timesteps(6, "trailing")
    x0, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([2, 7])
    inv = invert_polaris(model, x0, ts, y)
    assert torch.allclose(class_edit(model, x0, ts, y, y, "polaris", 5.0), reconstruct(model, inv, ts, y).x0)
    with pytest.raises(ValueError):
        class_edit(model, x0, ts, y, y, "dynamic_exact", 5.0)


def test_fixed_point_on_polaris_path_counts_its_own_passes():
    """2 (1 + n_iter) passes per step, (1 + n_iter) at POLARIS's ω = 1 first step; the POLARIS inversion that gave
    the path is not counted, and nothing else is subtracted (an earlier version subtracted its passes again)."""
    model, ts = LinearModel(), ddim_timesteps(8, "trailing")
    x0, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 4, 9])
    out = round_trip(model, x0, ts, y, "fixed_point_polaris_path", 5.0, n_fp_iter=3)
    n_unit = int((invert_polaris(model, x0, ts, y).omegas[:, 0] == 1.0).sum())
    assert n_unit >= 1
    assert out["inversion_passes"] == 4 * (2 * 8 - n_unit)
