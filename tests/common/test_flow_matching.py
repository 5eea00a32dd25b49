import math

import pytest
import torch
from torch import nn

from common.flow_matching import (
    FlowView,
    MACCounter,
    TrainConfig,
    flow_matching_loss,
    interpolate,
    learning_rate,
    linear_macs,
    sample,
    sample_time,
    train,
    velocity_target,
)


def test_path_endpoints_and_velocity():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.equal(interpolate(x, eps, 0.0), x)
    assert torch.equal(interpolate(x, eps, 1.0), eps)
    # the path is linear in t with derivative eps - x (finite difference is exact up to rounding)
    t, h = torch.full((5,), 0.3), 1e-3
    fd = (interpolate(x.double(), eps.double(), t.double() + h) - interpolate(x.double(), eps.double(), t.double())) / h
    assert torch.allclose(fd, velocity_target(x, eps).double(), atol=1e-9)


def test_loss_zero_for_exact_velocity_and_known_value():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    t = sample_time(4, g)

    # an oracle that knows (x, eps) returns the target exactly
    assert flow_matching_loss(lambda xt, tt, y: eps - x, x, t, eps).item() == 0.0
    # the zero predictor's loss is the mean squared target
    assert math.isclose(flow_matching_loss(lambda xt, tt, y: torch.zeros_like(xt), x, t, eps).item(),
                        (eps - x).pow(2).mean().item(), rel_tol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError):
        sample_time(3, torch.Generator(), 0.5, 0.5)
    with pytest.raises(ValueError):
        linear_macs(-1, 2)


def test_euler_is_exact_for_the_straight_path_of_a_point_mass():
    # data = a single point mu: the optimal velocity at (x_t, t) is (x_t - mu) / t, whose flow is a straight line,
    # so one Euler step from t = 1 lands exactly on mu; FlowView maps it into common.diffusion.flow's FM time.
    mu = torch.tensor([[0.5, -2.0, 1.0]], dtype=torch.float64)

    def v(x, t, y):
        return (x - mu) / t[:, None]

    noise = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for n in (1, 4):
        assert torch.allclose(sample(v, noise, n_steps=n), mu.expand(6, 3), atol=1e-12)
    assert torch.allclose(sample(v, noise, n_steps=3, method="midpoint"), mu.expand(6, 3), atol=1e-12)
    with pytest.raises(ValueError):
        sample(v, noise, method="rk4")


def test_flowview_sign_and_time():
    seen = {}

    def v(x, t, y):
        seen["t"] = t
        return torch.ones_like(x)

    u = FlowView(v).flow_velocity(torch.zeros(2, 3), torch.tensor(0.25, dtype=torch.float64))
    assert torch.equal(u, -torch.ones(2, 3))
    assert torch.allclose(seen["t"], torch.full((2,), 0.75))


def test_euler_matches_handwritten_loop():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)

    def v(x, t, y):
        return net(torch.cat([x, t[:, None]], 1))

    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    x = noise.clone()
    ts = torch.linspace(1, 0, 5, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(ts[:-1], ts[1:], strict=True):
            x = x + float(b - a) * v(x, torch.full((5,), float(a)), None)
    assert torch.allclose(sample(v, noise, n_steps=4), x, atol=1e-6)


def test_trainer_is_seeded_and_learns():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 0.1 + torch.tensor([1.0, -1.0])

    def run(seed):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

        def loss_fn(m, xb, yb, g):
            t = sample_time(len(xb), g)
            eps = torch.randn(xb.shape, generator=g)
            loss = flow_matching_loss(lambda xt, tt, y: m(torch.cat([xt, tt[:, None]], 1)), xb, t, eps)
            return loss, {"fm": loss.detach()}

        return net, train(net, loss_fn, x, None, TrainConfig(n_iters=150, batch_size=32, lr=1e-2, seed=seed))

    a, ra = run(0)
    b, rb = run(0)
    assert ra.losses == rb.losses and ra.logs["fm"] == ra.losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert sum(ra.losses[-20:]) < sum(ra.losses[:20])


def test_learning_rate_schedule():
    cfg = TrainConfig(n_iters=100, lr=1.0, warmup=10)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_mac_counter_matches_analytic_and_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    net = nn.Sequential(nn.Linear(7, 11), nn.ReLU(), nn.Linear(11, 5))
    x = torch.randn(3, 7)
    with MACCounter(net) as c:
        net(x)
    expected = linear_macs(7, 11, 3) + linear_macs(11, 5, 3)
    assert c.macs == expected and c.flops == 2 * expected
    with FlopCounterMode(display=False) as fc:
        net(x)
    assert fc.get_total_flops() == 2 * expected
    # hooks are removed on exit
    net(x)
    assert c.macs == expected
