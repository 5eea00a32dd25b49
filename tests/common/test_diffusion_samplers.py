"""Samplers: exactness, convergence order on a Gaussian's closed-form ODE, grids, and diffusers cross-checks."""

import math

import numpy as np
import pytest
import torch

from common.diffusion.data import load_digits_split
from common.diffusion.samplers import (
    ddim,
    ddim_invert,
    ddim_timesteps,
    diffusers_discrete_steps,
    dpm_solver_pp_2m,
    dpm_solver_pp_3m,
    dpm_solver_singlestep,
    euler_edm,
    heun_edm,
    pndm,
    pndm_timesteps,
    reference_ode,
    singlestep_orders,
    time_grid,
    unipc,
)
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser, batch_times

SCHEDULE = VPSchedule()


class LocalGaussian:
    r"""N(mu, Sigma) fitted to the digits train split (+ 1e-2 I): exact eps and the closed-form PF-ODE
    x_t = alpha_t mu + U diag(sqrt((alpha_t^2 lam_k + sigma_t^2) / (alpha_s^2 lam_k + sigma_s^2))) U^T (x_s - alpha_s mu)."""

    def __init__(self, ridge=1e-2):
        x = load_digits_split().x_train.double()
        self.mu = x.mean(0)
        self.lam, self.U = torch.linalg.eigh(torch.cov(x.T) + ridge * torch.eye(64, dtype=torch.float64))
        self.schedule = SCHEDULE

    def eps(self, x, t, y=None):
        t = batch_times(t, x)
        a, s = SCHEDULE.alpha(t)[:, None], SCHEDULE.sigma(t)[:, None]
        z = (x.double() - a * self.mu) @ self.U
        return (s * (z / (a**2 * self.lam + s**2)) @ self.U.T).to(x.dtype)

    def ode_solution(self, x, t_from, t_to):
        a0, s0 = SCHEDULE.alpha(t_from).item(), SCHEDULE.sigma(t_from).item()
        a1, s1 = SCHEDULE.alpha(t_to).item(), SCHEDULE.sigma(t_to).item()
        z = (x - a0 * self.mu) @ self.U
        return a1 * self.mu + (z * torch.sqrt((a1**2 * self.lam + s1**2) / (a0**2 * self.lam + s0**2))) @ self.U.T


@pytest.fixture(scope="module")
def gaussian():
    return Denoiser(LocalGaussian().eps, SCHEDULE), LocalGaussian()


