"""Exactness, reductions and network-call counts of BDIA-DDIM, EDICT and the DDIM round trip."""

import pytest
import torch

from common.diffusion import VPSchedule, ddim, time_grid
from common.diffusion.samplers import grid_coefficients
from papers.bdia import (
    LinearEpsModel,
    bdia_inverse_step,
    bdia_invert,
    bdia_round_trip,
    bdia_sample,
    bdia_step,
    ddim_round_trip,
    edict_invert,
    edict_round_trip,
    edict_sample,
    editing_grid,
    gamma_key,
    growth_factor,
    inverse_mode_roots,
    max_abs_trajectory,
    noise_and_labels,
)


@pytest.fixture(scope="module")
def toy():
    return LinearEpsModel(VPSchedule(), dim=6, random_state=0)


def _x0(n=5, dim=6, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).clamp(-1, 1)


def test_bdia_step_and_its_inverse_are_exact(toy):
    ts = time_grid(10, "uniform_t")
    c = grid_coefficients(toy.schedule, ts)
    z_next, z = _x0(seed=2), _x0(seed=3)
    eps = toy.eps(z, c["t"][4])
    for gamma in (0.3, 0.5, 1.0):
        z_prev = bdia_step(z_next, z, eps, c, 4, gamma)
        assert torch.allclose(bdia_inverse_step(z_prev, z, eps, c, 4, gamma), z_next, atol=1e-12, rtol=0)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_bdia_round_trip_is_exact_in_float64(toy, gamma):
    x0 = _x0()
    ts = time_grid(10, "uniform_t")
    # the inversion's parasitic mode grows like (1/gamma)^N in exact arithmetic; the error is eps * |z_N|
    assert (bdia_round_trip(toy, x0, ts, gamma=gamma) - x0).abs().max() < 1e-12 * (1 / gamma) ** 10


def test_gamma_zero_is_ddim(toy):
    x = _x0(seed=4)
    ts = time_grid(8, "logsnr")
    assert torch.allclose(bdia_sample(toy, x, ts, gamma=0.0), ddim(toy, x, ts), atol=1e-13, rtol=0)


def test_gamma_one_is_the_papers_original_update(toy):
    # z_{i-1} = z_{i+1} - Delta(t_i -> t_{i+1}) + Delta(t_i -> t_{i-1}), Deltas taken from z_i
    ts = time_grid(6, "uniform_t")
    c = grid_coefficients(toy.schedule, ts)
    z_next, z = _x0(seed=5), _x0(seed=6)
    eps = toy.eps(z, c["t"][2])
    x0 = (z - c["sigma"][2] * eps) / c["alpha"][2]
    back = c["alpha"][1] * x0 + c["sigma"][1] * eps - z
    fwd = c["alpha"][3] * x0 + c["sigma"][3] * eps - z
    assert torch.allclose(bdia_step(z_next, z, eps, c, 2, 1.0), z_next - back + fwd + z - z, atol=1e-13, rtol=0)


def test_bdia_inversion_rejects_gamma_zero(toy):
    with pytest.raises(ValueError):
        bdia_invert(toy, _x0(), time_grid(4, "uniform_t").flip(0), gamma=0.0)
    with pytest.raises(ValueError):
        bdia_sample(toy, _x0(), time_grid(4, "uniform_t"), gamma=1.5)


def test_edict_inverts_exactly_and_ddim_does_not(toy):
    x0 = _x0()
    ts = time_grid(10, "uniform_t")
    assert (edict_round_trip(toy, x0, ts) - x0).abs().max() < 1e-10
    assert (ddim_round_trip(toy, x0, ts) - x0).abs().max() > 1e-4


def test_network_call_counts(toy):
    x0 = _x0()
    n = 7
    ts = time_grid(n, "uniform_t")
    toy.nfe = 0
    top, below = bdia_invert(toy, x0, ts.flip(0), gamma=1.0)
    assert toy.nfe == n
    toy.nfe = 0
    bdia_sample(toy, below, ts, gamma=1.0, x_prev=top)
    assert toy.nfe == n - 1  # the pair already holds the first state
    toy.nfe = 0
    bdia_sample(toy, x0, ts, gamma=1.0)
    assert toy.nfe == n
    toy.nfe = 0
    lx, ly = edict_invert(toy, x0, ts)
    assert toy.nfe == 2 * n
    toy.nfe = 0
    edict_sample(toy, lx, ly, ts)
    assert toy.nfe == 2 * n


