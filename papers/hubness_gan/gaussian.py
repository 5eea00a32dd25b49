r"""Part A of the hubness replication: hubness of standard normal samples (NumPy only, no torch).

For n points the k-occurrence :math:`N_k(x) = \sum_i 1[x \in \mathrm{kNN}(x_i)]` (Radovanović et al. 2010)
has mean k; its skewness grows with the dimension (hubs emerge), and the hubs are the points near the
sample mean ("central clustering", the paper's reading of the truncation trick).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from common.gen_metrics import hubness_skewness, k_occurrence


def central_clustering(x, n_k) -> dict:
    r"""How strongly high-:math:`N_k` points sit near the sample mean.

    Returns ``spearman``: Spearman's :math:`\rho(N_k, -\lVert x - \bar x\rVert)` (> 0 when hubs are
    central), and ``dist_ratio``: mean distance to the mean of the top-10 % :math:`N_k` points
    (:math:`N_k \ge` its 0.9 quantile, so ties can take more than 10 %) over that of all points (< 1 when hubs
    are central).
    """
    x = np.asarray(x, dtype=np.float64)
    n_k = np.asarray(n_k)
    if x.ndim != 2 or len(x) != len(n_k):
        raise ValueError(f"x [n, d] and n_k [n] must agree, got {x.shape} and {n_k.shape}")
    dist = np.linalg.norm(x - x.mean(axis=0), axis=1)
    rho = stats.spearmanr(n_k, -dist).statistic
    top = n_k >= np.quantile(n_k, 0.9)
    return {"spearman": float(rho), "dist_ratio": float(dist[top].mean() / dist.mean())}


def gaussian_hubness(d: int, n: int, k: int = 5, random_state: int = 0) -> dict:
    """Skewness of :math:`N_k` and central clustering for ``n`` standard normal points in ``d`` dimensions."""
    if d < 1 or n <= k:
        raise ValueError(f"need d >= 1 and n > k, got d={d}, n={n}, k={k}")
    x = np.random.default_rng(random_state).standard_normal((n, d))
    n_k = k_occurrence(x, k)
    return {"skewness": hubness_skewness(n_k), "max_nk": int(n_k.max()), **central_clustering(x, n_k)}
