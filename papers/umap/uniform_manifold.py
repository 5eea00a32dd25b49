"""UMAP: Uniform Manifold Approximation and Projection (McInnes, Healy, Melville 2018).

The paper's algorithm (Section 3 and Appendix C; Algorithms 1–5), as implemented here:

1. **Local fuzzy simplicial sets** (Section 3.1, Algorithm 3). For each point x_i with k nearest
   neighbours x_{i_1}, …, x_{i_k} at distances d(x_i, x_{i_j}):

       ρ_i = min { d(x_i, x_{i_j}) : d(x_i, x_{i_j}) > 0 },                         (Definition 8)
       Σ_j exp(−max(0, d(x_i, x_{i_j}) − ρ_i) / σ_i) = log₂ k,                    (smooth kNN distance)

   σ_i is found by binary search (:func:`smooth_knn_dist`). The directed edge weight is
   w(x_i, x_{i_j}) = exp(−max(0, d(x_i, x_{i_j}) − ρ_i) / σ_i) (:func:`membership_strengths`).
2. **Fuzzy union** (Section 3.1): the symmetric graph is B = A + Aᵀ − A ∘ Aᵀ (probabilistic
   t-conorm), :func:`fuzzy_union`.
3. **Low-dimensional similarities** (Definition 11, Appendix C): Φ(y_i, y_j) = (1 + a‖y_i − y_j‖^{2b})⁻¹,
   with a, b fitted by least squares to the curve 1 if d ≤ min_dist else exp(−(d − min_dist)/spread)
   (:func:`find_ab_params`).
4. **Spectral initialisation** (Section 3.2, Algorithm 4): the eigenvectors of the normalised
   Laplacian L = I − D^{−1/2} B D^{−1/2} with the smallest non-zero eigenvalues (:func:`spectral_init`).
5. **SGD layout** (Section 3.2, Algorithm 5): minimise the fuzzy-set cross-entropy

       C = Σ_{e} w_h(e) log(w_h(e)/w_l(e)) + (1 − w_h(e)) log((1 − w_h(e))/(1 − w_l(e))),

   sampling each edge with probability ∝ its weight (edge e is visited every
   max(w)/w(e) epochs, :func:`epochs_per_sample`). An attractive step uses

       ∂/∂y_i log Φ = −2ab‖y_i − y_j‖^{2(b−1)} / (1 + a‖y_i − y_j‖^{2b}) (y_i − y_j),

   and each positive sample is followed by ``negative_sample_rate`` uniformly drawn negatives
   with the repulsive gradient 2b / ((ε + ‖y_i − y_k‖²)(1 + a‖y_i − y_k‖^{2b})) (y_i − y_k);
   each gradient coordinate is clipped to [−4, 4] and the learning rate decays linearly
   (:func:`optimize_layout`).

:class:`UMAP` chains the steps (``fit_transform``) and records the seconds spent in each stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.sparse as sp
from scipy.optimize import curve_fit
from scipy.sparse.linalg import eigsh

from common.embedding_metrics import knn_graph

SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3


def find_ab_params(spread: float = 1.0, min_dist: float = 0.1) -> tuple[float, float]:
    """Fit a, b of Φ(d) = 1 / (1 + a d^{2b}) to the offset exponential (Definition 11, Appendix C).

    Target: 1 for d < min_dist, exp(−(d − min_dist)/spread) beyond, sampled on [0, 3·spread].
    """
    if spread <= 0 or not 0 <= min_dist <= spread:
        raise ValueError(f"need spread > 0 and 0 <= min_dist <= spread, got {spread}, {min_dist}")
    d = np.linspace(0.0, 3.0 * spread, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))

    def phi(x, a, b):
        return 1.0 / (1.0 + a * x ** (2.0 * b))

    (a, b), _ = curve_fit(phi, d, target)
    return float(a), float(b)


def _rho(distances: np.ndarray, local_connectivity: float) -> np.ndarray:
    """ρ_i: distance to the ``local_connectivity``-th non-zero neighbour (interpolated if fractional)."""
    n = distances.shape[0]
    rho = np.zeros(n, dtype=np.float32)
    index = int(np.floor(local_connectivity))
    interp = local_connectivity - index
    for i in range(n):
        nonzero = distances[i][distances[i] > 0.0]
        if nonzero.shape[0] >= local_connectivity:
            if index > 0:
                rho[i] = nonzero[index - 1]
                if interp > SMOOTH_K_TOLERANCE:
                    rho[i] += interp * (nonzero[index] - nonzero[index - 1])
            else:
                rho[i] = interp * nonzero[0]
        elif nonzero.shape[0] > 0:
            rho[i] = nonzero.max()
    return rho


def smooth_knn_dist(distances: np.ndarray, k: float, *, n_iter: int = 64, local_connectivity: float = 1.0,
                    bandwidth: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """σ_i and ρ_i of every point (Algorithm 3, SmoothKNNDist), vectorised over points.

    ``distances`` is ``(n, k)`` with each point itself in column 0 (skipped in the sum). σ_i solves
    Σ_{j≥1} exp(−max(0, d_ij − ρ_i)/σ_i) = log₂(k)·bandwidth by bisection; a point stops moving once
    it is within 1e-5 of the target. σ_i is floored at 1e-3 × the mean distance (the point's own
    when ρ_i > 0, else the global one) so that isolated points do not get σ = 0.
    """
    distances = np.asarray(distances, dtype=np.float32)
    if distances.ndim != 2 or distances.shape[1] < 2:
        raise ValueError(f"distances must be (n, k) with k >= 2, got shape {distances.shape}")
    if local_connectivity < 0:
        raise ValueError("local_connectivity must be non-negative")
    target = np.log2(k) * bandwidth
    rho = _rho(distances, local_connectivity)
    excess = (distances[:, 1:] - rho[:, None]).astype(np.float64)  # float32 difference, as the reference
    positive = excess > 0
    n = distances.shape[0]
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(n_iter):
        terms = np.where(positive, np.exp(-np.where(positive, excess, 0.0) / mid[:, None]), 1.0)
        psum = terms.sum(axis=1)
        active &= ~(np.abs(psum - target) < SMOOTH_K_TOLERANCE)
        if not active.any():
            break
        too_big = active & (psum > target)
        too_small = active & ~(psum > target)
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_small, mid, lo)
        mid = np.where(too_big, (lo + hi) / 2.0,
                       np.where(too_small, np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0), mid))
    sigma = mid.astype(np.float32)
    own_mean = distances.mean(axis=1)
    floor = MIN_K_DIST_SCALE * np.where(rho > 0.0, own_mean, distances.mean())
    sigma = np.where(sigma < floor, floor, sigma).astype(np.float32)
    return sigma, rho


def membership_strengths(knn_indices: np.ndarray, knn_dists: np.ndarray, sigma: np.ndarray,
                         rho: np.ndarray) -> sp.coo_matrix:
    """Directed fuzzy set A: A_ij = exp(−max(0, d_ij − ρ_i)/σ_i) on kNN edges, 0 on self-edges."""
    n, k = knn_indices.shape
    d = np.asarray(knn_dists, dtype=np.float32)
    excess = d - rho[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.exp(-(excess / sigma[:, None]))
    vals = np.where((excess <= 0.0) | (sigma[:, None] == 0.0), 1.0, vals).astype(np.float32)
    rows = np.repeat(np.arange(n), k)
    cols = knn_indices.ravel()
    vals = vals.ravel()
    vals[cols == rows] = 0.0
    keep = cols >= 0
    return sp.coo_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))


def fuzzy_union(A: sp.spmatrix, set_op_mix_ratio: float = 1.0) -> sp.csr_matrix:
    """Symmetrise by the probabilistic t-conorm: B = A + Aᵀ − A ∘ Aᵀ (Section 3.1).

    ``set_op_mix_ratio`` < 1 interpolates towards the fuzzy intersection A ∘ Aᵀ.
    """
    if not 0.0 <= set_op_mix_ratio <= 1.0:
        raise ValueError("set_op_mix_ratio must be in [0, 1]")
    A = sp.csr_matrix(A)
    A.eliminate_zeros()
    At = A.T.tocsr()
    prod = A.multiply(At)
    B = set_op_mix_ratio * (A + At - prod) + (1.0 - set_op_mix_ratio) * prod
    B = sp.csr_matrix(B)
    B.eliminate_zeros()
    return B


def fuzzy_simplicial_set(knn_indices: np.ndarray, knn_dists: np.ndarray, n_neighbors: int, *,
                         local_connectivity: float = 1.0, set_op_mix_ratio: float = 1.0,
                         ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The symmetric fuzzy graph B with the per-point σ and ρ (Algorithms 2–3)."""
    sigma, rho = smooth_knn_dist(knn_dists, float(n_neighbors), local_connectivity=local_connectivity)
    A = membership_strengths(knn_indices, knn_dists, sigma, rho)
    return fuzzy_union(A, set_op_mix_ratio), sigma, rho


