"""Every view of common.diffusion.views.Denoiser against closed forms (no trained model needed)."""

import pytest
import torch

from common.diffusion.data import NULL_LABEL
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser, batch_times

SCHEDULE = VPSchedule()


def standard_normal_eps(x, t, y=None):
    """Exact eps for data N(0, I): x_t ~ N(0, I), score = -x, eps = sigma_t x."""
    return SCHEDULE.sigma(batch_times(t, x)).to(x.dtype)[:, None] * x


def label_eps(x, t, y=None):
    """A fake model whose eps is the label (null label when y is None): exposes the guidance arithmetic."""
    y = torch.full((x.shape[0],), NULL_LABEL) if y is None else y
    return torch.zeros_like(x) + y.to(x.dtype)[:, None]


@pytest.fixture
def x():
    return torch.randn(6, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_views_of_standard_normal_data(x):
    model = Denoiser(standard_normal_eps, SCHEDULE)
    t = 0.37
    alpha, sigma = SCHEDULE.alpha(t).item(), SCHEDULE.sigma(t).item()
    assert torch.allclose(model.eps(x, t), sigma * x, atol=1e-14)
    assert torch.allclose(model.x0(x, t), alpha * x, atol=1e-14)  # E[x0 | x_t] = alpha x_t
    assert torch.allclose(model.score(x, t), -x, atol=1e-14)
    assert torch.allclose(model.v(x, t), torch.zeros_like(x), atol=1e-14)  # v = alpha eps - sigma x0 = 0


def test_decomposition_and_v_identities(x):
    """x = alpha x0 + sigma eps and v = alpha eps - sigma x0 for any model, per-sample times too."""
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = Denoiser(lambda x, t, y=None: torch.tanh(x @ w) * (1 + batch_times(t, x)[:, None]), SCHEDULE)
    t = torch.linspace(0.01, 0.99, 6, dtype=torch.float64)
    alpha, sigma = SCHEDULE.alpha(t)[:, None], SCHEDULE.sigma(t)[:, None]
    eps, x0 = model.eps(x, t), model.x0(x, t)
    assert torch.allclose(alpha * x0 + sigma * eps, x, atol=1e-12)
    assert torch.allclose(model.v(x, t), alpha * eps - sigma * x0, atol=1e-12)
    # EDM view: D(x / alpha; sigma / alpha) = x0(x, t)
    assert torch.allclose(model.edm_denoiser(x / alpha, sigma / alpha), x0, atol=1e-9)


def test_flow_velocity_of_standard_normal_data(x):
    """CondOT path xbar = r x0 + (1-r) eps with x0, eps ~ N(0, I): E[x0 - eps | xbar] = (2r - 1) / (r^2 + (1-r)^2) xbar."""
    model = Denoiser(standard_normal_eps, SCHEDULE)
    for r in (0.05, 0.3, 0.5, 0.9):
        expected = (2 * r - 1) / (r**2 + (1 - r) ** 2) * x
        assert torch.allclose(model.flow_velocity(x, r), expected, atol=1e-10)


def test_flow_time_round_trip_and_errors():
    model = Denoiser(standard_normal_eps, SCHEDULE)
    t = torch.tensor([0.002, 0.3, 0.9], dtype=torch.float64)
    r = model.flow_r_of_t(t)
    t_back, scale = model.flow_time_and_scale(r)
    assert torch.allclose(t_back, t, atol=1e-12)
    assert torch.allclose(scale * SCHEDULE.alpha(t), r, atol=1e-12)  # s_r alpha_{t_r} = r
    with pytest.raises(ValueError, match="flow time"):
        model.flow_time_and_scale(torch.tensor([0.0]))


def test_guidance_and_nfe_counting(x):
    model = Denoiser(label_eps, SCHEDULE)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.equal(model.eps(x, 0.5, y)[:, 0], y.double())
    assert torch.equal(model.eps(x, 0.5)[:, 0], torch.full((6,), 10.0))
    assert model.nfe == 2
    guided = model.with_guidance(3.0)
    assert guided.nfe == 0 and guided.schedule is model.schedule
    assert torch.allclose(guided.eps(x, 0.5, y)[:, 0], 10 + 3.0 * (y.double() - 10))  # eps_u + w (eps_c - eps_u)
    assert guided.nfe == 1  # the (conditional, unconditional) pair is one batched call
    assert torch.equal(model.with_guidance(1.0).eps(x, 0.5, y), model.eps(x, 0.5, y))
    assert torch.equal(model.with_guidance(0.0).eps(x, 0.5, y), model.eps(x, 0.5))
    assert torch.equal(guided.eps(x, 0.5), model.eps(x, 0.5))  # no label: unconditional
    two = Denoiser(label_eps, SCHEDULE, guidance_scale=2.0, nfe_guided_pairs_count_two=True)
    two.eps(x, 0.5, y)
    assert two.nfe == 2 and two.reset_nfe() == 2 and two.nfe == 0


def test_dtype_and_time_shapes(x):
    model = Denoiser(standard_normal_eps, SCHEDULE)
    assert model.x0(x.float(), 0.5).dtype == torch.float32
    assert model.x0(x, torch.tensor(0.5)).dtype == torch.float64
    with pytest.raises(ValueError, match="shape"):
        model.eps(x, torch.ones(3) * 0.5)