@pytest.fixture(scope="module")
def x_start(gaussian):
    _, g = gaussian
    noise = torch.randn(16, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return SCHEDULE.alpha(0.8).item() * g.mu + SCHEDULE.sigma(0.8).item() * noise


def point_mass_model(mu):
    """Data = one point mu: eps = (x - alpha mu) / sigma, x0 prediction constant = mu."""

    def eps(x, t, y=None):
        t = batch_times(t, x)
        return (x - SCHEDULE.alpha(t)[:, None] * mu) / SCHEDULE.sigma(t)[:, None]

    return Denoiser(eps, SCHEDULE)


# --- exactness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [ddim, dpm_solver_pp_2m, dpm_solver_pp_3m, unipc, dpm_solver_singlestep])
def test_exponential_integrators_exact_for_point_mass(sampler):
    """DDIM and DPM-Solver++ integrate the linear part exactly: with a constant x0 prediction they are exact."""
    mu = torch.linspace(-1, 1, 64, dtype=torch.float64)
    model = point_mass_model(mu)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sampler(model, x, time_grid(3, "uniform_t", 0.9, 0.02))
    s0, s1 = SCHEDULE.sigma(0.9).item(), SCHEDULE.sigma(0.02).item()
    a0, a1 = SCHEDULE.alpha(0.9).item(), SCHEDULE.alpha(0.02).item()
    assert torch.allclose(out, a1 * mu + (s1 / s0) * (x - a0 * mu), atol=1e-12)
    assert torch.allclose(sampler(model, x, time_grid(3, "uniform_t", 0.9, 0.02, append_zero=True)), mu.expand(4, 64), atol=1e-12)


def test_reference_ode_matches_closed_form(gaussian, x_start):
    model, g = gaussian
    expected = g.ode_solution(x_start, 0.8, 0.05)
    for variable in ("lambda", "edm"):
        out = reference_ode(model, x_start, 0.8, 0.05, rtol=1e-9, atol=1e-9, variable=variable)
        assert out.dtype == torch.float64
        assert (out - expected).abs().max() < 1e-7


def test_ddim_inversion_converges_to_exact_inverse(gaussian, x_start):
    """DDIM inversion is a first-order solver of the ODE run backwards: error to the exact x_T halves with 2x steps."""
    model, g = gaussian
    x0 = g.ode_solution(x_start, 0.8, 0.05)
    errors = []
    for n in (50, 100, 200):
        ts = time_grid(n, "logsnr", 0.8, 0.05).flip(0)
        errors.append(((ddim_invert(model, x0, ts) - x_start) ** 2).mean().sqrt().item())
    assert errors[2] < 0.01
    assert 1.8 < errors[0] / errors[1] < 2.2 and 1.8 < errors[1] / errors[2] < 2.2


# --- convergence order ---------------------------------------------------------------------------------


def observed_order(sampler, gaussian, x_start, kind, ns=(20, 40, 80), **kwargs):
    model, g = gaussian
    exact = g.ode_solution(x_start, 0.8, 0.05)
    errors = [((sampler(model, x_start, time_grid(n, kind, 0.8, 0.05), **kwargs) - exact) ** 2).mean().sqrt().item() for n in ns]
    slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
    return -slope, errors


@pytest.mark.parametrize(
    "sampler, kind, order, kwargs",
    [
        (ddim, "logsnr", 1, {}),
        (dpm_solver_pp_2m, "logsnr", 2, {"lower_order_final": False}),
        (euler_edm, "edm", 1, {}),
        (heun_edm, "edm", 2, {}),
    ],
    ids=["ddim", "dpm_solver_pp_2m", "euler_edm", "heun_edm"],
)
def test_convergence_order_on_gaussian(gaussian, x_start, sampler, kind, order, kwargs):
    measured, errors = observed_order(sampler, gaussian, x_start, kind, **kwargs)
    assert abs(measured - order) < 0.15, f"order {measured:.2f} (errors {errors})"


@pytest.mark.parametrize(
    "kwargs, order",
    [
        ({"order": 1, "corrector": False}, 1),
        ({"order": 1}, 2),
        ({"order": 2, "corrector": False}, 2),
        ({"order": 2}, 3),
        ({"order": 2, "variant": "bh1"}, 3),
        ({"order": 3}, 4),
    ],
    ids=["unip1", "unipc1", "unip2", "unipc2_bh2", "unipc2_bh1", "unipc3"],
)
def test_unipc_corrector_raises_the_order(gaussian, x_start, kwargs, order):
    """Zhao et al. 2023, Theorem 3.1 / Corollary: UniP-p has order p, and UniC adds one (no extra NFE)."""
    measured, errors = observed_order(unipc, gaussian, x_start, "logsnr", lower_order_final=False, **kwargs)
    assert abs(measured - order) < 0.15, f"order {measured:.2f} (errors {errors})"


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm, solver_type", [("dpmsolver", "midpoint"), ("dpmsolver", "heun"),
                                                    ("dpmsolver++", "midpoint"), ("dpmsolver++", "heun")])
