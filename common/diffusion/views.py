r"""One noise-prediction model, every exact view: ε, x̂₀, score, v, EDM denoiser and FM-OT velocity.

A diffusion model trained to predict the noise :math:`\hat\varepsilon(x_t, t, y)` of the VP process
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` (``common.diffusion.schedule``) already *is* every other
parameterisation; they differ only by exact, invertible changes of variables:

* data prediction (Tweedie):  :math:`\hat x_0 = (x_t - \sigma_t \hat\varepsilon) / \alpha_t`;
* score:                      :math:`\nabla_x \log p_t(x) = -\hat\varepsilon / \sigma_t`;
* v-prediction (Salimans & Ho 2022): :math:`\hat v = \alpha_t \hat\varepsilon - \sigma_t \hat x_0`;
* EDM denoiser (Karras et al. 2022, Eq. 7 with :math:`s(t)=\alpha_t`): in the coordinates
  :math:`x_e = x/\alpha`, :math:`\sigma_e = \sigma/\alpha` the VP ODE becomes
  :math:`dx_e/d\sigma_e = (x_e - D(x_e;\sigma_e))/\sigma_e` with :math:`D(x_e;\sigma_e) = \hat x_0` evaluated at
  the t with :math:`\sigma_t/\alpha_t = \sigma_e` and at :math:`x = \alpha_t x_e`;
* flow matching with the conditional optimal-transport path (CondOT, Lipman et al. 2023; time r = 1 at
  the data): :math:`\bar x_r = r x_0 + (1 - r)\varepsilon`, velocity :math:`u = x_0 - \varepsilon`. A VP
  state is a scaled CondOT state (the "scale-time" transform of Shaul et al., Bespoke solvers, 2023):
  :math:`\bar x_r = s_r x_{t_r}` with :math:`\alpha_{t_r}/\sigma_{t_r} = r/(1-r)` (i.e. :math:`r = \mathrm{sigmoid}(\lambda_t)`)
  and :math:`s_r = (1-r)/\sigma_{t_r}`, so :math:`\hat u(\bar x, r) = \hat x_0 - \hat\varepsilon` at
  :math:`(\bar x / s_r, t_r)`.

Classifier-free guidance (Ho & Salimans 2022, Eq. 6 written for ε):
:math:`\tilde\varepsilon = \hat\varepsilon(x, t, \varnothing) + w\,(\hat\varepsilon(x, t, y) - \hat\varepsilon(x, t, \varnothing))`;
w = 1 is the conditional model, w = 0 the unconditional one.

The model protocol
------------------
Every model, twin and wrapper in ``common.diffusion`` has ``eps(x, t, y=None)`` with ``x`` of shape
[B, 64] (float32 or float64; the output has x's dtype), ``t`` a python float, a 0-d tensor or a [B]
tensor of continuous times in [t_min, 1], ``y`` a LongTensor [B] of labels 0..9 (10 = the null label) or
None (= unconditional), and a ``.schedule`` (a :class:`~common.diffusion.schedule.VPSchedule`).
:class:`Denoiser` wraps any such ``eps`` function and adds the views above.

NFE counting: :attr:`Denoiser.nfe` counts *batched network evaluations*. A guided evaluation stacks the
conditional and unconditional inputs into one batch of 2B and counts as **one** NFE (the convention of
most CFG papers that report "NFE" per sampling step); ``nfe_guided_pairs_count_two=True`` counts it as 2.
"""

from __future__ import annotations

from typing import Callable

import torch

from common.diffusion.data import NULL_LABEL
from common.diffusion.schedule import VPSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def batch_times(t, x: torch.Tensor) -> torch.Tensor:
    """Any t (float, 0-d, [B] or [B, 1] tensor) -> a float64 [B] tensor on x's device."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t


def _column(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float64 [B] coefficient -> [B, 1] in x's dtype, for broadcasting over features."""
    return values.to(dtype=x.dtype)[:, None]


def null_labels(batch: int, device=None) -> torch.Tensor:
    return torch.full((batch,), NULL_LABEL, dtype=torch.long, device=device)


def logit(r: torch.Tensor) -> torch.Tensor:
    return torch.log(r) - torch.log1p(-r)


