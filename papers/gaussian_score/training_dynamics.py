r"""Training dynamics and memorisation (Wang & Vastola, arXiv 2412.09726: the Gaussian structure "is
preferentially learned early in training"; the learned score is "consistent with generalization").

**Gaussian first.** For training snapshots :math:`\hat\varepsilon_k` of one run (the zoo's ``digits_eps_ci``
recipe at steps k), the relative error to the Gaussian twin at EDM noise level sigma, per held-out digit b,

.. math:: r_k(b, \sigma) = \lVert\hat\varepsilon_k(x_b) - \varepsilon_G(x_b)\rVert^2 / \lVert\varepsilon_G(x_b)\rVert^2,

uses the twin as the reference (it is the same for every snapshot, so errors are comparable across
snapshots; the EV of Part A divides by the model's own norm instead). Every snapshot sees the same noise
bank. A snapshot closer to the Gaussian than the final model at the levels where the two differ supports
the claim; the comparison is paired over held-out digits.

**Memorisation.** The nearest-neighbour ratio: the distance of each generated sample to its nearest
training digit against the same distance for held-out digits (fresh draws of the data distribution). A
memorising model puts samples on top of training digits (ratio well below 1); :func:`copy_fraction` counts
samples whose nearest training digit is much closer than the second nearest (d1 / d2 < 1/3, the criterion
of Yoon et al. 2023 / Carlini et al. 2023).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from common.stats import Interval
from papers.gaussian_score.score_structure import noised


def rel_error_to_twin(models: dict, twin, x0: torch.Tensor, sigmas, random_state: int = 0) -> dict:
    """{name: array [n_points, n_sigmas]} of r(b, sigma) = ||eps_model - eps_twin||^2 / ||eps_twin||^2.

    One noise bank (seeded with ``random_state``) shared by every model (common random numbers)."""
    schedule = next(iter(models.values())).schedule
    gen = torch.Generator().manual_seed(random_state)
    out = {name: np.zeros((x0.shape[0], len(sigmas))) for name in models}
    for j, s in enumerate(torch.as_tensor(sigmas).tolist()):
        t = float(schedule.t_from_edm_sigma(s))
        x_t = noised(x0, t, schedule, gen)
        ref = twin.eps(x_t, t).double()
        denom = ref.pow(2).sum(1)
        for name, model in models.items():
            with torch.no_grad():
                eps = model.eps(x_t.float(), t).double()
            out[name][:, j] = ((eps - ref).pow(2).sum(1) / denom).numpy()
    return out


def nn_distances(x: torch.Tensor, reference: torch.Tensor, k: int = 2) -> np.ndarray:
    """Euclidean distances of every row of ``x`` to its ``k`` nearest rows of ``reference`` ([n, k], sorted)."""
    d = torch.cdist(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64))
    return d.topk(k, dim=1, largest=False).values.numpy()


def copy_fraction(distances: np.ndarray, threshold: float = 1.0 / 3.0) -> float:
    """Fraction of rows whose nearest reference point is closer than ``threshold`` x the second nearest."""
    return float(np.mean(distances[:, 0] < threshold * distances[:, 1]))


def unpaired_ratio_of_means(a, b, *, confidence: float = 0.95) -> Interval:
    """mean(a) / mean(b) for two independent samples, delta method on the log scale (Welch-type t quantile).

    var(log R) ~ var(a) / (n_a mean(a)^2) + var(b) / (n_b mean(b)^2); both means must be positive."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim != 1 or b.ndim != 1 or a.size < 2 or b.size < 2:
        raise ValueError("a and b must be 1-D with at least 2 values each")
    ma, mb = a.mean(), b.mean()
    if ma <= 0 or mb <= 0:
        raise ValueError("both means must be positive")
    va, vb = a.var(ddof=1) / (a.size * ma**2), b.var(ddof=1) / (b.size * mb**2)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else float(a.size + b.size - 2)
    q = float(stats.t.ppf(0.5 + confidence / 2, dof))
    r = ma / mb
    return Interval(float(r), float(r * math.exp(-q * se)), float(r * math.exp(q * se)), int(a.size + b.size),
                    confidence, "delta_unpaired")
