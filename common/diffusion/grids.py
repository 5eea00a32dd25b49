r"""Stable Diffusion's DDIM / DPM-Solver grids mapped onto another VP schedule by log-SNR.

Stable Diffusion samples with ``DDIMScheduler.from_config(pipe.scheduler.config)`` (or
``DPMSolverMultistepScheduler``) of SDXL (SD-1.5 gives the same DDIM grid):

* scaled-linear betas, :math:`\beta_n = (\sqrt{0.00085} + \tfrac{n}{999}(\sqrt{0.012} - \sqrt{0.00085}))^2`,
  :math:`\bar\alpha_n = \prod_{m \le n}(1 - \beta_m)`, n = 0..999;
* "leading" spacing with ``steps_offset = 1``: DDIM with k steps visits the timesteps
  :math:`1 + j\lfloor 1000/k \rfloor`, j = k-1..0 (981, 961, ..., 1 for k = 50) and ends at
  ``final_alpha_cumprod`` = :math:`\bar\alpha_0` (``set_alpha_to_one=False``);
  DPM-Solver(++) visits :math:`1 + j\lfloor 1000/(k+1) \rfloor`, j = k..1 (951, ..., 20 for k = 50) and ends
  at :math:`\sigma = 0` (``final_sigmas_type="zero"``, the last step first order).

A model with its own (e.g. linear-beta) schedule gets each of these noise levels **by log-SNR**,
:math:`\lambda = \tfrac12\log(\bar\alpha / (1 - \bar\alpha))` and :math:`t = \lambda^{-1}_{\text{model}}(\lambda)`
(:func:`sd_grid`): DDIM and DPM-Solver depend on the grid only through :math:`(\alpha_i, \sigma_i)`, so the solver
on the mapped grid is *the same sequence of updates* as diffusers' scheduler on SD's schedule (checked against
diffusers in the unit tests). SD's grid starts at :math:`\bar\alpha_{981} \approx 0.0058`
(:math:`\lambda \approx -2.6`), not at the digits model's :math:`t = 1` (:math:`\lambda \approx -5.1`); a sample
starts from :math:`x_T \sim \mathcal N(0, I)` there, as SD does.

Moved from ``papers/adaptive_diffusion/grids.py`` (which keeps the paper's grid choice and its frozen test).
"""

from __future__ import annotations

import torch

from common.diffusion.schedule import VPSchedule

N_TRAIN = 1000
SD_BETA_START, SD_BETA_END = 0.00085, 0.012
# SDXL's scheduler config (stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json), written
# out so that the tests can build diffusers' schedulers with ``from_config`` offline.
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": SD_BETA_END, "beta_schedule": "scaled_linear",
    "beta_start": SD_BETA_START, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": N_TRAIN,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
# SD-1.5's (runwayml/stable-diffusion-v1-5): no timestep_spacing key, so DDIM takes its default "leading"
# (the same DDIM grid as SDXL) and DPM-Solver its default "linspace" (adaptive_diffusion uses SDXL's, the
# official code's default model).
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_end": SD_BETA_END, "beta_schedule": "scaled_linear",
    "beta_start": SD_BETA_START, "num_train_timesteps": N_TRAIN, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's :math:`\\bar\\alpha_n`, n = 0..999 (scaled-linear betas), float64."""
    return VPSchedule(SD_BETA_START, SD_BETA_END, N_TRAIN, beta_schedule="scaled_linear").alphas_cumprod


def sd_timesteps(n_steps: int, solver: str = "ddim") -> torch.Tensor:
    """diffusers' "leading" integer timesteps with ``steps_offset=1`` (module docstring), decreasing."""
    if not 1 <= n_steps <= N_TRAIN // 2:
        raise ValueError(f"n_steps must lie in [1, {N_TRAIN // 2}], got {n_steps}")
    if solver == "ddim":
        return torch.arange(n_steps - 1, -1, -1) * (N_TRAIN // n_steps) + 1
    if solver == "dpmpp_2m":
        return torch.arange(n_steps, 0, -1) * (N_TRAIN // (n_steps + 1)) + 1
    raise ValueError(f"solver must be 'ddim' or 'dpmpp_2m', got {solver!r}")


def sd_lambdas(n_steps: int, solver: str = "ddim") -> torch.Tensor:
    """Log-SNR of SD's grid: the k timesteps, then the final level (DDIM: alphas_cumprod[0]; DPM: +inf)."""
    acp = sd_alphas_cumprod()
    steps = sd_timesteps(n_steps, solver)
    a = torch.cat([acp[steps], acp[:1]]) if solver == "ddim" else acp[steps]
    lam = 0.5 * torch.log(a / (1.0 - a))
    return lam if solver == "ddim" else torch.cat([lam, torch.tensor([float("inf")], dtype=torch.float64)])


def sd_grid(schedule, n_steps: int, solver: str = "ddim") -> torch.Tensor:
    """SD's k-step grid for ``solver`` mapped onto ``schedule`` by log-SNR (decreasing model times;
    DPM-Solver's grid ends at t = 0, the clean data)."""
    lam = sd_lambdas(n_steps, solver)
    finite = torch.isfinite(lam)
    ts = torch.zeros_like(lam)
    ts[finite] = schedule.t_from_lambda(lam[finite])
    return ts
