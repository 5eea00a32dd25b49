r"""k-NN metrics of generated samples: precision / recall / density / coverage, and k-occurrence (hubness).

**Precision, recall, density, coverage** (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
Generative Models", Sec. 3; the definitions of the ``prdc`` package). Real features
:math:`X = \{x_i\}_{i=1}^N`, fake features :math:`Y = \{y_j\}_{j=1}^M`, Euclidean distance :math:`d`, and
:math:`\mathrm{NND}_k(x_i)` the distance from :math:`x_i` to its k-th nearest neighbour in its own set
(itself excluded). With :math:`B(c, r)` the *open* ball (a strict ``<``, as in ``prdc``):

.. math::
    \mathrm{precision} = \frac1M \sum_j 1\big[\exists i: y_j \in B(x_i, \mathrm{NND}_k(x_i))\big]
    \qquad
    \mathrm{recall} = \frac1N \sum_i 1\big[\exists j: x_i \in B(y_j, \mathrm{NND}_k(y_j))\big]

.. math::
    \mathrm{density} = \frac{1}{kM} \sum_j \sum_i 1\big[y_j \in B(x_i, \mathrm{NND}_k(x_i))\big]
    \qquad
    \mathrm{coverage} = \frac1N \sum_i 1\big[\exists j: y_j \in B(x_i, \mathrm{NND}_k(x_i))\big]

Precision and recall are Kynkäänniemi et al.'s (2019) k-NN manifold estimates; density and coverage are
Naeem et al.'s robust variants (only real-sample radii).

**k-occurrence** (Radovanović et al. 2010, "Hubs in Space", Sec. 2): :math:`N_k(x)` is the number of points
of the sample that have :math:`x` among their k nearest neighbours, i.e. the column sums of the directed
k-NN graph (self excluded), so :math:`\sum_x N_k(x) = k n` and the mean of :math:`N_k` is k. Its
skewness :math:`S_{N_k} = E[(N_k - \mu)^3] / \sigma^3` measures hubness: it grows with the intrinsic
dimension. Hubs are the points with a large :math:`N_k`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.neighbors import NearestNeighbors


def _features(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [n >= 2, d], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def kth_neighbour_distance(x, k: int) -> np.ndarray:
    """``NND_k(x_i)``: distance from each row of ``x`` to its k-th nearest other row (self excluded)."""
    x = _features(x, "x")
    if not 1 <= k < len(x):
        raise ValueError(f"need 1 <= k < n, got k={k}, n={len(x)}")
    dist, _ = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()  # X=None: each point's own row excluded
    return dist[:, -1]


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(a, b, metric="euclidean")


def prdc(real, fake, k: int = 5) -> dict:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features (Naeem et al. 2020).

    ``real`` [N, d] and ``fake`` [M, d]; ``k`` is the neighbourhood size of the radii. Returns a dict with
    the four floats. O(N·M) memory (one distance matrix).
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    r_real = kth_neighbour_distance(real, k)       # radii of the real k-NN balls
    r_fake = kth_neighbour_distance(fake, k)       # radii of the fake k-NN balls
    d = _pairwise(real, fake)                      # [N, M]
    inside_real = d < r_real[:, None]              # fake j inside real ball i
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum() / (k * fake.shape[0])),
        "coverage": float((d.min(axis=1) < r_real).mean()),
    }


def k_occurrence(x, k: int = 5) -> np.ndarray:
    """``N_k`` of every row of ``x``: column sums of the k-NN graph, self excluded (Radovanović et al. 2010).

    Integer array [n] with sum ``k * n``. Ties between equal distances are broken by sklearn's order.
    (The official hubness-GAN notebook queries ``kneighbors_graph(X)`` with X given, which counts each
    point as its own first neighbour: its ``N_5`` equals ``1 + N_4`` here.)
    """
    x = _features(x, "x")
    if not 1 <= k < len(x):
        raise ValueError(f"need 1 <= k < n, got k={k}, n={len(x)}")
    graph = NearestNeighbors(n_neighbors=k).fit(x).kneighbors_graph(mode="connectivity")
    return np.asarray(graph.sum(axis=0)).ravel().astype(np.int64)


def hubness_skewness(n_k) -> float:
    """Skewness ``E[(N_k - mu)^3] / sigma^3`` of the k-occurrence distribution (population moments)."""
    n_k = np.asarray(n_k, dtype=np.float64)
    if n_k.ndim != 1 or n_k.size < 3:
        raise ValueError(f"n_k must be a 1-D array of at least 3 counts, got shape {n_k.shape}")
    if np.all(n_k == n_k[0]):
        return 0.0
    return float(stats.skew(n_k, bias=True))