def spectral_init(graph: sp.spmatrix, n_components: int, random_state: int | None = None) -> np.ndarray:
    """Eigenvectors 2..d+1 of the normalised Laplacian I − D^{−1/2} B D^{−1/2} (Algorithm 4).

    Computed as the largest eigenvectors of D^{−1/2} B D^{−1/2} (same eigenvectors, faster Lanczos
    convergence). Falls back to a uniform random layout if ARPACK fails.
    """
    n = graph.shape[0]
    if n_components + 1 >= n:
        raise ValueError("n_components must be smaller than n_samples - 1")
    degree = np.asarray(graph.sum(axis=1)).ravel()
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    S = sp.diags(inv_sqrt) @ graph @ sp.diags(inv_sqrt)
    rng = np.random.default_rng(random_state)
    try:
        vals, vecs = eigsh(S, k=n_components + 1, which="LA", tol=1e-4, v0=np.ones(n),
                           maxiter=n * 5, ncv=max(2 * n_components + 1, int(np.sqrt(n))))
    except Exception:  # noqa: BLE001 - ARPACK non-convergence
        return rng.uniform(-10.0, 10.0, size=(n, n_components))
    order = np.argsort(vals)[::-1]
    return vecs[:, order[1:n_components + 1]]


def noisy_scale(coords: np.ndarray, rng: np.random.Generator, *, max_coord: float = 10.0,
                noise: float = 1e-4) -> np.ndarray:
    """Scale to max |coordinate| = ``max_coord`` and add N(0, noise²) jitter."""
    coords = coords * (max_coord / np.abs(coords).max())
    return coords + rng.normal(scale=noise, size=coords.shape)