class Denoiser:
    """Wrap an ``eps(x, t, y)`` function: every exact view of the model (see the module docstring).

    Args:
        eps_fn: the model's noise prediction, following the model protocol.
        schedule: the VP schedule the model was trained on.
        guidance_scale: None (plain model: conditional when y is given, unconditional when y is None) or
            the classifier-free guidance weight w (applied whenever y is given).
        nfe_guided_pairs_count_two: count a guided (conditional + unconditional) evaluation as 2 NFE.
    """

    def __init__(
        self,
        eps_fn: EpsFn,
        schedule: VPSchedule,
        guidance_scale: float | None = None,
        nfe_guided_pairs_count_two: bool = False,
    ):
        self.eps_fn = eps_fn
        self.schedule = schedule
        self.guidance_scale = None if guidance_scale is None else float(guidance_scale)
        self.nfe_guided_pairs_count_two = nfe_guided_pairs_count_two
        self.nfe = 0

    # --- bookkeeping -------------------------------------------------------------------------------
    def reset_nfe(self) -> int:
        """Set the NFE counter to 0 and return its previous value."""
        previous, self.nfe = self.nfe, 0
        return previous

    def with_guidance(self, w: float | None) -> "Denoiser":
        """The same network with classifier-free guidance weight ``w`` (own NFE counter; the network and
        checkpoint manifest attached by the loaders, if any, are carried over)."""
        guided = Denoiser(self.eps_fn, self.schedule, w, self.nfe_guided_pairs_count_two)
        for name in ("net", "manifest"):
            if hasattr(self, name):
                setattr(guided, name, getattr(self, name))
        return guided

    def coefficients(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) as [B, 1] columns in x's dtype."""
        t = batch_times(t, x)
        return _column(self.schedule.alpha(t), x), _column(self.schedule.sigma(t), x)

    # --- epsilon, with optional guidance ------------------------------------------------------------
    def eps(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction; classifier-free guided when ``guidance_scale`` is set and y is given."""
        t = batch_times(t, x)
        w = self.guidance_scale
        if y is None or w is None or w == 1.0:
            self.nfe += 1
            return self.eps_fn(x, t, y)
        if w == 0.0:
            self.nfe += 1
            return self.eps_fn(x, t, null_labels(x.shape[0], x.device))
        return self._guided_eps(x, t, y, w)

    def _guided_eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: float) -> torch.Tensor:
        """eps_u + w (eps_c - eps_u), the pair evaluated as one batch of 2B."""
        self.nfe += 2 if self.nfe_guided_pairs_count_two else 1
        both = self.eps_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_labels(x.shape[0], x.device)]))
        eps_c, eps_u = both.chunk(2)
        return eps_u + w * (eps_c - eps_u)

    __call__ = eps

    # --- the exact views ----------------------------------------------------------------------------
    def x0(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """Tweedie's data prediction x0 = (x - sigma eps) / alpha."""
        alpha, sigma = self.coefficients(t, x)
        return (x - sigma * self.eps(x, t, y)) / alpha

    def score(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """grad_x log p_t(x) = -eps / sigma."""
        _, sigma = self.coefficients(t, x)
        return -self.eps(x, t, y) / sigma

    def v(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """v-prediction v = alpha eps - sigma x0."""
        alpha, sigma = self.coefficients(t, x)
        eps = self.eps(x, t, y)
        return alpha * eps - sigma * (x - sigma * eps) / alpha

    def edm_denoiser(self, x_e: torch.Tensor, sigma_e, y: torch.Tensor | None = None) -> torch.Tensor:
        """EDM's D(x_e; sigma_e): x0 at t = t(sigma_e) and x = alpha_t x_e (x_e = x / alpha)."""
        t = self.schedule.t_from_edm_sigma(batch_times(sigma_e, x_e))
        alpha, _ = self.coefficients(t, x_e)
        return self.x0(alpha * x_e, t, y)

    def flow_velocity(self, xbar: torch.Tensor, r, y: torch.Tensor | None = None) -> torch.Tensor:
        """FM-OT (CondOT, r = 1 at data) velocity u = x0 - eps at (xbar / s_r, t_r), by the scale-time map."""
        t, scale = self.flow_time_and_scale(batch_times(r, xbar))
        x = xbar / _column(scale, xbar)
        alpha, sigma = self.coefficients(t, x)
        eps = self.eps(x, t, y)
        return (x - sigma * eps) / alpha - eps

    def flow_time_and_scale(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CondOT time r -> (VP time t_r, scale s_r) with alpha/sigma = r/(1-r), s_r = (1-r)/sigma_{t_r}."""
        r = torch.as_tensor(r, dtype=torch.float64)
        if torch.any((r <= 0) | (r >= 1)):
            raise ValueError("flow time r must lie in (0, 1) (r = sigmoid(log-SNR))")
        t = self.schedule.t_from_lambda(logit(r))
        return t, (1.0 - r) / self.schedule.sigma(t)

    def flow_r_of_t(self, t) -> torch.Tensor:
        """Inverse map: the CondOT time of VP time t, r = sigmoid(lambda_t)."""
        return torch.sigmoid(self.schedule.lambda_(t))
