r"""Score structure: how much of the learned score analytic scores explain (Wang & Vastola, arXiv 2412.09726).

**Part A, score structure.** How much of a learned score :math:`s_\theta(x, \sigma)` does an analytic score
:math:`s_X` explain? The official code (``analytical_score_lib.explained_var``) pools over a batch:

.. math:: \mathrm{EV}_X(\sigma) = 1 - \frac{\sum_b \lVert s_\theta(x_b) - s_X(x_b)\rVert^2}{\sum_b \lVert s_\theta(x_b)\rVert^2},

with :math:`x_b \sim q_\sigma`. At one noise level the score and eps differ by the factor :math:`-1/\sigma_t`,
so EV is the same computed on eps. X is the Gaussian, the class-GMM or the delta (training-set) twin.
"""

from __future__ import annotations

import math

import torch

from common.diffusion.schedule import VPSchedule


def explained_variance(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """EV = 1 - sum ||reference - approx||^2 / sum ||reference||^2 (the official ``explained_var``, pooled)."""
    reference, approx = reference.double(), approx.double()
    return float(1.0 - (reference - approx).pow(2).sum() / reference.pow(2).sum())


def log_sigma_grid(n: int, sigma_min: float = 0.01, sigma_max: float = 157.0) -> torch.Tensor:
    """n log-spaced EDM sigmas from sigma_min to sigma_max (float64, increasing)."""
    if n < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need n >= 2 and 0 < sigma_min < sigma_max, got {n}, {sigma_min}, {sigma_max}")
    return torch.logspace(math.log10(sigma_min), math.log10(sigma_max), n, dtype=torch.float64)


def noised(x0: torch.Tensor, t: float, schedule: VPSchedule, generator: torch.Generator) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps, eps from ``generator`` (float64)."""
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return schedule.add_noise(x0.double(), t, noise)


def ev_profile(model, twins: dict, x0: torch.Tensor, sigmas: torch.Tensor, random_state: int = 0) -> dict:
    """EV of every twin against the model's eps at each EDM sigma; {name: [EV per sigma]}.

    The same noise bank (one generator seeded with ``random_state``) serves every twin."""
    schedule = model.schedule
    gen = torch.Generator().manual_seed(random_state)
    out = {name: [] for name in twins}
    for s in sigmas.tolist():
        t = float(schedule.t_from_edm_sigma(s))
        x_t = noised(x0, t, schedule, gen)
        with torch.no_grad():
            eps_model = model.eps(x_t.float(), t).double()
        for name, twin in twins.items():
            out[name].append(explained_variance(eps_model, twin.eps(x_t, t)))
    return out


def sigma_hi(sigmas, ev, threshold: float = 0.99) -> float:
    """Smallest grid sigma such that EV >= threshold at it and at every larger grid sigma (inf if none)."""
    best = math.inf
    for s, e in sorted(zip(sigmas, ev, strict=True), reverse=True):
        if e < threshold:
            break
        best = s
    return float(best)
