"""Shared tools for dimension-reduction papers: kNN graphs and embedding-quality metrics.

- :func:`knn_graph`: the k nearest neighbours of every point, each point its own first
  neighbour (distance 0). Exact (scikit-learn) for small n, approximate (pynndescent's
  NN-descent) for large n.
- :func:`trustworthiness`: Venna & Kaski's trustworthiness (scikit-learn's implementation),

      T(k) = 1 − 2 / (n k (2n − 3k − 1)) · Σ_i Σ_{j ∈ U_i(k)} (r(i, j) − k),

  where U_i(k) are the points among i's k nearest neighbours in the embedding but not in the
  input space and r(i, j) is j's rank by input-space distance to i.
- :func:`knn_accuracy_cv`: accuracy of a k-nearest-neighbour classifier on an embedding under
  stratified K-fold cross-validation (the protocol of UMAP's Tables 1 and 2).
- :func:`procrustes_distance`: the normalised Procrustes disparity between two embeddings of
  the same points after optimal translation, scaling and rotation.
"""

from __future__ import annotations

import numpy as np

EXACT_KNN_MAX_POINTS = 4096


def knn_graph(X: np.ndarray, n_neighbors: int, *, method: str = "auto", random_state: int | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances (both ``(n, n_neighbors)``) of each point's nearest neighbours.

    ``method`` is ``"exact"`` (scikit-learn, brute force), ``"approximate"`` (pynndescent) or
    ``"auto"`` (exact up to 4096 points). Column 0 is the point itself at distance 0.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if not 1 <= n_neighbors <= X.shape[0]:
        raise ValueError(f"n_neighbors must be in [1, {X.shape[0]}], got {n_neighbors}")
    if method == "auto":
        method = "exact" if X.shape[0] <= EXACT_KNN_MAX_POINTS else "approximate"
    if method == "exact":
        from sklearn.neighbors import NearestNeighbors

        dists, idx = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(X).kneighbors(X)
    elif method == "approximate":
        from pynndescent import NNDescent

        index = NNDescent(X, n_neighbors=n_neighbors, random_state=random_state, n_jobs=1,
                          low_memory=True, compressed=False)
        idx, dists = index.neighbor_graph
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'approximate', got {method!r}")
    return np.asarray(idx, dtype=np.int64), np.asarray(dists, dtype=np.float32)


def trustworthiness(X: np.ndarray, Y: np.ndarray, n_neighbors: int = 10) -> float:
    """Trustworthiness T(k) of embedding ``Y`` of ``X`` (scikit-learn's implementation)."""
    from sklearn.manifold import trustworthiness as _trust

    if len(X) != len(Y):
        raise ValueError(f"X and Y must have the same number of rows, got {len(X)} and {len(Y)}")
    return float(_trust(X, Y, n_neighbors=n_neighbors))


def knn_accuracy_cv(Y: np.ndarray, labels: np.ndarray, ks, *, n_splits: int = 10,
                    random_state: int | None = 0) -> dict[int, float]:
    """Mean accuracy of a k-NN classifier on ``Y`` for every k in ``ks``, stratified ``n_splits``-fold CV.

    Equivalent to scikit-learn's ``KNeighborsClassifier(n_neighbors=k)`` (uniform majority vote, ties to
    the smallest label) in ``cross_val_score`` with shuffled ``StratifiedKFold``, but each fold queries
    the max(ks) nearest training points once and votes for every k from that list.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import NearestNeighbors

    ks = [int(k) for k in np.atleast_1d(ks)]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    scores: dict[int, list[float]] = {k: [] for k in ks}
    for train, test in folds.split(Y, y):
        if max(ks) > len(train):
            raise ValueError(f"k = {max(ks)} exceeds the {len(train)} training points of a fold")
        nn = NearestNeighbors(n_neighbors=max(ks)).fit(Y[train])
        neighbours = y[train][nn.kneighbors(Y[test], return_distance=False)]
        for k in ks:
            votes = np.zeros((len(test), len(classes)), dtype=np.int64)
            np.add.at(votes, (np.repeat(np.arange(len(test)), k), neighbours[:, :k].ravel()), 1)
            scores[k].append(float(np.mean(votes.argmax(axis=1) == y[test])))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def procrustes_distance(A: np.ndarray, B: np.ndarray) -> float:
    """Procrustes disparity Σ (A' − B')² after standardising both and optimally rotating B' onto A'.

    0 for embeddings equal up to translation, scaling and rotation (or reflection); at most 1.
    """
    from scipy.spatial import procrustes

    if np.shape(A) != np.shape(B):
        raise ValueError(f"A and B must have the same shape, got {np.shape(A)} and {np.shape(B)}")
    return float(procrustes(np.asarray(A, float), np.asarray(B, float))[2])