def test_singlestep_dpm_solver_order(gaussian, x_start, order, algorithm, solver_type):
    """Lu et al. 2022a, Theorem 3.2: DPM-Solver-k converges with order k (in NFE; grids of 24-96 points)."""
    measured, errors = observed_order(dpm_solver_singlestep, gaussian, x_start, "logsnr", ns=(24, 48, 96),
                                      lower_order_final=False, order=order, algorithm=algorithm, solver_type=solver_type)
    assert abs(measured - order) < 0.15, f"order {measured:.2f} (errors {errors})"


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms_skip_prk", "prk_plms"])
def test_pndm_order(gaussian, skip_prk_steps):
    """PNDM's PLMS is Adams-Bashforth-4 in EDM sigma (the DDIM transfer integrates dx_e/dsigma_e = eps exactly
    for a constant eps): on a grid uniform in sigma_e its observed order climbs towards 4 after the
    lower-order warm-up (measured 3.58 on 20-80 steps, 3.76 on 40-160, both variants); its fixed weights
    ignore the step ratios, so on a smooth non-uniform grid (uniform in t, as diffusers') it is second order
    (measured 1.93 with the improved-Euler warm-up, 2.00 with pseudo Runge-Kutta)."""
    _, g = gaussian
    noise = torch.randn(16, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = SCHEDULE.alpha(0.5).item() * g.mu + SCHEDULE.sigma(0.5).item() * noise
    exact = g.ode_solution(x, 0.5, 0.2)
    model = Denoiser(g.eps, SCHEDULE)
    ns = (20, 40, 80)
    for grid, low, high in [(dict(kind="edm", rho=1.0), 3.3, 4.2), (dict(kind="uniform_t"), 1.85, 2.15)]:
        errors = [((pndm(model, x, time_grid(n, t_start=0.5, t_end=0.2, **grid), skip_prk_steps=skip_prk_steps) - exact) ** 2)
                  .mean().sqrt().item() for n in ns]
        measured = -np.polyfit(np.log(ns), np.log(errors), 1)[0]
        assert low < measured < high, f"{grid}: order {measured:.2f} (errors {errors})"


def test_pndm_nfe_and_trajectory(gaussian, x_start):
    """Improved-Euler warm-up: n + 1 NFE; pseudo Runge-Kutta warm-up: three 4-NFE steps, n + 9 NFE."""
    model, _ = gaussian
    ts = time_grid(6, "uniform_t", 0.8, 0.05)
    for skip_prk_steps, nfe in [(True, 7), (False, 15)]:
        model.reset_nfe()
        out, traj = pndm(model, x_start, ts, return_trajectory=True, skip_prk_steps=skip_prk_steps)
        assert model.nfe == nfe and len(traj) == 7 and torch.equal(traj[-1], out) and torch.equal(traj[0], x_start)
    with pytest.raises(ValueError):
        pndm(model, x_start, time_grid(3, "uniform_t", 0.8, 0.05))  # pseudo Runge-Kutta needs 4 steps


def test_singlestep_orders():
    assert singlestep_orders(6, 3) == [1, 2, 3, 1, 2, 1] and singlestep_orders(7, 3) == [1, 2, 3, 1, 2, 3, 1]
    assert singlestep_orders(8, 3) == [1, 2, 3, 1, 2, 3, 1, 2] and singlestep_orders(5, 2, final_zero=True) == [1, 2, 1, 2, 1]
    assert singlestep_orders(6, 2) == [1, 2, 1, 2, 1, 1] and singlestep_orders(6, 3, lower_order_final=False) == [1, 2, 3] * 2
    with pytest.raises(ValueError):
        singlestep_orders(7, 3, lower_order_final=False)
    diffusers = pytest.importorskip("diffusers")
    for n in range(3, 13):
        for order in (1, 2, 3):
            sched = diffusers.DPMSolverSinglestepScheduler(solver_order=order, lower_order_final=True,
                                                           final_sigmas_type="sigma_min")
            assert singlestep_orders(n, order) == sched.get_order_list(n)


def test_dpm_solver_pp_3m_beats_2m(gaussian, x_start):
    """3M's third-order steps shrink the error below 2M's at every n; its first (Euler) step keeps the
    asymptotic global order at 2, as in diffusers (the observed slope on 20-80 steps is between 2 and 3)."""
    m3, e3 = observed_order(dpm_solver_pp_3m, gaussian, x_start, "logsnr", lower_order_final=False)
    m2, e2 = observed_order(dpm_solver_pp_2m, gaussian, x_start, "logsnr", lower_order_final=False)
    assert all(a < 0.7 * b for a, b in zip(e3, e2, strict=True)), (e3, e2)
    assert 1.85 < m3 < 3.15, m3


# --- NFE, trajectories, grids ----------------------------------------------------------------------------


def test_nfe_and_trajectory(gaussian, x_start):
    model, _ = gaussian
    ts = time_grid(6, "edm", 0.8, 0.05)
    for sampler, nfe in [(ddim, 6), (dpm_solver_pp_2m, 6), (dpm_solver_pp_3m, 6), (unipc, 6), (dpm_solver_singlestep, 6),
                         (euler_edm, 6), (heun_edm, 12)]:
        model.reset_nfe()
        out, traj = sampler(model, x_start, ts, return_trajectory=True)
        assert model.nfe == nfe and len(traj) == 7 and torch.equal(traj[-1], out) and torch.equal(traj[0], x_start)
    model.reset_nfe()
    heun_edm(model, x_start, time_grid(6, "edm", 0.8, 0.05, append_zero=True))
    assert model.nfe == 13  # Karras et al.: the final step to sigma = 0 is an Euler step


def test_time_grids():
    for kind in ("uniform_t", "logsnr", "edm"):
        ts = time_grid(10, kind)
        assert ts.dtype == torch.float64 and len(ts) == 11 and ts[0] == 1.0 and ts[-1] == SCHEDULE.t_min
        assert torch.all(ts[1:] < ts[:-1])
    lam = SCHEDULE.lambda_(time_grid(8, "logsnr"))
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(8), atol=1e-9)
    with pytest.raises(ValueError):
        time_grid(10, "cosine")
    with pytest.raises(ValueError):
        ddim(None, torch.zeros(1, 64), torch.tensor([0.1, 0.5]))  # increasing times for a sampler


