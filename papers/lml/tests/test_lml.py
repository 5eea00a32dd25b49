"""LML: the correction's exact small cases and invariants, the samplers' budgets and exactness, diffusers cross-check."""

import math
from itertools import pairwise

import pytest
import torch

from common.diffusion import ddim
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser, batch_times
from papers.lml.lml import (
    OFFICIAL_LAMBDA,
    correction_flops,
    ddim_lml,
    dpm_solver_multistep,
    dpm_solver_multistep_lml,
    lm_correct,
    multistep_orders,
    select_best,
    solver_grid,
    sweep_grid,
)

SCHEDULE = VPSchedule()


def test_lm_correct_small_case():
    g, prev = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    out = lm_correct(g, prev, lam=0.5, kappa=0.5)  # v = (.5, .5), <g,v> = .5, |v|^2 = .5: g~ = g - v/2 = (.75, -.25)
    expected = torch.tensor([[0.75, -0.25]], dtype=torch.float64) / math.sqrt(0.625)
    assert torch.allclose(out, expected, atol=1e-15)


def test_lm_correct_is_sherman_morrison_then_rescaled():
    gen = torch.Generator().manual_seed(0)
    g, prev = torch.randn(3, 7, generator=gen, dtype=torch.float64), torch.randn(3, 7, generator=gen, dtype=torch.float64)
    lam, kappa = 0.3, 0.4
    out = lm_correct(g, prev, lam, kappa)
    for b in range(3):
        v = kappa * prev[b] + (1 - kappa) * g[b]
        direct = lam * torch.linalg.solve(lam * torch.eye(7, dtype=torch.float64) + torch.outer(v, v), g[b])
        assert torch.allclose(out[b], direct * g[b].norm() / direct.norm(), atol=1e-12)
    assert torch.allclose(out.norm(dim=1), g.norm(dim=1), atol=1e-12)  # the step keeps its length


def test_kappa0_and_large_lambda_are_the_identity_in_float64():
    gen = torch.Generator().manual_seed(1)
    g, prev = torch.randn(4, 3, 8, generator=gen), torch.randn(4, 3, 8, generator=gen)
    for lam in (1e-4, 1e-2, 1.0, 1e3):
        assert (lm_correct(g, prev, lam, 0.0) - g).abs().max() <= 1e-6
        assert (lm_correct(g, None, lam, 0.7) - g).abs().max() <= 1e-6  # first step: v = g
    assert (lm_correct(g, prev, 1e12, 0.5) - g).abs().max() <= 1e-6


def test_official_float32_arithmetic_amplifies_rounding():
    g = torch.randn(4, 3072, generator=torch.Generator().manual_seed(2))  # CIFAR-10's dimension
    def rel(out):
        return ((out.double() - g.double()).norm(dim=1) / g.double().norm(dim=1)).max().item()

    assert rel(lm_correct(g, None, 1e-3, 0.0)) <= 1e-6  # float64 arithmetic: the identity
    assert rel(lm_correct(g, None, 1e-3, 0.0, compute_dtype=None)) > 1e-2  # float32: |g|^2/lam ~ 3e6 amplification
    assert rel(lm_correct(g, None, 1e3, 0.0, compute_dtype=None)) < 1e-5


def test_lm_correct_errors():
    g = torch.ones(2, 3)
    with pytest.raises(ValueError):
        lm_correct(g, None, 0.0, 0.0)
    with pytest.raises(ValueError):
        lm_correct(g, None, 1.0, 1.5)
    with pytest.raises(ValueError):
        lm_correct(g, torch.ones(2, 4), 1.0, 0.5)


def test_multistep_orders():
    assert multistep_orders(5) == [1, 2, 3, 2, 1]
    assert multistep_orders(20) == [1, 2] + [3] * 18
    assert multistep_orders(20, final_zero=True)[-1] == 1
    assert multistep_orders(1) == [1]
    assert multistep_orders(4, order=2) == [1, 2, 2, 1]


def point_mass(mu):
    def eps(x, t, y=None):
        t = batch_times(t, x)
        return (x - SCHEDULE.alpha(t)[:, None] * mu) / SCHEDULE.sigma(t)[:, None]

    return Denoiser(eps, SCHEDULE)


