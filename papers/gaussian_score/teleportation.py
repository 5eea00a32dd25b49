r"""Analytical teleportation (Wang & Vastola, arXiv 2412.09726).

The Gaussian PF-ODE has a closed form
(:meth:`common.diffusion.twins.GaussianTwin.ode_solution`), so the first k = floor(f N) steps of an N-step
grid can be replaced by one jump x_{t_k} = Phi_Gauss(x_{t_0}; t_0 -> t_k), after which the sampler
(EDM Heun or DPM-Solver++(2M)) continues on ts[k:] (as the official ``edm_analytical_massprod_O2.py``
does: the EDM sampler starts at t_steps[skip] from the analytic state).
"""

from __future__ import annotations

import math

import torch

from common.diffusion.samplers import dpm_solver_pp_2m, heun_edm, time_grid
from common.diffusion.schedule import VPSchedule


def edm_grid(n_steps: int, schedule: VPSchedule, rho: float = 7.0) -> torch.Tensor:
    """The EDM rho=7 grid (Karras et al. 2022, Eq. 5) clipped to the model's range (sigma_e 157.4 -> 0.01),
    as continuous times, with t = 0 appended (the last step returns the denoised x0, as in EDM)."""
    return time_grid(n_steps, kind="edm", t_start=1.0, t_end=schedule.t_min, rho=rho, schedule=schedule,
                     append_zero=True)


SOLVERS = {"heun": heun_edm, "dpmpp2m": dpm_solver_pp_2m}


def skip_steps(fraction: float, n_steps: int) -> int:
    """k = floor(f N): the number of solver steps the Gaussian jump replaces."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    return int(math.floor(fraction * n_steps + 1e-9))


def nfe_of(solver: str, n_steps: int) -> int:
    """Network evaluations of an n-step run ending at t = 0: Heun 2 per step except the final Euler step
    to sigma = 0 (2n - 1, Karras et al. 2022, Algorithm 1); DPM-Solver++(2M) one per step. The Gaussian
    jump costs no network evaluation."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    return 2 * n_steps - 1 if solver == "heun" else n_steps


def teleport_sample(model, gauss_twin, x_T: torch.Tensor, ts: torch.Tensor, skip: int, solver: str = "heun"):
    """Jump with the Gaussian closed form from ts[0] to ts[skip], then run ``solver`` on ts[skip:]."""
    if not 0 <= skip < len(ts) - 2:
        raise ValueError(f"skip must be in [0, {len(ts) - 3}], got {skip}")
    x = x_T if skip == 0 else gauss_twin.ode_solution(x_T, float(ts[0]), float(ts[skip]))
    with torch.no_grad():
        return SOLVERS[solver](model, x, ts[skip:])


def trajectory_rel_rmse(model, gauss_twin, x_T: torch.Tensor, ts: torch.Tensor, upto: int) -> list[float]:
    r"""Relative RMSE between the model's EDM-Heun trajectory on ``ts`` from x_T and the analytic Gaussian
    trajectory from the same x_T, at grid points i = 1..upto:
    :math:`\sqrt{\sum_b \lVert x^{model}_i - x^{Gauss}_i\rVert^2 / \sum_b \lVert x^{model}_i - \alpha_i\mu\rVert^2}`
    (centred on the scaled data mean, so the common mean does not dilute the ratio)."""
    with torch.no_grad():
        _, traj = heun_edm(model, x_T, ts[: upto + 1], return_trajectory=True)
    out = []
    for i in range(1, upto + 1):
        t = float(ts[i])
        x_g = gauss_twin.ode_solution(x_T.double(), float(ts[0]), t)
        x_m = traj[i].double()
        centre = gauss_twin.schedule.alpha(t) * gauss_twin.mu
        out.append(float(torch.sqrt((x_m - x_g).pow(2).sum() / (x_m - centre).pow(2).sum())))
    return out