def test_diffusers_timesteps_match():
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    for n in (5, 10, 25, 50):
        for spacing in ("leading", "trailing", "linspace"):
            ddim_s = diffusers.DDIMScheduler(**cfg, timestep_spacing=spacing)
            ddim_s.set_timesteps(n)
            assert np.array_equal(diffusers_discrete_steps(n, spacing), ddim_s.timesteps.numpy())
            dpm_s = diffusers.DPMSolverMultistepScheduler(**cfg, timestep_spacing=spacing)
            dpm_s.set_timesteps(n)
            assert np.array_equal(diffusers_discrete_steps(n, spacing, scheduler="dpm_solver"), dpm_s.timesteps.numpy())
    ts = ddim_timesteps(10, "trailing", final="zero")
    assert torch.allclose(ts[:-1], (torch.from_numpy(diffusers_discrete_steps(10, "trailing")).double() + 1) / 1000.0) and ts[-1] == 0


# --- diffusers cross-check on the pretrained model ----------------------------------------------------


def run_diffusers(scheduler, model, x, y):
    for k in scheduler.timesteps:
        x = scheduler.step(model.eps(x, float(SCHEDULE.t_of_step(int(k))), y), k, x).prev_sample
    return x


@pytest.fixture(scope="module")
def pretrained():
    from common.diffusion.model import load_digits_eps

    return load_digits_eps("ci")


@pytest.fixture(scope="module")
def pretrained64():
    from common.diffusion.model import load_digits_eps

    return load_digits_eps("ci", dtype=torch.float64)


@pytest.mark.parametrize("spacing, set_alpha_to_one", [("leading", False), ("trailing", True)])
def test_ddim_matches_diffusers(pretrained, spacing, set_alpha_to_one):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                    clip_sample=False, set_alpha_to_one=set_alpha_to_one, timestep_spacing=spacing)
    sched.set_timesteps(10)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    y = torch.arange(32) % 10
    with torch.no_grad():
        ours = ddim(pretrained, x, ddim_timesteps(10, spacing, final="zero" if set_alpha_to_one else "t_min"), y)
        theirs = run_diffusers(sched, pretrained, x, y)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("spacing, final", [("trailing", "sigma_min"), ("linspace", "zero"), ("leading", "sigma_min")])
