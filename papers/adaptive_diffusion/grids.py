r"""Time grids: Stable Diffusion's DDIM-50 / DPM-Solver-50 grids mapped onto the digits model, and uniform t.

The official code samples with ``DDIMScheduler.from_config(pipe.scheduler.config)`` (or
``DPMSolverMultistepScheduler``) of SDXL (``generate.py``'s default model; SD-1.5 gives the same DDIM grid):

* scaled-linear betas, :math:`\beta_n = (\sqrt{0.00085} + \tfrac{n}{999}(\sqrt{0.012} - \sqrt{0.00085}))^2`,
  :math:`\bar\alpha_n = \prod_{m \le n}(1 - \beta_m)`, n = 0..999;
* "leading" spacing with ``steps_offset = 1``: DDIM with k steps visits the timesteps
  :math:`1 + j\lfloor 1000/k \rfloor`, j = k-1..0 (981, 961, ..., 1 for k = 50) and ends at
  ``final_alpha_cumprod`` = :math:`\bar\alpha_0` (``set_alpha_to_one=False``);
  DPM-Solver(++) visits :math:`1 + j\lfloor 1000/(k+1) \rfloor`, j = k..1 (951, ..., 20 for k = 50) and ends
  at :math:`\sigma = 0` (``final_sigmas_type="zero"``, the last step first order).

Our model has its own (linear-beta) schedule, so we map each of these noise levels onto it **by log-SNR**,
:math:`\lambda = \tfrac12\log(\bar\alpha / (1 - \bar\alpha))` and :math:`t = \lambda^{-1}_{\text{model}}(\lambda)`:
DDIM and DPM-Solver depend on the grid only through :math:`(\alpha_i, \sigma_i)`, so the solver on the mapped
grid is *the same sequence of updates* as diffusers' scheduler on SD's schedule (checked against
diffusers in the unit tests). SD's grid starts at :math:`\bar\alpha_{981} \approx 0.0058`
(:math:`\lambda \approx -2.6`), not at the model's :math:`t = 1` (:math:`\lambda \approx -5.1`); the sample
starts from :math:`x_T \sim \mathcal N(0, I)` there, as SD does.

Why the grid matters for AdaptiveDiffusion: inside a run of skips DDIM keeps :math:`\hat x_0` and
:math:`\hat\varepsilon` fixed, so :math:`z_{k+1} - z_k = \Delta\alpha_k \hat x_0 + \Delta\sigma_k\hat\varepsilon`
and the third-order test sees only the curvature of the grid's :math:`(\alpha, \sigma)` sequence
(:func:`frozen_test_stable`). On SD's grid that curvature is large in the last steps (they are called); on a
grid uniform in t it is small down to the last step (they are skipped).
"""

from __future__ import annotations

import torch

from common.diffusion.grids import (
    N_TRAIN,
    SD15_SCHEDULER_CONFIG,
    SD_BETA_END,
    SD_BETA_START,
    SDXL_SCHEDULER_CONFIG,
    sd_alphas_cumprod,
    sd_grid,
    sd_lambdas,
    sd_timesteps,
)
from common.diffusion.samplers import time_grid

__all__ = [
    "GRIDS", "N_TRAIN", "SD15_SCHEDULER_CONFIG", "SDXL_SCHEDULER_CONFIG", "SD_BETA_END", "SD_BETA_START",
    "frozen_test_stable", "make_grid", "sd_alphas_cumprod", "sd_grid", "sd_lambdas", "sd_timesteps",
]

GRIDS = ("sd", "uniform_t")


def make_grid(kind: str, schedule, n_steps: int, solver: str = "ddim") -> torch.Tensor:
    """``"sd"``: :func:`sd_grid`; ``"uniform_t"``: n_steps uniform in t from 1 to t_min (our earlier main grid)."""
    if kind == "sd":
        return sd_grid(schedule, n_steps, solver)
    if kind == "uniform_t":
        return time_grid(n_steps, "uniform_t")
    raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")


def frozen_test_stable(schedule, ts, x0: torch.Tensor, eps: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    r"""The third-order test along ``ts`` with :math:`\hat x_0` and :math:`\hat\varepsilon` frozen (what the test
    sees inside a run of skips): :math:`z_i = \alpha_i x_0 + \sigma_i \varepsilon`, :math:`d_k = \operatorname{mean}
    |z_k - z_{k-1}|`, and "stable" iff :math:`|(d_{k+1} + d_{k-1})/2 - d_k| \le \delta d_k`. Returns [B, N]
    booleans, entry i = the decision for step i (False for i < 4, never decided), as the estimator's timing."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    a, s = schedule.alpha(ts), schedule.sigma(ts)
    a = torch.where(ts == 0, torch.ones_like(a), a)
    s = torch.where(ts == 0, torch.zeros_like(s), s)
    z = a[None, :, None] * x0.double()[:, None, :] + s[None, :, None] * eps.double()[:, None, :]  # z[:, i] = state at ts[i]
    d = (z[:, 1:] - z[:, :-1]).abs().mean(-1)  # d[:, j] = mean|z_{j+1} - z_j|, the move of step j
    n = len(ts) - 1
    out = torch.zeros(x0.shape[0], n, dtype=torch.bool)
    # the decision for step i + 1 is taken after step i (i >= 3) from the moves of steps i - 2, i - 1, i
    for i in range(3, n - 1):
        out[:, i + 1] = ((d[:, i] + d[:, i - 2]) / 2 - d[:, i - 1]).abs() <= threshold * d[:, i - 1]
    return out
