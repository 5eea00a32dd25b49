r"""The VP noise schedule (DDPM linear-beta by default), in discrete and continuous time.

Forward process (variance preserving): :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`, with
:math:`\alpha_t^2 + \sigma_t^2 = 1`.

* Discrete (DDPM, Ho et al. 2020): :math:`\beta_n` linear from 1e-4 to 0.02, n = 0..999,
  :math:`\bar\alpha_n = \prod_{m \le n} (1 - \beta_m)`, :math:`\alpha_n = \sqrt{\bar\alpha_n}`.
  This is diffusers' ``beta_schedule="linear"`` with ``num_train_timesteps=1000``.
* ``beta_schedule="scaled_linear"`` (Stable Diffusion's, with ``beta_start=0.00085, beta_end=0.012``):
  :math:`\sqrt{\beta_n}` linear from :math:`\sqrt{\beta_{start}}` to :math:`\sqrt{\beta_{end}}`, as diffusers.
  Its terminal :math:`\alpha_{999} \approx 0.068` (1/α ≈ 14.6) against 0.0064 (≈ 157) for the DDPM default.
  Every other formula below is the same for both.
* Continuous time t in [1/T, 1] (DPM-Solver's ``NoiseScheduleVP('discrete')``): step n sits at
  t_n = (n + 1) / T and :math:`\log\alpha_t` is the piecewise-linear interpolation of
  :math:`\log\alpha_{t_n}`. The network's time input is this continuous t (training draws
  t ~ U[1e-3, 1]), so discrete schedulers (at t_n) and continuous solvers query the same model.
* Log-SNR :math:`\lambda_t = \log(\alpha_t / \sigma_t)` is strictly decreasing, so it has an inverse.
* EDM view (Karras et al. 2022): :math:`\sigma^{\rm EDM}_t = \sigma_t / \alpha_t`, from 0.0100 at
  t = 1/T to 157.4 at t = 1 for the DDPM default (0.029 to 14.6 for Stable Diffusion's).

Everything is computed in float64; callers cast the results to their working dtype.
"""

from __future__ import annotations

import torch

T_TRAIN = 1000
BETA_START = 1e-4
BETA_END = 0.02
BETA_SCHEDULES = ("linear", "scaled_linear")


def _as_t(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class VPSchedule:
    """A VP schedule (DDPM linear by default) with a continuous-time interpolation (see the module docstring)."""

    def __init__(self, beta_start: float = BETA_START, beta_end: float = BETA_END, num_train_timesteps: int = T_TRAIN,
                 beta_schedule: str = "linear"):
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        if beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, self.num_train_timesteps, dtype=torch.float64)
        else:
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, self.num_train_timesteps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self._t_grid = torch.arange(1, self.num_train_timesteps + 1, dtype=torch.float64) / self.num_train_timesteps
        self._log_alpha_grid = 0.5 * torch.log(self.alphas_cumprod)
        self.t_min = float(self._t_grid[0])
        self.t_max = 1.0

    def config(self) -> dict:
        """The constructor's arguments (diffusers' names), e.g. for a checkpoint's manifest."""
        return {"beta_schedule": self.beta_schedule, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_train_timesteps": self.num_train_timesteps}

    @classmethod
    def from_config(cls, config: dict | None) -> VPSchedule:
        """Inverse of :meth:`config`; ``None`` (a manifest written before schedules were recorded) is the default."""
        return cls() if config is None else cls(**config)

    # --- discrete <-> continuous -------------------------------------------------------------
    def t_of_step(self, n) -> torch.Tensor:
        """Continuous time of discrete step n (0-based): t_n = (n + 1) / T."""
        return (_as_t(n) + 1.0) / self.num_train_timesteps

    def step_of_t(self, t) -> torch.Tensor:
        """Inverse of :meth:`t_of_step` (a float step index; round it for a discrete scheduler)."""
        return _as_t(t) * self.num_train_timesteps - 1.0

    # --- the process coefficients ------------------------------------------------------------
    def log_alpha(self, t) -> torch.Tensor:
        """Piecewise-linear interpolation of log alpha in t (linear extrapolation below t_1)."""
        t = _as_t(t)
        grid, values = self._t_grid, self._log_alpha_grid
        idx = torch.clamp(torch.searchsorted(grid, t.clamp(max=1.0)) - 1, 0, len(grid) - 2)
        t0, t1 = grid[idx], grid[idx + 1]
        v0, v1 = values[idx], values[idx + 1]
        return v0 + (t - t0) * (v1 - v0) / (t1 - t0)

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> torch.Tensor:
        """Log-SNR lambda_t = log alpha_t - log sigma_t."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def edm_sigma(self, t) -> torch.Tensor:
        """EDM noise level sigma_t / alpha_t = exp(-lambda_t)."""
        return torch.exp(-self.lambda_(t))

    # --- inverses ----------------------------------------------------------------------------
    def t_from_lambda(self, lam) -> torch.Tensor:
        """The t with lambda_t = lam: log alpha = -0.5 log(1 + e^{-2 lam}), then invert the interpolation."""
        lam = _as_t(lam)
        log_alpha = -0.5 * torch.log1p(torch.exp(-2.0 * lam))
        # log alpha is decreasing in t: flip the grid so that searchsorted sees increasing values.
        grid, values = self._t_grid.flip(0), self._log_alpha_grid.flip(0)
        idx = torch.clamp(torch.searchsorted(values, log_alpha) - 1, 0, len(grid) - 2)
        v0, v1 = values[idx], values[idx + 1]
        t0, t1 = grid[idx], grid[idx + 1]
        return t0 + (log_alpha - v0) * (t1 - t0) / (v1 - v0)

    def t_from_edm_sigma(self, sigma_edm) -> torch.Tensor:
        return self.t_from_lambda(-torch.log(_as_t(sigma_edm)))

    # --- the forward process -----------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t noise (t a scalar or a [B] tensor)."""
        alpha = self.alpha(t).to(x0.dtype)
        sigma = self.sigma(t).to(x0.dtype)
        if alpha.ndim == 1:
            alpha, sigma = alpha[:, None], sigma[:, None]
        return alpha * x0 + sigma * noise
