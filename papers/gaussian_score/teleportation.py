r"""Analytical teleportation (Wang & Vastola, arXiv 2412.09726).

The Gaussian PF-ODE has a closed form
(:meth:`common.diffusion.twins.GaussianTwin.ode_solution`), so the first k steps of an EDM grid can be
replaced by one jump x_{t_k} = Phi_Gauss(x_{t_0}; t_0 -> t_k), after which the sampler
(EDM Heun or DPM-Solver++(2M)) continues on ts[k:] (as the official ``edm_analytical_massprod_O2.py``
does: the EDM sampler starts at t_steps[skip] from the analytic state).

Baselines for the jump (what is Gaussian-specific?): the **mean-only** twin (Sigma = 0: the jump only
rescales around the mean, x_t = alpha_t mu + (sigma_t/sigma_s)(x_s - alpha_s mu)) and the **isotropic**
twin (Sigma = tr(Sigma)/d I). At very high noise all three jumps coincide (every eigenvalue is small against
sigma^2); the covariance matters only once sigma^2 is comparable with the top eigenvalues, near sigma_hi.
Class-conditional sampling uses one Gaussian per class (:class:`common.diffusion.twins.ClassGaussianTwins`).

**Step bookkeeping.** ``edm_grid(N)`` has N EDM steps *plus* the final step to sigma = 0, i.e. N + 1
intervals (19 for N = 18). Heun costs 2 NFE per interval except the final Euler step to sigma = 0, so
2 (N + 1) - 1 = 2N + 1 (37 for N = 18); DPM-Solver++(2M) costs N + 1 (19). Skipping k = floor(f N) steps
skips k of the N + 1 intervals (f = 0.2, N = 18: k = 3 of 19, 16 %).
"""

from __future__ import annotations

import math

import torch

from common.diffusion.samplers import dpm_solver_pp_2m, heun_edm, time_grid
from common.diffusion.schedule import VPSchedule
from common.diffusion.twins import ClassGaussianTwins


def edm_grid(n_steps: int, schedule: VPSchedule, rho: float = 7.0) -> torch.Tensor:
    """The EDM rho=7 grid (Karras et al. 2022, Eq. 5) clipped to the model's range (sigma_e 157.4 -> 0.01),
    as continuous times, with t = 0 appended (the last step returns the denoised x0, as in EDM): n_steps + 2
    times, n_steps + 1 intervals."""
    return time_grid(n_steps, kind="edm", t_start=1.0, t_end=schedule.t_min, rho=rho, schedule=schedule,
                     append_zero=True)


SOLVERS = {"heun": heun_edm, "dpmpp2m": dpm_solver_pp_2m}


def skip_steps(fraction: float, n_steps: int) -> int:
    """k = floor(f N): the number of solver steps the Gaussian jump replaces."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    return int(math.floor(fraction * n_steps + 1e-9))


def skip_to_sigma(ts: torch.Tensor, schedule: VPSchedule, sigma: float) -> int:
    """The first grid index k whose EDM sigma is <= ``sigma`` (the jump lands on the grid there)."""
    sig = [float(schedule.edm_sigma(float(t))) if float(t) > 0 else 0.0 for t in ts]
    for k, s in enumerate(sig):
        if s <= sigma:
            if k == 0 or k >= len(ts) - 2:
                raise ValueError(f"sigma {sigma} gives skip {k}, outside [1, {len(ts) - 3}]")
            return k
    raise ValueError(f"no grid sigma <= {sigma}")


def n_intervals(ts: torch.Tensor) -> int:
    """Number of solver steps on a grid (len(ts) - 1; the final step to t = 0 included)."""
    return len(ts) - 1


def nfe_of(solver: str, n_int: int) -> int:
    """Network evaluations of a run over ``n_int`` intervals ending at t = 0: Heun 2 per interval except the
    final Euler step to sigma = 0 (2 n_int - 1, Karras et al. 2022, Algorithm 1); DPM-Solver++(2M) one per
    interval. The Gaussian jump costs no network evaluation."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if n_int < 1:
        raise ValueError(f"need at least one interval, got {n_int}")
    return 2 * n_int - 1 if solver == "heun" else n_int


def jump(twin, x: torch.Tensor, t_from: float, t_to: float, y=None) -> torch.Tensor:
    """The twin's closed-form PF-ODE map (per class for :class:`ClassGaussianTwins`, which needs y)."""
    if isinstance(twin, ClassGaussianTwins):
        return twin.ode_solution(x, t_from, t_to, y)
    return twin.ode_solution(x, t_from, t_to)