def test_dpm_solver_pp_2m_matches_diffusers(pretrained, spacing, final):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                  beta_end=0.02, algorithm_type="dpmsolver++", solver_order=2,
                                                  timestep_spacing=spacing, final_sigmas_type=final)
    sched.set_timesteps(10)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(6))
    y = torch.arange(32) % 10
    ts = ddim_timesteps(10, spacing, final="zero" if final == "zero" else "t_min", scheduler="dpm_solver")
    with torch.no_grad():
        ours = dpm_solver_pp_2m(pretrained, x, ts, y)
        theirs = run_diffusers(sched, pretrained, x, y)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("n, spacing, final", [(10, "trailing", "sigma_min"), (10, "linspace", "zero"),
                                               (10, "leading", "sigma_min"), (20, "linspace", "zero")])
def test_dpm_solver_pp_3m_matches_diffusers(pretrained, n, spacing, final):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                  beta_end=0.02, algorithm_type="dpmsolver++", solver_order=3,
                                                  timestep_spacing=spacing, final_sigmas_type=final)
    sched.set_timesteps(n)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(6))
    y = torch.arange(32) % 10
    ts = ddim_timesteps(n, spacing, final="zero" if final == "zero" else "t_min", scheduler="dpm_solver")
    with torch.no_grad():
        ours = dpm_solver_pp_3m(pretrained, x, ts, y)
        theirs = run_diffusers(sched, pretrained, x, y)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("n, spacing, final", [(5, "linspace", "zero"), (10, "trailing", "sigma_min"),
                                               (20, "leading", "sigma_min")])