def epochs_per_sample(weights: np.ndarray, n_epochs: int) -> np.ndarray:
    """Edge e is sampled every max(w)/w(e) epochs, i.e. n_epochs·w(e)/max(w) times; −1 if never."""
    n_samples = n_epochs * (weights / weights.max())
    result = np.full(weights.shape[0], -1.0)
    positive = n_samples > 0
    result[positive] = n_epochs / n_samples[positive]
    return result


@numba.njit(cache=True, fastmath=True)
def _clip(value):
    if value > 4.0:
        return 4.0
    if value < -4.0:
        return -4.0
    return value


@numba.njit(cache=True, fastmath=True)
def _sgd(embedding, head, tail, eps, n_epochs, a, b, gamma, negative_sample_rate, initial_alpha, seed):
    """The SGD loop of Algorithm 5 with per-edge epochs and negative sampling (in place)."""
    np.random.seed(seed)
    n_vertices, dim = embedding.shape
    n_edges = head.shape[0]
    eps_neg = eps / negative_sample_rate
    next_sample = eps.copy()
    next_negative = eps_neg.copy()
    alpha = initial_alpha
    for epoch in range(n_epochs):
        for e in range(n_edges):
            if next_sample[e] > epoch:
                continue
            j = head[e]
            k = tail[e]
            d2 = 0.0
            for c in range(dim):
                diff = embedding[j, c] - embedding[k, c]
                d2 += diff * diff
            if d2 > 0.0:
                coeff = -2.0 * a * b * d2 ** (b - 1.0) / (a * d2 ** b + 1.0)
            else:
                coeff = 0.0
            for c in range(dim):
                g = _clip(coeff * (embedding[j, c] - embedding[k, c])) * alpha
                embedding[j, c] += g
                embedding[k, c] -= g
            next_sample[e] += eps[e]
            n_neg = int((epoch - next_negative[e]) / eps_neg[e])
            for _ in range(n_neg):
                k = np.random.randint(n_vertices)
                if k == j:
                    continue
                d2 = 0.0
                for c in range(dim):
                    diff = embedding[j, c] - embedding[k, c]
                    d2 += diff * diff
                if d2 <= 0.0:
                    continue
                coeff = 2.0 * gamma * b / ((0.001 + d2) * (a * d2 ** b + 1.0))
                for c in range(dim):
                    embedding[j, c] += _clip(coeff * (embedding[j, c] - embedding[k, c])) * alpha
            next_negative[e] += n_neg * eps_neg[e]
        alpha = initial_alpha * (1.0 - (epoch + 1) / n_epochs)
    return embedding