def test_dpm_solver_exact_for_point_mass_and_one_call_per_step():
    mu = torch.linspace(-1, 1, 6, dtype=torch.float64)
    model = point_mass(mu)
    ts = solver_grid(7)
    noise = torch.randn(5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a0, s0 = SCHEDULE.alpha(ts[0]).item(), SCHEDULE.sigma(ts[0]).item()
    a1, s1 = SCHEDULE.alpha(ts[-1]).item(), SCHEDULE.sigma(ts[-1]).item()
    x = a0 * mu + s0 * noise
    for sampler in (dpm_solver_multistep, dpm_solver_multistep_lml, ddim_lml):
        model.reset_nfe()
        out = sampler(model, x, ts) if sampler is dpm_solver_multistep else sampler(model, x, ts, lam=1.0, kappa=0.0)
        assert torch.allclose(out, a1 * mu + s1 * noise, atol=1e-10)
        assert model.reset_nfe() == 7


def test_lml_kappa0_equals_base_solvers_on_a_smooth_model():
    """C0 on a non-trivial model: a linear-Gaussian eps, float64."""
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.1
    model = Denoiser(lambda x, t, y=None: torch.tanh(x + x @ w), SCHEDULE)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = solver_grid(6)
    base_ddim, base_dpm = ddim(model, x, ts), dpm_solver_multistep(model, x, ts)
    scale = max(base_ddim.abs().max().item(), base_dpm.abs().max().item())  # this toy ODE grows to ~250
    for lam in (1e-3, 1.0, 100.0):
        assert (ddim_lml(model, x, ts, lam=lam, kappa=0.0) - base_ddim).abs().max() <= 1e-10 * scale
        assert (dpm_solver_multistep_lml(model, x, ts, lam=lam, kappa=0.0) - base_dpm).abs().max() <= 1e-10 * scale
    assert (ddim_lml(model, x, ts, lam=1e-2, kappa=0.5) - base_ddim).abs().max() > 1e-3 * scale  # kappa > 0 acts


def test_small_lambda_with_kappa_turns_the_step_orthogonal_to_v():
    """The DPM-Solver-3 + LML divergence mechanism: for lambda << |v|^2 and kappa > 0, g' is g's component
    orthogonal to v rescaled to |g|; with consecutive increments nearly parallel that is a ~90 degree turn."""
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(5, 64, generator=gen, dtype=torch.float64)
    prev = g + 0.05 * torch.randn(5, 64, generator=gen, dtype=torch.float64)  # nearly parallel increments
    out = lm_correct(g, prev, lam=1e-9, kappa=0.05)
    v = 0.05 * prev + 0.95 * g
    assert (torch.nn.functional.cosine_similarity(out, v, dim=1).abs() < 1e-6).all()
    assert (torch.nn.functional.cosine_similarity(out, g, dim=1).abs() < 0.05).all()
    assert torch.allclose(out.norm(dim=1), g.norm(dim=1), atol=1e-12)


def test_correction_hook_gets_the_previous_uncorrected_increment():
    """As the official scheduler (prev_noise = the uncorrected increment; None at the first step of a call)."""
    model = Denoiser(lambda x, t, y=None: torch.tanh(x), SCHEDULE)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen = []

    def hook(g, prev):
        seen.append((g.clone(), None if prev is None else prev.clone()))
        return -g  # a correction that would change prev if prev were the corrected increment

    dpm_solver_multistep(model, x, solver_grid(5), correction=hook)
    assert seen[0][1] is None
    for (g_prev, _), (_, prev) in pairwise(seen):
        assert torch.equal(prev, g_prev)
    assert OFFICIAL_LAMBDA[5] == 8e-4 and OFFICIAL_LAMBDA[10] == 8e-4 and OFFICIAL_LAMBDA[20] == 5e-4


def test_selection_helpers_and_flops():
    assert sweep_grid([1, 2], [0.1]) == [(1.0, 0.1), (2.0, 0.1)]
    assert select_best({(1.0, 0.1): 3.0, (2.0, 0.1): float("nan"), (3.0, 0.1): 2.0}) == (3.0, 0.1)
    with pytest.raises(ValueError):
        select_best({})
    assert correction_flops(64) == 712


@pytest.fixture(scope="module")
def pretrained64():
    from common.diffusion.model import load_digits_eps

    return load_digits_eps("ci", dtype=torch.float64), load_digits_eps("ci")


@pytest.mark.parametrize("n", [5, 10, 20])
def test_dpm_solver_3_matches_diffusers(pretrained64, n):
    """Our multistep DPM-Solver-3 (noise prediction) against diffusers' DPMSolverMultistepScheduler(
    algorithm_type="dpmsolver", solver_order=3) on the pretrained model: in float64 (diffusers' sigmas replaced
    by the float64 ones of the same grid) at every n, and as-is in float32 at n = 10 (the common tests' setting)."""
    diffusers = pytest.importorskip("diffusers")
    m64, m32 = pretrained64
    y = torch.arange(32) % 10

    def theirs(model, x):
        sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                      beta_end=0.02, algorithm_type="dpmsolver", solver_order=3,
                                                      timestep_spacing="linspace", final_sigmas_type="sigma_min")
        sched.set_timesteps(n)
        if x.dtype == torch.float64:
            sched.sigmas = SCHEDULE.edm_sigma(solver_grid(n)).to(torch.float64)
        for k in sched.timesteps:
            x = sched.step(model.eps(x, float(SCHEDULE.t_of_step(int(k))), y), k, x).prev_sample
        return x

    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad(), pytest.warns(FutureWarning):
        assert (dpm_solver_multistep(m64, x, solver_grid(n), y) - theirs(m64, x)).abs().max() <= 1e-5
        if n == 10:
            x32 = x.float()
            assert (dpm_solver_multistep(m32, x32, solver_grid(n), y) - theirs(m32, x32)).abs().max() <= 1e-5