def test_unipc_matches_diffusers(pretrained, order, variant, n, spacing, final):
    """Float32 on both sides; 2e-5 covers the rounding of 5-20 steps (measured 2e-6 to 1.1e-5)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                              beta_end=0.02, solver_order=order, solver_type=variant,
                                              timestep_spacing=spacing, final_sigmas_type=final)
    sched.set_timesteps(n)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(8))
    y = torch.arange(32) % 10
    ts = ddim_timesteps(n, spacing, final="zero" if final == "zero" else "t_min", scheduler="dpm_solver")
    with torch.no_grad():
        ours = unipc(pretrained, x, ts, y, order=order, variant=variant)
        theirs = run_diffusers(sched, pretrained, x, y)
    assert torch.isfinite(ours).all()
    if variant == "bh1" and final == "zero":
        # diffusers multiplies B(h) = -inf by a zero residual on the last (first-order) step: NaN there
        assert torch.isnan(theirs).any()
        return
    assert (ours - theirs).abs().max() <= 2e-5


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm, solver_type, final", [
    ("dpmsolver", "midpoint", "sigma_min"), ("dpmsolver", "heun", "sigma_min"),
    ("dpmsolver++", "midpoint", "zero"), ("dpmsolver++", "heun", "sigma_min")])
@pytest.mark.parametrize("n", [6, 10])
def test_dpm_solver_singlestep_matches_diffusers(pretrained, order, algorithm, solver_type, final, n):
    """Float32 on both sides, diffusers' grid coefficients in float32: noise prediction multiplies x by
    alpha_t / alpha_s (large near t = 1), so its agreement is relative (measured <= 1.9e-5 of max |x|; the
    coarse midpoint runs reach |x| ~ 260: DPM-Solver-3 with 6 NFE diverges in both implementations)."""
    diffusers = pytest.importorskip("diffusers")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates algorithm_type="dpmsolver"
        sched = diffusers.DPMSolverSinglestepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                       beta_end=0.02, solver_order=order, algorithm_type=algorithm,
                                                       solver_type=solver_type, final_sigmas_type=final,
                                                       lower_order_final=True)
    sched.set_timesteps(n)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(9))
    y = torch.arange(32) % 10
    ts = ddim_timesteps(n, "linspace", final="zero" if final == "zero" else "t_min", scheduler="dpm_solver")
    with torch.no_grad():
        ours = dpm_solver_singlestep(pretrained, x, ts, y, order=order, algorithm=algorithm, solver_type=solver_type)
        theirs = run_diffusers(sched, pretrained, x, y)
    scale = max(1.0, theirs.abs().max().item()) if algorithm == "dpmsolver" else 1.0
    assert (ours - theirs).abs().max() <= (6e-5 if algorithm == "dpmsolver" else 2e-5) * scale


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms_skip_prk", "prk_plms"])
@pytest.mark.parametrize("n, spacing, steps_offset, final", [(10, "leading", 0, "t_min"), (10, "leading", 1, "t_min"),
                                                             (20, "trailing", 0, "zero"), (25, "leading", 1, "zero")])
def test_pndm_matches_diffusers(pretrained64, skip_prk_steps, n, spacing, steps_offset, final):
    """PNDMScheduler (epsilon prediction) on the float64 digits model and the same noise: <= 1e-5 with its stock
    float32 alphas_cumprod (measured 2.0e-6 to 5.9e-6, as DDIM's 2.3e-6 on this model), <= 1e-10 once they are
    replaced by ours in float64 (measured 5e-15 to 1.4e-13: the same algorithm). On the float32 model the
    transfer's cancellation near t = 1 (x times sqrt(abar_s/abar_t) minus a nearly equal eps term), amplified
    by the Runge-Kutta/Adams sums, leaves up to 7.8e-5 of float32 rounding on either side.
    ``(25, "leading", 1)`` with ``skip_prk_steps=True`` is Stable Diffusion's configuration."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                    skip_prk_steps=skip_prk_steps, set_alpha_to_one=final == "zero",
                                    timestep_spacing=spacing, steps_offset=steps_offset)
    sched.set_timesteps(n)
    assert len(sched.timesteps) == (n + 1 if skip_prk_steps else n + 9)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    y = torch.arange(32) % 10
    ts = pndm_timesteps(n, spacing, steps_offset, final)
    with torch.no_grad():
        ours = pndm(pretrained64, x, ts, y, skip_prk_steps=skip_prk_steps)
        theirs = run_diffusers(sched, pretrained64, x, y)
        sched.set_timesteps(n)
        sched.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if final == "zero" else SCHEDULE.alphas_cumprod[0]
        theirs64 = run_diffusers(sched, pretrained64, x, y)
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - theirs64).abs().max() <= 1e-10


def test_pndm_timesteps():
    diffusers = pytest.importorskip("diffusers")
    for n in (4, 10, 25, 50):
        for spacing, offset in [("leading", 0), ("leading", 1), ("trailing", 0)]:
            sched = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_schedule="linear", skip_prk_steps=True,
                                            timestep_spacing=spacing, steps_offset=offset)
            sched.set_timesteps(n)
            steps = sched.timesteps.numpy()
            listed = np.concatenate([steps[:1], steps[2:]])  # the improved-Euler step lists t_1 twice
            ts = pndm_timesteps(n, spacing, offset)
            assert torch.allclose(ts[:-1], SCHEDULE.t_of_step(torch.from_numpy(listed.copy()))) and ts[-1] == SCHEDULE.t_min
    with pytest.raises(ValueError):
        pndm_timesteps(10, "linspace")
    with pytest.raises(ValueError):
        pndm_timesteps(7, "trailing")


def test_samplers_agree_on_pretrained_model(pretrained):
    """Sanity: on the real model, 50-step DPM-Solver++(2M) and Heun land close to each other (float32)."""
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a = dpm_solver_pp_2m(pretrained, x, time_grid(50, "logsnr"), torch.arange(16) % 10)
        b = heun_edm(pretrained, x, time_grid(50, "edm"), torch.arange(16) % 10)
    assert math.isfinite(a.abs().max().item()) and (a - b).pow(2).mean().sqrt() < 0.05