def teleport_sample(model, twin, x_T: torch.Tensor, ts: torch.Tensor, skip: int, solver: str = "heun", y=None):
    """Jump with the twin's closed form from ts[0] to ts[skip], then run ``solver`` on ts[skip:] (labels y)."""
    if not 0 <= skip < len(ts) - 2:
        raise ValueError(f"skip must be in [0, {len(ts) - 3}], got {skip}")
    x = x_T if skip == 0 else jump(twin, x_T, float(ts[0]), float(ts[skip]), y)
    with torch.no_grad():
        return SOLVERS[solver](model, x, ts[skip:], y)


def model_trajectory(model, x_T: torch.Tensor, ts: torch.Tensor, upto: int, y=None) -> list[torch.Tensor]:
    """The model's EDM-Heun states at ts[0..upto] from x_T (float64)."""
    with torch.no_grad():
        _, traj = heun_edm(model, x_T, ts[: upto + 1], y, return_trajectory=True)
    return [z.double() for z in traj]


def trajectory_errors(trajectory, twin, ts: torch.Tensor, centre: torch.Tensor, y=None):
    r"""Per-sample squared distances between the model's states (``trajectory`` from :func:`model_trajectory`)
    and the twin's analytic trajectory from the same x_T, at grid points i = 1..len(trajectory) - 1.

    Returns ``(err, norm)``, each [steps, B]: ``err = ||x^model_i - x^twin_i||^2`` and
    ``norm = ||x^model_i - alpha_i centre||^2`` (``centre``: the data mean [d], or per-sample class means
    [B, d], so the common mean does not dilute the ratio)."""
    x_T = trajectory[0]
    errs, norms = [], []
    for i in range(1, len(trajectory)):
        t = float(ts[i])
        x_g = jump(twin, x_T, float(ts[0]), t, y).double()
        x_m = trajectory[i]
        alpha = twin.schedule.alpha(t)
        errs.append((x_m - x_g).pow(2).sum(-1))
        norms.append((x_m - alpha * centre).pow(2).sum(-1))
    return torch.stack(errs), torch.stack(norms)


def pooled_rel_rmse(err: torch.Tensor, norm: torch.Tensor) -> list[float]:
    """sqrt(sum_b err / sum_b norm) per step (rows of :func:`trajectory_errors`)."""
    return [float(torch.sqrt(e.sum() / n.sum())) for e, n in zip(err, norm, strict=True)]


def trajectory_rel_rmse(model, gauss_twin, x_T: torch.Tensor, ts: torch.Tensor, upto: int, y=None) -> list[float]:
    r"""Relative RMSE between the model's EDM-Heun trajectory on ``ts`` from x_T and the twin's analytic
    trajectory from the same x_T, at grid points i = 1..upto:
    :math:`\sqrt{\sum_b \lVert x^{model}_i - x^{Gauss}_i\rVert^2 / \sum_b \lVert x^{model}_i - \alpha_i\mu\rVert^2}`
    (unconditional twin: centred on the scaled data mean)."""
    traj = model_trajectory(model, x_T, ts, upto, y)
    return pooled_rel_rmse(*trajectory_errors(traj, gauss_twin, ts, gauss_twin.mu, y))


def jump_gap(twin_a, twin_b, x_T: torch.Tensor, t_from: float, t_to: float, centre: torch.Tensor, y=None) -> float:
    r"""How different two twins' jumps are: :math:`\sqrt{\sum_b\lVert J_a - J_b\rVert^2 / \sum_b\lVert J_a -
    \alpha_{t_{to}} c\rVert^2}` (pooled, relative to the jump's own spread around the scaled centre c). When
    it is small no experiment can tell the two twins apart at that skip point."""
    a = jump(twin_a, x_T, t_from, t_to, y).double()
    b = jump(twin_b, x_T, t_from, t_to, y).double()
    alpha = twin_a.schedule.alpha(t_to)
    return float(torch.sqrt((a - b).pow(2).sum() / (a - alpha * centre).pow(2).sum()))


def sample_methods(model, methods: dict, x_T: torch.Tensor, y=None) -> dict:
    """Run every method ``{name: (solver, twin or None, grid, skip)}`` from the same x_T and labels."""
    return {name: teleport_sample(model, twin, x_T, grid, skip, solver, y)
            for name, (solver, twin, grid, skip) in methods.items()}


def method_nfe(methods: dict) -> dict:
    """{name: NFE} for :func:`sample_methods`' spec: the solver's cost on the intervals left after the skip."""
    return {name: nfe_of(solver, n_intervals(grid) - skip) for name, (solver, _, grid, skip) in methods.items()}
