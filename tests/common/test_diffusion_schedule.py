"""The VP schedule (discrete, continuous, log-SNR, EDM) and the digits split."""

import pytest
import torch

from common.diffusion.data import DIM, load_digits_split, to_images
from common.diffusion.schedule import VPSchedule


@pytest.fixture(scope="module")
def schedule():
    return VPSchedule()


def test_discrete_steps_are_ddpm_linear(schedule):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(schedule.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=0, atol=1e-15)
    steps = torch.arange(1000)
    assert torch.allclose(schedule.alpha(schedule.t_of_step(steps)) ** 2, schedule.alphas_cumprod, atol=1e-15)


def test_matches_diffusers_alphas_cumprod(schedule):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    assert torch.allclose(schedule.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6)


def test_variance_preserving_and_edm_range(schedule):
    t = torch.linspace(schedule.t_min, 1.0, 257, dtype=torch.float64)
    assert torch.allclose(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)
    assert schedule.edm_sigma(schedule.t_min).item() == pytest.approx(0.0100, abs=5e-5)
    assert schedule.edm_sigma(1.0).item() == pytest.approx(157.4, abs=0.05)
    lam = schedule.lambda_(t)
    assert torch.all(lam[1:] < lam[:-1]), "log-SNR strictly decreases in t"


def test_inverses_round_trip(schedule):
    t = torch.tensor([schedule.t_min, 0.0015, 0.1234, 0.5, 0.777, 1.0], dtype=torch.float64)
    assert torch.allclose(schedule.t_from_lambda(schedule.lambda_(t)), t, atol=1e-12)
    assert torch.allclose(schedule.t_from_edm_sigma(schedule.edm_sigma(t)), t, atol=1e-12)
    assert torch.allclose(schedule.step_of_t(schedule.t_of_step(torch.arange(1000))), torch.arange(1000, dtype=torch.float64))


def test_add_noise_batched_times(schedule):
    x0, noise = torch.ones(3, DIM), torch.zeros(3, DIM)
    t = torch.tensor([0.1, 0.5, 1.0])
    xt = schedule.add_noise(x0, t, noise)
    assert torch.allclose(xt[:, 0], schedule.alpha(t).float())


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError):
        VPSchedule(beta_start=0.02, beta_end=1e-4)
    with pytest.raises(ValueError, match="beta_schedule"):
        VPSchedule(beta_schedule="cosine")


def test_scaled_linear_is_stable_diffusions_schedule():
    """sqrt(beta) linear (diffusers' "scaled_linear"); terminal 1/alpha about 14.6 against 157 for the default."""
    sd = VPSchedule(0.00085, 0.012, beta_schedule="scaled_linear")
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.equal(sd.alphas_cumprod, torch.cumprod(1 - betas, 0))
    assert 1 / sd.alpha(1.0).item() == pytest.approx(14.65, abs=0.01)
    assert 1 / VPSchedule().alpha(1.0).item() == pytest.approx(157.4, abs=0.1)
    t = torch.linspace(sd.t_min, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(sd.t_from_lambda(sd.lambda_(t)), t, atol=1e-12)
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012)
    assert torch.allclose(sd.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6)


def test_config_round_trip_and_default():
    sd = VPSchedule(0.00085, 0.012, beta_schedule="scaled_linear")
    assert torch.equal(VPSchedule.from_config(sd.config()).alphas_cumprod, sd.alphas_cumprod)
    assert torch.equal(VPSchedule.from_config(None).alphas_cumprod, VPSchedule().alphas_cumprod)
    assert VPSchedule().config() == {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                                     "num_train_timesteps": 1000}


def test_digits_split_is_fixed_and_scaled():
    a, b = load_digits_split(), load_digits_split()
    assert a.x_train.shape == (1500, DIM) and a.x_heldout.shape == (297, DIM)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_heldout, b.y_heldout)
    assert a.x_train.min() == -1 and a.x_train.max() == 1
    assert sorted(torch.unique(a.y_train).tolist()) == list(range(10))
    images = to_images(a.x_train[:2])
    assert images.shape == (2, 8, 8) and images.min() >= 0 and images.max() <= 1
