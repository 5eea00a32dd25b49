"""Fast checks of the Bespoke solver: exact answers on a linear ODE, invariants of the parameterisation, the loss."""

import math

import numpy as np
import pytest
import torch

from papers.bespoke_solvers import bespoke as B


class LinearFlow:
    """A stand-in for the FM view: velocity u_t(x) = a x (exact solution x(t) = x0 exp(a (t - t0)))."""

    def __init__(self, a: float):
        self.a = a
        self.calls = 0

    def flow_velocity(self, x, t, y=None):
        self.calls += 1
        return self.a * x


def test_identity_bespoke_equals_midpoint_and_euler():
    model = LinearFlow(-1.3)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for order, base in ((2, B.rk_midpoint), (1, B.rk_euler)):
        solver = B.BespokeSolver(4, order, 0.1, 0.9)
        with torch.no_grad():
            a = solver.solve(model, x)
        b = base(model, x, B.uniform_flow_grid(0.1, 0.9, 4 if order == 2 else 4))
        assert torch.allclose(a, b, atol=1e-14, rtol=0)


def test_scale_time_transform_is_exact_for_a_matching_scale():
    """For u = a x, the scale s_r = exp(-a (t_r - t_0)) makes the transformed ODE constant: dx̄/dr = 0 with a
    matching ṡ = -a ṫ s. With that (consistent) choice Bespoke-RK1 and -RK2 are exact at any n."""
    a, lo, hi, n = -1.7, 0.1, 0.9, 3
    model = LinearFlow(a)
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    for order in (1, 2):
        solver = B.BespokeSolver(n, order, lo, hi)
        g = solver.grid()
        t = g["t"].detach()
        with torch.no_grad():
            solver.raw_log_s.copy_(-a * (t[1:] - lo))
            tdot = torch.full_like(t, hi - lo)
            solver.raw_sdot.copy_(-a * tdot * torch.exp(-a * (t - lo)))
            out = solver.solve(model, x)
        assert torch.allclose(out, x * math.exp(a * (hi - lo)), atol=1e-12, rtol=0)


def test_parameterisation_constraints():
    solver = B.BespokeSolver(5, 2, 0.2, 0.8)
    with torch.no_grad():
        for p in solver.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(1)))
    g = solver.grid()
    t = g["t"].detach()
    assert len(t) == 11 and float(t[0]) == 0.2 and abs(float(t[-1]) - 0.8) < 1e-15
    assert torch.all(t[1:] >= t[:-1])
    assert torch.all(g["tdot"] >= 0) and torch.all(g["s"] > 0) and float(g["s"][0].detach()) == 1.0
    assert solver.n_used_parameters() == 8 * 5 - 1 and B.BespokeSolver(10, 2, 0.2, 0.8).n_used_parameters() == 79
    assert solver.nfe == 10 and B.BespokeSolver(10, 1, 0.2, 0.8).nfe == 10


def test_lipschitz_bound_of_identity_steps():
    """Identity transform: RK2's bound is 1 + hL(1 + hL/2) with h = (hi - lo)/n, RK1's 1 + hL."""
    lo, hi, n, L = 0.1, 0.9, 4, 2.0
    h = (hi - lo) / n
    rk2 = B.BespokeSolver(n, 2, lo, hi).lipschitz(L).detach()
    rk1 = B.BespokeSolver(n, 1, lo, hi).lipschitz(L).detach()
    assert torch.allclose(rk2, torch.full((n,), 1 + h * L * (1 + h * L / 2), dtype=torch.float64))
    assert torch.allclose(rk1, torch.full((n,), 1 + h * L, dtype=torch.float64))


def test_bound_loss_is_positive_and_gradients_flow():
    """The bound loss of the identity transform is positive and gives finite gradients to every parameter
    (Hermite interpolation itself is tested in tests/common/test_diffusion_flow.py)."""
    a, lo, hi = -1.0, 0.1, 0.9
    lambdas = torch.logit(torch.linspace(lo, hi, 200, dtype=torch.float64))
    taus = torch.sigmoid(lambdas)
    x0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xs = x0[None] * torch.exp(a * (taus - lo))[:, None, None]
    dxs = a * xs * (taus * (1 - taus))[:, None, None]
    gt = B.GroundTruth(lambdas, xs, dxs, nfe_rows=0)
    solver = B.BespokeSolver(3, 2, lo, hi)
    loss, parts = B.rmse_bound_loss(solver, LinearFlow(a), gt, dtype=torch.float64)
    assert float(loss.detach()) > 0 and parts["local"].shape == (3,) and float(parts["M"][-1]) == 1.0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in solver.parameters())


def test_training_reduces_the_bound_on_a_linear_flow():
    a, lo, hi = -3.0, 0.1, 0.9
    lambdas = torch.logit(torch.linspace(lo, hi, 400, dtype=torch.float64))
    taus = torch.sigmoid(lambdas)
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xs = x0[None] * torch.exp(a * (taus - lo))[:, None, None]
    dxs = a * xs * (taus * (1 - taus))[:, None, None]
    gt = B.GroundTruth(lambdas, xs, dxs, nfe_rows=0)

    class F64(LinearFlow):
        pass

    solver, log = B.train_bespoke(F64(a), gt, None, 2, 2, n_iter=60, batch_size=8, lr=0.05,
                                  rng=np.random.default_rng(0))
    assert log["loss"][-1] < 0.5 * log["loss"][0]
    assert log["nfe_rows"] == 60 * 4 * 8


def test_errors():
    with pytest.raises(ValueError):
        B.BespokeSolver(0, 2, 0.1, 0.9)
    with pytest.raises(ValueError):
        B.BespokeSolver(3, 3, 0.1, 0.9)
    with pytest.raises(ValueError):
        B.BespokeSolver(3, 2, 0.9, 0.1)
    with pytest.raises(ValueError):
        B.uniform_flow_grid(0.1, 0.9, 0)

