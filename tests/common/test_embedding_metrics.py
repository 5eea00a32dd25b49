import os

import numpy as np
import pytest

from common.embedding_metrics import knn_accuracy_cv, knn_graph, procrustes_distance, trustworthiness


def test_knn_graph_exact():
    X = np.random.default_rng(0).normal(size=(300, 5))
    idx, d = knn_graph(X, 10, method="exact")
    assert idx.shape == d.shape == (300, 10)
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    assert np.all(np.diff(d, axis=1) >= 0)
    with pytest.raises(ValueError):
        knn_graph(X, 10, method="nope")
    with pytest.raises(ValueError):
        knn_graph(X, 0)


@pytest.mark.skipif(not os.environ.get("SLOW_TESTS"), reason="pynndescent JIT-compiles for ~25 s; set SLOW_TESTS=1")
def test_knn_graph_approximate_agrees_with_exact():
    X = np.random.default_rng(0).normal(size=(300, 5))
    idx, _ = knn_graph(X, 10, method="exact")
    idx2, _ = knn_graph(X, 10, method="approximate", random_state=0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, idx2, strict=True)])
    assert recall > 0.9


def test_trustworthiness_of_identity_is_one():
    X = np.random.default_rng(1).normal(size=(100, 3))
    assert trustworthiness(X, X, 5) == pytest.approx(1.0)


def test_knn_accuracy_separable():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 50)
    Y = rng.normal(size=(100, 2)) + 10 * labels[:, None]
    assert knn_accuracy_cv(Y, labels, [5]) == {5: 1.0}
    with pytest.raises(ValueError):
        knn_accuracy_cv(Y, labels, [0])


def test_knn_accuracy_matches_sklearn_classifier():
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=200)
    Y = rng.normal(size=(200, 2)) + labels[:, None]
    ours = knn_accuracy_cv(Y, labels, [1, 7, 40], n_splits=5, random_state=0)
    for k in (1, 7, 40):
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
        ref = cross_val_score(KNeighborsClassifier(n_neighbors=k), Y, labels, cv=folds).mean()
        assert ours[k] == pytest.approx(ref)


def test_procrustes_invariances():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(50, 2))
    R = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert procrustes_distance(A, 3 * A @ R + 7) == pytest.approx(0.0, abs=1e-12)
    assert procrustes_distance(A, rng.normal(size=(50, 2))) > 0.5