def optimize_layout(embedding: np.ndarray, graph: sp.spmatrix, n_epochs: int, a: float, b: float, *,
                    gamma: float = 1.0, negative_sample_rate: int = 5, learning_rate: float = 1.0,
                    random_state: int = 0) -> np.ndarray:
    """SGD on the fuzzy cross-entropy (Algorithm 5); returns the optimised copy of ``embedding``."""
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be positive, got {n_epochs}")
    coo = sp.coo_matrix(graph)
    eps = epochs_per_sample(coo.data.astype(np.float64), n_epochs)
    keep = eps > 0
    emb = np.ascontiguousarray(embedding, dtype=np.float64).copy()
    return _sgd(emb, coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), eps[keep], n_epochs,
                float(a), float(b), float(gamma), float(negative_sample_rate), float(learning_rate),
                int(random_state) % (2**32 - 1))


@dataclass
class UMAP:
    """UMAP with the paper's defaults (n_neighbors=15, min_dist=0.1, spread=1, spectral init).

    ``fit_transform`` stores the fuzzy graph, σ, ρ and per-stage seconds in ``stage_seconds``.
    """

    n_neighbors: int = 15
    n_components: int = 2
    min_dist: float = 0.1
    spread: float = 1.0
    n_epochs: int | None = None
    negative_sample_rate: int = 5
    repulsion_strength: float = 1.0
    learning_rate: float = 1.0
    local_connectivity: float = 1.0
    knn_method: str = "auto"
    random_state: int | None = None
    stage_seconds: dict = field(default_factory=dict, repr=False)

    def fit_transform(self, X: np.ndarray, knn: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Embed ``X``; ``knn`` = (indices, distances) skips the neighbour search."""
        X = np.asarray(X, dtype=np.float32)
        if self.n_neighbors < 2 or self.n_neighbors > X.shape[0]:
            raise ValueError(f"n_neighbors must be in [2, n_samples], got {self.n_neighbors}")
        rng = np.random.default_rng(self.random_state)
        clock = time.perf_counter()
        idx, dists = knn if knn is not None else knn_graph(X, self.n_neighbors, method=self.knn_method,
                                                             random_state=self.random_state)
        self.stage_seconds["knn"] = time.perf_counter() - clock
        clock = time.perf_counter()
        graph, self.sigma_, self.rho_ = fuzzy_simplicial_set(idx, dists, self.n_neighbors,
                                                             local_connectivity=self.local_connectivity)
        self.graph_ = graph
        n_epochs = self.n_epochs or (500 if X.shape[0] <= 10_000 else 200)
        pruned = graph.copy()
        pruned.data[pruned.data < pruned.data.max() / n_epochs] = 0.0
        pruned.eliminate_zeros()
        self.stage_seconds["graph"] = time.perf_counter() - clock
        clock = time.perf_counter()
        init = noisy_scale(spectral_init(pruned, self.n_components, random_state=self.random_state), rng)
        init = 10.0 * (init - init.min(axis=0)) / (init.max(axis=0) - init.min(axis=0))
        self.stage_seconds["init"] = time.perf_counter() - clock
        clock = time.perf_counter()
        a, b = find_ab_params(self.spread, self.min_dist)
        self.a_, self.b_ = a, b
        embedding = optimize_layout(init, pruned, n_epochs, a, b, gamma=self.repulsion_strength,
                                    negative_sample_rate=self.negative_sample_rate,
                                    learning_rate=self.learning_rate, random_state=int(rng.integers(2**31)))
        self.stage_seconds["sgd"] = time.perf_counter() - clock
        self.embedding_ = embedding.astype(np.float32)
        return self.embedding_
