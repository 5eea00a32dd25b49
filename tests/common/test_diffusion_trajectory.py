"""The trajectory recorder: states and eps of a sampler run, checked against the sampler's own callback."""

import pytest
import torch

from common.diffusion.samplers import ddim, dpm_solver_pp_2m, heun_edm, time_grid
from common.diffusion.schedule import VPSchedule
from common.diffusion.trajectory import RecordingModel, record_trajectory
from common.diffusion.views import Denoiser, batch_times

SCHEDULE = VPSchedule()


def toy_eps(x, t, y=None):
    """A smooth non-linear eps (exact arithmetic is not needed, only determinism)."""
    t = batch_times(t, x)[:, None].to(x.dtype)
    return torch.tanh(0.7 * x + t) * (1 + 0.1 * t)


@pytest.fixture
def model():
    return Denoiser(toy_eps, SCHEDULE)


def test_ddim_trajectory_matches_callback_and_output(model):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = time_grid(6, "uniform_t")
    seen = []
    out = ddim(model, x, ts, callback=seen.append)
    model.reset_nfe()
    traj = record_trajectory(ddim, model, x, ts)
    assert model.nfe == 6 and traj.nfe == 6 and traj.n_steps == 6
    assert torch.equal(traj.states[-1], out) and torch.equal(traj.states[0], x)
    eps = traj.eps_at_states()
    for info in seen:  # eps = (x_i - alpha_i x0_i) / sigma_i from the callback's x0
        i = info["i"]
        a, s = SCHEDULE.alpha(ts[i]).item(), SCHEDULE.sigma(ts[i]).item()
        assert torch.allclose(eps[i], (traj.states[i] - a * info["x0"]) / s, atol=1e-12)
        assert torch.equal(traj.states[i + 1], info["x"])


def test_dpm_solver_is_one_call_per_step(model):
    x = torch.randn(3, 4, dtype=torch.float64)
    traj = record_trajectory(dpm_solver_pp_2m, model, x, time_grid(4, "logsnr"))
    assert traj.eps_at_states().shape == (4, 3, 4)


def test_heun_keeps_all_calls_but_refuses_eps_at_states(model):
    x = torch.randn(3, 4, dtype=torch.float64)
    traj = record_trajectory(heun_edm, model, x, time_grid(4, "edm"))
    assert traj.nfe == 8 and traj.eval_states.shape == (8, 3, 4)
    with pytest.raises(ValueError):
        traj.eps_at_states()


def test_recording_model_is_transparent(model):
    rec = RecordingModel(model)
    x = torch.randn(2, 4)
    assert torch.equal(rec.eps(x, 0.5), model.eps(x, 0.5)) and rec.schedule is SCHEDULE
    assert len(rec.calls) == 1 and rec.calls[0][0] == 0.5
    with pytest.raises(ValueError):
        rec.eps(x, torch.tensor([0.3, 0.4]))