def test_inverse_mode_roots_and_growth_factor():
    for gamma in (0.5, 0.9, 1.0):
        for r in inverse_mode_roots(gamma):
            assert r * r - (1 - 1 / gamma) * r - 1 / gamma == pytest.approx(0.0, abs=1e-12)
    assert growth_factor([3.0 * 2.0**k for k in range(12)]) == pytest.approx(2.0)
    assert growth_factor([5.0] * 8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        growth_factor([1.0, float("inf"), 2.0])


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_pair_map_jacobian_determinant_is_minus_one_over_gamma_to_the_d(toy, gamma):
    """Whatever the network, the inversion's pair map (z_i, z_{i-1}) -> (z_{i+1}, z_i) has |det J| = gamma^-d."""
    ts = time_grid(10, "uniform_t")
    c = grid_coefficients(toy.schedule, ts)
    d = 6

    def pair_map(v):
        z, z_prev = v[:d][None], v[d:][None]
        z_new = bdia_inverse_step(z_prev, z, toy.eps(z, c["t"][4]), c, 4, gamma)
        return torch.cat([z_new[0], z[0]])

    jac = torch.autograd.functional.jacobian(pair_map, torch.cat([_x0(1, d, 7)[0], _x0(1, d, 8)[0]]))
    assert abs(float(torch.linalg.det(jac))) == pytest.approx(gamma ** -d, rel=1e-9)


def test_gamma_half_inversion_diverges_in_exact_arithmetic():
    """The gamma = 0.5 latent blows up identically in float32 and float64 (not rounding); gamma = 1 stays bounded."""
    ts = time_grid(40, "uniform_t")
    lat = {}
    toy = LinearEpsModel(VPSchedule(), dim=6, random_state=0)  # float64 weights, cast to x's dtype in eps
    for dtype in (torch.float32, torch.float64):
        for gamma in (0.5, 1.0):
            *_, traj = bdia_invert(toy, _x0().to(dtype), ts.flip(0), gamma=gamma, return_trajectory=True)
            lat[(dtype, gamma)] = max_abs_trajectory(traj)
    big32, big64 = lat[(torch.float32, 0.5)][-1], lat[(torch.float64, 0.5)][-1]
    assert big64 > 1e6 and abs(big32 - big64) / big64 < 1e-3
    assert growth_factor(lat[(torch.float64, 0.5)]) > 2**0.5
    assert lat[(torch.float64, 1.0)][-1] < 1e-4 * big64  # gamma = 1: the mode only oscillates


def test_round_trip_returns_latents_and_editing_grid(toy):
    ts = editing_grid(40, 0.8)
    assert len(ts) == 33 and float(ts[0]) == pytest.approx(0.8, abs=1e-3) and float(ts[-1]) == toy.schedule.t_min
    out, lat = bdia_round_trip(toy, _x0(), ts, gamma=1.0, return_latents=True)
    assert len(lat) == 33 and lat[0] == pytest.approx(float(_x0().abs().max()))
    assert (out - _x0()).abs().max() < 1e-12
    with pytest.raises(ValueError):
        editing_grid(40, 0.0)


def test_sampling_seeds_share_noise_across_samplers():
    a, la = noise_and_labels(3, 20)
    b, lb = noise_and_labels(3, 20)
    assert torch.equal(a, b) and torch.equal(la, lb) and la.tolist()[:11] == list(range(10)) + [0]
    assert not torch.equal(a, noise_and_labels(4, 20)[0])
    assert gamma_key(0.5) == "bdia_g0p5" and gamma_key(1.0) == "bdia_g1"


def test_bdia_edm_gamma_zero_is_heun_at_the_same_nfe():
    from common.diffusion import heun_edm
    from papers.bdia import bdia_edm

    toy = LinearEpsModel(VPSchedule(), dim=4)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = time_grid(8, "edm")
    toy.nfe = 0
    heun = heun_edm(toy, x, ts)
    nfe_heun, toy.nfe = toy.nfe, 0
    assert torch.allclose(bdia_edm(toy, x, ts, None, 0.0), heun, atol=1e-12, rtol=0)
    assert toy.nfe == nfe_heun
    out = bdia_edm(toy, x, ts, None, 1.0)
    assert torch.isfinite(out).all() and not torch.allclose(out, heun)


def test_class_edit_with_the_same_label_is_the_round_trip(toy):
    from papers.bdia import class_edit, per_digit_psnr, per_digit_rmse, target_labels

    model, x0 = toy, _x0()
    ts = time_grid(10, "uniform_t")
    for method in ("bdia", "edict"):
        out = class_edit(model, x0, ts, None, None, method)
        assert (out - x0).abs().max() < 1e-9
    assert torch.allclose(class_edit(model, x0, ts, None, None, "ddim"), ddim_round_trip(model, x0, ts))
    assert per_digit_rmse(x0, x0).max() == 0 and (per_digit_psnr(x0, x0 + 0.2) > 0).all()
    assert torch.equal(target_labels(torch.tensor([0, 9, 3])), torch.tensor([1, 0, 4]))
    with pytest.raises(ValueError):
        class_edit(model, x0, ts, None, None, "nope")
