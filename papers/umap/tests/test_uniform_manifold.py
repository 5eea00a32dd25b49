import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits, load_iris

from common.embedding_metrics import knn_graph, trustworthiness
from papers.umap import (
    UMAP,
    epochs_per_sample,
    find_ab_params,
    fuzzy_simplicial_set,
    fuzzy_union,
    smooth_knn_dist,
)


@pytest.fixture(scope="module")
def digits_knn():
    X = load_digits().data[:600]
    idx, dists = knn_graph(X, 15, method="exact")
    return X, idx, dists


def test_ab_params_match_umap_learn():
    uu = pytest.importorskip("umap.umap_")
    for spread, min_dist in [(1.0, 0.1), (1.0, 0.5), (2.0, 0.01)]:
        ours = find_ab_params(spread, min_dist)
        ref = uu.find_ab_params(spread, min_dist)
        np.testing.assert_allclose(ours, ref, atol=1e-3)
    np.testing.assert_allclose(find_ab_params(1.0, 0.1), (1.577, 0.895), atol=1e-3)


def test_sigma_rho_and_graph_match_umap_learn(digits_knn):
    uu = pytest.importorskip("umap.umap_")
    X, idx, dists = digits_knn
    graph, sigma, rho = fuzzy_simplicial_set(idx, dists, 15)
    ref_graph, ref_sigma, ref_rho = uu.fuzzy_simplicial_set(
        X, 15, np.random.RandomState(0), "euclidean", knn_indices=idx, knn_dists=dists)[:3]
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-4)
    np.testing.assert_allclose(rho, ref_rho, rtol=1e-4)
    ref_graph = sp.csr_matrix(ref_graph)
    assert ((graph != 0) != (ref_graph != 0)).nnz == 0
    assert abs(graph - ref_graph).max() < 1e-4


def test_smooth_knn_hits_log2k(digits_knn):
    _, _, dists = digits_knn
    sigma, rho = smooth_knn_dist(dists, 15)
    excess = np.maximum(dists[:, 1:] - rho[:, None], 0.0)
    psum = np.exp(-excess / sigma[:, None]).sum(axis=1)
    np.testing.assert_allclose(psum, np.log2(15), atol=1e-3)
    np.testing.assert_allclose(rho, dists[:, 1], rtol=1e-6)  # digits has no duplicates in [:600]


def test_fuzzy_union_is_probabilistic_tconorm():
    A = sp.csr_matrix(np.array([[0.0, 0.5, 0.0], [0.2, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    B = fuzzy_union(A).toarray()
    np.testing.assert_allclose(B, B.T)
    assert B[0, 1] == pytest.approx(0.5 + 0.2 - 0.1)
    assert B[1, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fuzzy_union(A, 1.5)


def test_epochs_per_sample():
    eps = epochs_per_sample(np.array([1.0, 0.5, 0.0]), 200)
    np.testing.assert_allclose(eps, [1.0, 2.0, -1.0])


def test_umap_iris_trustworthiness_and_determinism():
    X = load_iris().data
    model = UMAP(n_neighbors=10, min_dist=0.01, n_epochs=200, random_state=42)
    Y = model.fit_transform(X)
    assert Y.shape == (150, 2)
    assert trustworthiness(X, Y, 10) >= 0.97
    np.testing.assert_array_equal(Y, UMAP(n_neighbors=10, min_dist=0.01, n_epochs=200,
                                          random_state=42).fit_transform(X))
    assert set(model.stage_seconds) == {"knn", "graph", "init", "sgd"}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        find_ab_params(1.0, 2.0)
    with pytest.raises(ValueError):
        smooth_knn_dist(np.zeros((5, 1)), 1)
    with pytest.raises(ValueError):
        UMAP(n_neighbors=1).fit_transform(np.zeros((10, 3)))


def test_graph_parity_records_raw_values():
    pytest.importorskip("umap")
    from papers.umap.benchmark import graph_parity

    parity = graph_parity(load_iris().data, 10)
    assert parity["graph_pattern_mismatch"] == 0
    assert 0 <= parity["graph_max_abs"] < 1e-5  # a few float32 ulps, not rounded away
    assert parity["sigma_max_rel"] < 1e-4 and parity["rho_max_rel"] < 1e-4 and parity["ab_max_abs"] < 1e-3


def test_paired_runs_and_per_seed_accuracy_on_iris():
    pytest.importorskip("umap")
    from papers.umap.benchmark import paired_runs, per_seed_accuracy

    iris = load_iris()
    knn = knn_graph(iris.data, 10, method="exact")
    runs = paired_runs(iris.data, knn, [0, 1], n_epochs=30, n_neighbors=10, min_dist=0.01)
    for name in ("ours", "umap_learn"):
        assert len(runs[name]["Y"]) == len(runs[name]["seconds"]) == len(runs[name]["trust"]) == 2
        assert runs[name]["Y"][0].shape == (150, 2) and all(t > 0.9 for t in runs[name]["trust"])
    acc = per_seed_accuracy(runs["ours"]["Y"], iris.target, ks=(5, 10))
    assert set(acc) == {5, 10} and all(len(v) == 2 and 0.8 < min(v) <= 1 for v in acc.values())


def test_proxy_points_are_deterministic_mnist1d_signals():
    from papers.umap.benchmark import proxy_points

    X, y = proxy_points(300, seed=1)
    assert X.shape == (300, 40) and X.dtype == np.float32 and set(np.unique(y)) <= set(range(10))
    X2, _ = proxy_points(300, seed=1)
    assert np.array_equal(X, X2)


def test_subsample_stability_pairs_subsamples_and_measures_procrustes():
    from papers.umap.benchmark import subsample_stability

    X = load_iris().data
    linear = {"exact": lambda s: (lambda Z: Z[:, :2] * 3.0 + 1.0),       # same map on any subset: distance 0
              "noisy": lambda s: (lambda Z: Z[:, :2] + np.random.default_rng(len(Z)).normal(size=(len(Z), 2)))}
    out = subsample_stability(X, [0.3, 0.6], [0, 1, 2], linear)
    assert set(out) == {"exact", "noisy"} and all(len(out["exact"][f]) == 3 for f in (0.3, 0.6))
    assert max(max(v) for v in out["exact"].values()) < 1e-12
    assert min(min(v) for v in out["noisy"].values()) > 1e-3


def test_tsne_dimension_times_refuses_barnes_hut_beyond_three_dimensions():
    from papers.umap.benchmark import tsne_dimension_times

    with pytest.raises(ValueError, match="d < 4"):
        tsne_dimension_times(load_iris().data, (2, 4))
    times = tsne_dimension_times(load_iris().data[:60], (2, 3), max_iter=250)
    assert set(times) == {2, 3} and all(t > 0 for t in times.values())
