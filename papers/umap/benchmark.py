"""Side-by-side experiments: our UMAP, umap-learn and the paper's baselines on the same data.

Every function takes explicit hyperparameters and a seed, so the notebooks stay thin:

- :func:`embedders`: zero-argument callables for every method of Table 1 (same data, same seed);
- :func:`knn_accuracy_table`: Table 1's kNN-classifier accuracies (stratified 10-fold CV);
- :func:`graph_parity`: our fuzzy graph, σ and ρ against umap-learn's, fed the same exact kNN;
- :func:`paired_runs`: our UMAP and umap-learn on the same kNN and seeds, interleaved (embeddings,
  seconds, trustworthiness), and :func:`per_seed_accuracy`: Table 1's accuracies per seed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from common.embedding_metrics import knn_accuracy_cv, knn_graph
from papers.umap.uniform_manifold import UMAP, find_ab_params, fuzzy_simplicial_set

# Table 1, PenDigits block (arXiv 1802.03426 v3), k = 10, 20, 40, 80, 160.
PAPER_TABLE1_PENDIGITS = {
    "umap": [0.973, 0.976, 0.954, 0.951, 0.951],
    "tsne": [0.977, 0.973, 0.956, 0.948, 0.949],
}
KS = (10, 20, 40, 80, 160)


def single_thread_env() -> None:
    """Pin numba and the BLAS/OpenMP pools to one thread (call before importing umap).

    Forced, not defaulted: the embeddings (ARPACK's spectral initialisation, the SGD) change with the
    thread count, so a caller's OMP_NUM_THREADS=2 (CI's second pass) must not reach them. BLAS pools that
    NumPy already started are limited with threadpoolctl.
    """
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    warnings.filterwarnings("ignore", module="umap")
    warnings.filterwarnings("ignore", category=FutureWarning)


def ours(n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int = 200, n_components: int = 2,
         seed: int = 0, knn: tuple[np.ndarray, np.ndarray] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Our UMAP as a function X -> embedding (``knn`` = (indices, distances) skips the neighbour search)."""
    return lambda X: UMAP(n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs,
                          n_components=n_components, random_state=seed).fit_transform(X, knn=knn)


def umap_learn(n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int = 200, n_components: int = 2,
               seed: int = 0, knn: tuple[np.ndarray, np.ndarray] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """umap-learn (the peer) with the same hyperparameters; a fixed random_state makes it single-threaded.

    ``knn`` is passed as umap-learn's ``precomputed_knn`` (indices, distances).
    """
    import umap

    extra = {} if knn is None else {"precomputed_knn": (knn[0], knn[1])}
    return lambda X: umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs,
                               n_components=n_components, random_state=seed, n_jobs=1, **extra).fit_transform(X)


def baselines(seed: int = 0, n_jobs: int = 1, n_components: int = 2) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The paper's comparison methods with library defaults: BH t-SNE, FFT t-SNE, eigenmaps, Isomap, PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE, Isomap, SpectralEmbedding

    def opentsne(X):
        from openTSNE import TSNE as OpenTSNE

        return np.asarray(OpenTSNE(n_components=n_components, random_state=seed, n_jobs=n_jobs).fit(X))

    return {
        "tsne_bh": lambda X: TSNE(n_components=n_components, random_state=seed, n_jobs=n_jobs).fit_transform(X),
        "opentsne": opentsne,
        "eigenmaps": lambda X: SpectralEmbedding(n_components=n_components, random_state=seed,
                                                 n_jobs=n_jobs).fit_transform(X),
        "isomap": lambda X: Isomap(n_components=n_components, n_jobs=n_jobs).fit_transform(X),
        "pca": lambda X: PCA(n_components=n_components, random_state=seed).fit_transform(X),
    }


