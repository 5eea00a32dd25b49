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
    # rounding errors are amplified by about (1/gamma) per inversion step (see the README)
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
