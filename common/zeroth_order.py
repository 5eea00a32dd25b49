"""Zeroth-order gradient estimators: evolution strategies (NPGA) and REINFORCE.

**Evolution strategies** (Salimans et al. 2017; "NPGA" in Bichler et al. 2021). For a
parameter vector ``θ`` and an objective ``F``, the Gaussian-smoothed objective
``F_σ(θ) = E_ε F(θ + σε)``, ``ε ~ N(0, I)``, has gradient

    ∇F_σ(θ) = (1/σ) E_ε [F(θ + σε) ε]  ≈  1/(P σ) Σ_p (F(θ + σε_p) − b) ε_p               (1)

with population ``P`` and baseline ``b`` (here ``F(θ)``, which keeps it unbiased); antithetic
pairs ``±ε`` reduce variance further. It needs only ``P`` evaluations of ``F``, no gradients.

**REINFORCE / score function** (Williams 1992). For actions ``a ~ π_θ`` and reward ``R(a)``,

    ∇_θ E_{a~π_θ} R(a) = E[R(a) ∇_θ log π_θ(a)]  ≈  1/N Σ_k (R(a_k) − b) ∇_θ log π_θ(a_k)   (2)

:func:`reinforce_surrogate` returns the scalar whose autograd gradient is (2), for any
differentiable ``log π_θ(a)``; :func:`gaussian_log_prob` gives it for the Gaussian policy
``a ~ N(μ_θ(s), s_a²)`` used for bidding.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

__all__ = ["es_gradient", "reinforce_surrogate", "gaussian_log_prob"]


def es_gradient(
    objective: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    sigma: float,
    population: int,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
) -> torch.Tensor:
    """Estimate ``∇F_σ(θ)`` by (1). ``objective`` maps a ``(P, d)`` batch of parameters to ``(P,)``.

    With ``antithetic=True`` the population is ``P/2`` pairs ``±ε`` (``P`` must be even) and the
    estimate is ``1/(Pσ) Σ (F(θ+σε) − F(θ−σε)) ε``.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if population < 1 or (antithetic and population % 2):
        raise ValueError(f"population must be positive (and even if antithetic), got {population}")
    theta = theta.detach().reshape(-1)
    d = theta.numel()
    k = population // 2 if antithetic else population
    eps = torch.randn(k, d, generator=generator, dtype=theta.dtype)
    with torch.no_grad():
        if antithetic:
            f = objective(torch.cat([theta + sigma * eps, theta - sigma * eps]))
            diff = f[:k] - f[k:]
            return (diff.unsqueeze(1) * eps).sum(0) / (population * sigma)
        f = objective(theta + sigma * eps)
        base = objective(theta.unsqueeze(0))[0]
        return ((f - base).unsqueeze(1) * eps).mean(0) / sigma


def reinforce_surrogate(log_prob: torch.Tensor, reward: torch.Tensor, baseline: str = "mean") -> torch.Tensor:
    """Surrogate loss whose gradient is minus the estimate (2); minimise it to ascend ``E R``.

    ``baseline``: ``"mean"`` (batch mean of the rewards) or ``"none"``.
    """
    if log_prob.shape != reward.shape:
        raise ValueError(f"log_prob {tuple(log_prob.shape)} and reward {tuple(reward.shape)} must match")
    reward = reward.detach()
    if baseline == "mean":
        reward = reward - reward.mean()
    elif baseline != "none":
        raise ValueError(f"baseline must be 'mean' or 'none', got {baseline!r}")
    return -(reward * log_prob).mean()


def gaussian_log_prob(action: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """``log N(action; mean, std²)`` elementwise (summed over a trailing action dim is up to the caller)."""
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return -0.5 * ((action.detach() - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * np.pi)