def timed(fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> tuple[np.ndarray, float]:
    """Embedding and wall-clock seconds of one call."""
    start = time.perf_counter()
    Y = fn(X)
    return np.asarray(Y), time.perf_counter() - start


def knn_accuracy_table(embeddings: dict[str, np.ndarray], labels: np.ndarray, ks=KS, *, n_splits: int = 10,
                       seed: int = 0) -> dict[str, dict[int, float]]:
    """Table 1: mean stratified ``n_splits``-fold accuracy of a k-NN classifier on each embedding."""
    return {name: knn_accuracy_cv(Y, labels, ks, n_splits=n_splits, random_state=seed)
            for name, Y in embeddings.items()}


def graph_parity(X: np.ndarray, n_neighbors: int = 15, *, spread: float = 1.0, min_dist: float = 0.1) -> dict:
    """Max deviations of a, b, σ, ρ and the symmetric graph from umap-learn's, on the same exact kNN."""
    import umap.umap_ as reference

    idx, dists = knn_graph(X, n_neighbors, method="exact")
    graph, sigma, rho = fuzzy_simplicial_set(idx, dists, n_neighbors)
    ref_graph, ref_sigma, ref_rho = reference.fuzzy_simplicial_set(
        X, n_neighbors, np.random.RandomState(0), "euclidean", knn_indices=idx, knn_dists=dists)[:3]
    ref_graph = sp.csr_matrix(ref_graph)
    a, b = find_ab_params(spread, min_dist)
    ref_a, ref_b = reference.find_ab_params(spread, min_dist)
    # Raw values (no rounding): both sides get the same kNN, so a, b, σ and ρ agree exactly and the
    # graph to a few float32 ulps; a rounding-level graph difference is recorded with a log_factor.
    return {
        "ab_max_abs": float(max(abs(a - ref_a), abs(b - ref_b))),
        "sigma_max_rel": float(np.max(np.abs(sigma - ref_sigma) / np.abs(ref_sigma))),
        "rho_max_rel": float(np.max(np.abs(rho - ref_rho) / np.maximum(np.abs(ref_rho), 1e-12))),
        "graph_max_abs": float(abs(graph - ref_graph).max()),
        "graph_pattern_mismatch": int(((graph != 0) != (ref_graph != 0)).nnz),
        "a": a, "b": b,
    }


def paired_runs(X: np.ndarray, knn: tuple[np.ndarray, np.ndarray], seeds, *, n_epochs: int = 500,
                n_neighbors: int = 15, min_dist: float = 0.1, trust_k: int = 10) -> dict[str, dict[str, list]]:
    """Our UMAP and umap-learn on the same data, kNN and seeds, interleaved seed by seed.

    Returns, per implementation, the per-seed embeddings (``"Y"``), wall-clock seconds of each fit with the
    kNN fed (``"seconds"``: graph, initialisation and SGD) and trustworthiness (``"trust"``, k = ``trust_k``).
    Interleaving makes the per-seed time pairs see the same machine load.
    """
    from common.embedding_metrics import trustworthiness

    out = {name: {"Y": [], "seconds": [], "trust": []} for name in ("ours", "umap_learn")}
    for s in seeds:
        for name, make in (("ours", ours), ("umap_learn", umap_learn)):
            Y, seconds = timed(make(n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs, seed=s,
                                    knn=knn), X)
            out[name]["Y"].append(Y)
            out[name]["seconds"].append(seconds)
            out[name]["trust"].append(trustworthiness(X, Y, trust_k))
    return out


def per_seed_accuracy(embeddings: list[np.ndarray], labels: np.ndarray, ks=KS, *, n_splits: int = 10,
                      seed: int = 0) -> dict[int, list[float]]:
    """Table 1's kNN accuracy of each embedding (same CV folds for all): ``{k: [one value per embedding]}``."""
    tables = [knn_accuracy_cv(Y, labels, ks, n_splits=n_splits, random_state=seed) for Y in embeddings]
    return {k: [t[k] for t in tables] for k in ks}


# ------------------------------------------------------------- proxies of Figures 8 and 11, t-SNE in Figure 9

def proxy_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST-1D signals (length 40, 10 classes; Greydanus 2020), generated procedurally (no download):
    the stand-in for the paper's GoogleNews / Flow Cytometry data in the scaling proxy (Figure 11)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(np.ceil(n / 0.8)) + 1, seed, 0.8
    data = make_dataset(args)
    X = np.concatenate([np.asarray(data["x"]), np.asarray(data["x_test"])]).astype(np.float32)
    y = np.concatenate([np.asarray(data["y"]), np.asarray(data["y_test"])])
    return X[:n], y[:n]


def opentsne(seed: int = 0, n_components: int = 2, n_iter: int | None = None,
             method: str = "fft") -> Callable[[np.ndarray], np.ndarray]:
    """openTSNE (FIt-SNE's interpolation, ``method="fft"``, or Barnes-Hut) on one thread as X -> embedding;
    ``n_iter`` shortens both phases (exaggeration ``n_iter // 2``, then ``n_iter``; default 250 + 500)."""
    from openTSNE import TSNE as OpenTSNE

    iters = {} if n_iter is None else {"n_iter": int(n_iter), "early_exaggeration_iter": max(int(n_iter) // 2, 1)}
    return lambda X: np.asarray(OpenTSNE(n_components=n_components, random_state=seed, n_jobs=1,
                                         negative_gradient_method=method, **iters).fit(np.asarray(X, np.float64)))


def runtime_scaling(X: np.ndarray, sizes, *, n_epochs: int, tsne_iter: int | None = None,
                    tsne_method: str = "fft", seed: int = 0) -> dict[str, list[float]]:
    """Figure 11's proxy: end-to-end seconds (each method computes its own kNN) on the first ``n`` rows of
    ``X`` for every ``n`` in ``sizes``: our UMAP, umap-learn and openTSNE (FIt-SNE), interleaved size by size
    so each size's three runs see the same load (all warm: the NN-descent path is compiled first, untimed).
    Above 4096 points our kNN and umap-learn's are approximate (NN-descent), below exact."""
    makers = {"ours": lambda: ours(n_epochs=n_epochs, seed=seed),
              "umap_learn": lambda: umap_learn(n_epochs=n_epochs, seed=seed),
              "opentsne": lambda: opentsne(seed=seed, n_iter=tsne_iter, method=tsne_method)}
    out: dict[str, list[float]] = {name: [] for name in makers}
    if max(sizes) > 4096:  # compile the NN-descent path (both UMAPs use pynndescent above 4096 points) untimed
        warm = X[:min(len(X), 4200)]
        ours(n_epochs=1, seed=seed)(warm)
        umap_learn(n_epochs=1, seed=seed)(warm)
    for n in sizes:
        if n > len(X):
            raise ValueError(f"size {n} exceeds the {len(X)} points given")
        for name, make in makers.items():
            out[name].append(timed(make(), X[:n])[1])
    return out


def subsample_stability(X: np.ndarray, fractions, seeds, makers: dict[str, Callable[[int], Callable]]
                        ) -> dict[str, dict[float, list[float]]]:
    """Figure 8's proxy: for each seed, each method embeds all of ``X`` and random subsamples of it (the same
    subsample for every method: paired); the normalised Procrustes distance between the subsample's embedding
    and the full embedding restricted to the same points. ``makers[name](seed)`` returns X -> embedding.
    Returns ``{name: {fraction: [one distance per seed]}}``."""
    from common.embedding_metrics import procrustes_distance

    out = {name: {f: [] for f in fractions} for name in makers}
    for s in seeds:
        rng = np.random.default_rng(s)
        subsets = {f: np.sort(rng.choice(len(X), int(round(f * len(X))), replace=False)) for f in fractions}
        for name, make in makers.items():
            full = make(s)(X)
            for f, idx in subsets.items():
                out[name][f].append(procrustes_distance(full[idx], make(s)(X[idx])))
    return out


def tsne_dimension_times(X: np.ndarray, dims=(2, 3), *, repeats: int = 1, max_iter: int = 1000,
                         seed: int = 0) -> dict[int, float]:
    """t-SNE's side of Figure 9: scikit-learn's Barnes-Hut t-SNE (the paper ran MulticoreTSNE, also
    Barnes-Hut) seconds against the embedding dimension, median over ``repeats`` interleaved rounds.
    Barnes-Hut is limited to d < 4 in scikit-learn (its tree has 2^d children per node)."""
    from sklearn.manifold import TSNE

    if max(dims) >= 4:
        raise ValueError("scikit-learn's Barnes-Hut t-SNE supports d < 4 only")
    seconds: dict[int, list[float]] = {d: [] for d in dims}
    for _ in range(repeats):
        for d in dims:
            fn = lambda Z, d=d: TSNE(n_components=d, random_state=seed, n_jobs=1, max_iter=max_iter).fit_transform(Z)  # noqa: E731
            seconds[d].append(timed(fn, X)[1])
    return {d: float(np.median(t)) for d, t in seconds.items()}
