"""SD's DDIM / DPM-Solver grids mapped by log-SNR (common.diffusion.grids), against diffusers' schedulers."""

import pytest
import torch

from common.diffusion import ddim, dpm_solver_pp_2m, load_digits_eps
from common.diffusion.grids import (
    SD15_SCHEDULER_CONFIG,
    SDXL_SCHEDULER_CONFIG,
    sd_alphas_cumprod,
    sd_grid,
    sd_lambdas,
    sd_timesteps,
)
from common.diffusion.schedule import VPSchedule


@pytest.fixture(scope="module")
def model():
    return load_digits_eps("ci")


def _diffusers_loop(scheduler, model, x, y, ts):
    """diffusers' scheduler on SD's schedule; the model is queried at the mapped time of each timestep."""
    for i, k in enumerate(scheduler.timesteps):
        x = scheduler.step(model.eps(x, float(ts[i]), y), k, x).prev_sample
    return x


@pytest.mark.parametrize("config", ["sdxl", "sd15"])
@pytest.mark.parametrize("n", [50, 27, 13])
def test_sd_ddim_grid_matches_diffusers(config, n):
    diffusers = pytest.importorskip("diffusers")
    cfg = SDXL_SCHEDULER_CONFIG if config == "sdxl" else SD15_SCHEDULER_CONFIG
    sched = diffusers.DDIMScheduler.from_config(cfg)
    sched.set_timesteps(n)
    assert torch.equal(sd_timesteps(n), sched.timesteps)
    acp = sched.alphas_cumprod.double()
    theirs = torch.cat([acp[sched.timesteps], sched.final_alpha_cumprod.double().reshape(1)])
    if n == 50:
        assert sched.timesteps[0] == 981 and sched.timesteps[-1] == 1
    lam = 0.5 * torch.log(theirs / (1 - theirs))
    assert torch.allclose(sd_lambdas(n, "ddim"), lam, atol=1e-6)
    # mapped onto our model's schedule, the log-SNR (hence alpha, sigma) is the same
    assert torch.allclose(VPSchedule().lambda_(sd_grid(VPSchedule(), n)), lam, atol=1e-6)


@pytest.mark.parametrize("n", [50, 20])
def test_sd_dpm_grid_matches_diffusers(n):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    sched.set_timesteps(n)
    assert torch.equal(sd_timesteps(n, "dpmpp_2m"), sched.timesteps)
    ts = sd_grid(VPSchedule(), n, "dpmpp_2m")
    assert sched.config.final_sigmas_type == "zero" and ts[-1] == 0.0
    # diffusers' sigmas are sigma/alpha = exp(-lambda)
    assert torch.allclose(VPSchedule().lambda_(ts[:-1]), -torch.log(sched.sigmas[:-1].double()), atol=1e-5)


def test_sd_grid_sampling_equals_diffusers(model):
    diffusers = pytest.importorskip("diffusers")
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(7))
    y = torch.arange(16) % 10
    for n in (50, 17):
        ts = sd_grid(model.schedule, n)
        sched = diffusers.DDIMScheduler.from_config(SDXL_SCHEDULER_CONFIG)
        sched.set_timesteps(n)
        with torch.no_grad():
            assert (ddim(model, x, ts, y) - _diffusers_loop(sched, model, x, y, ts)).abs().max() <= 1e-5
        ts = sd_grid(model.schedule, n, "dpmpp_2m")
        sched = diffusers.DPMSolverMultistepScheduler.from_config(SDXL_SCHEDULER_CONFIG)
        sched.set_timesteps(n)
        with torch.no_grad():
            assert (dpm_solver_pp_2m(model, x, ts, y) - _diffusers_loop(sched, model, x, y, ts)).abs().max() <= 1e-4


def test_sd_grid_shape_and_errors():
    acp = sd_alphas_cumprod()
    assert acp.dtype == torch.float64 and len(acp) == 1000 and torch.all(acp[1:] < acp[:-1])
    ts = sd_grid(VPSchedule(), 50)
    assert len(ts) == 51 and torch.all(ts[1:] < ts[:-1]) and 0 < float(ts[-1]) and float(ts[0]) < 1
    assert len(sd_grid(VPSchedule(), 50, "dpmpp_2m")) == 51
    for bad in (lambda: sd_timesteps(0), lambda: sd_timesteps(501), lambda: sd_timesteps(10, "unipc")):
        with pytest.raises(ValueError):
            bad()
