"""Tests of common/gen_metrics.py: PRDC on hand-computed cases, k-occurrence against brute force."""

import numpy as np
import pytest
from scipy import stats
from sklearn.neighbors import NearestNeighbors

from common import gen_metrics as gm


def test_kth_neighbour_distance_on_a_line():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    # 1st NN: 1, 1, 2, 4 ; 2nd NN: 3, 2, 3, 6
    assert gm.kth_neighbour_distance(x, 1) == pytest.approx([1, 1, 2, 4])
    assert gm.kth_neighbour_distance(x, 2) == pytest.approx([3, 2, 3, 6])


def test_prdc_hand_computed_1d_case():
    real = np.array([[0.0], [1.0], [3.0], [7.0]])   # k=1 radii 1, 1, 2, 4
    fake = np.array([[0.5], [5.0], [20.0]])          # k=1 radii 4.5, 4.5, 15
    out = gm.prdc(real, fake, k=1)
    # fake 0.5 in ball(0,1) and ball(1,1); 5.0 in ball(3,2)? |5-3|=2 not < 2; ball(7,4): 2 < 4 yes; 20 in none
    assert out["precision"] == pytest.approx(2 / 3)
    # density: fake 0.5 in 2 balls, fake 5 in 1 ball, 20 in 0 -> 3 / (1 * 3)
    assert out["density"] == pytest.approx(1.0)
    # coverage: nearest fake of each real: 0->0.5 (0.5<1 yes), 1->0.5 (0.5<1 yes), 3->5 (2<2 no), 7->5 (2<4 yes)
    assert out["coverage"] == pytest.approx(3 / 4)
    # recall: real i within fake radius: 0.5 covers |x-0.5|<4.5 -> 0,1,3 ; 5 covers 1,3,7 ; 20 covers 7 -> all
    assert out["recall"] == pytest.approx(1.0)


def test_prdc_strict_inequality_on_the_boundary():
    real = np.array([[0.0], [2.0]])                  # k=1 radii 2, 2
    fake = np.array([[4.0], [10.0]])                 # |4-2| = 2 is on the boundary: outside
    assert gm.prdc(real, fake, k=1)["precision"] == 0.0


def test_prdc_identical_sets_are_perfect_on_precision_and_recall():
    x = np.random.default_rng(0).normal(size=(200, 4))
    out = gm.prdc(x, x.copy(), k=5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0


def test_prdc_matches_a_brute_force_loop():
    rng = np.random.default_rng(3)
    real, fake, k = rng.normal(size=(60, 3)), rng.normal(0.3, 1.2, size=(45, 3)), 4
    def nnd(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]                # index 0 is the point itself
    rr, rf = nnd(real), nnd(fake)
    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    expected = {
        "precision": np.mean([any(d[i, j] < rr[i] for i in range(60)) for j in range(45)]),
        "recall": np.mean([any(d[i, j] < rf[j] for j in range(45)) for i in range(60)]),
        "density": sum(d[i, j] < rr[i] for i in range(60) for j in range(45)) / (k * 45),
        "coverage": np.mean([d[i].min() < rr[i] for i in range(60)]),
    }
    out = gm.prdc(real, fake, k=k)
    for key, val in expected.items():
        assert out[key] == pytest.approx(val), key


def test_k_occurrence_hand_computed_line():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    # k=1 neighbours: 0->1, 1->0, 3->1, 7->3  => N_1 = [1, 2, 1, 0]
    assert gm.k_occurrence(x, k=1).tolist() == [1, 2, 1, 0]


def test_k_occurrence_sums_to_kn_and_matches_sklearn_neighbours():
    x = np.random.default_rng(1).normal(size=(300, 10))
    k = 5
    n_k = gm.k_occurrence(x, k)
    assert n_k.sum() == k * len(x) and n_k.dtype == np.int64
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)   # includes self at column 0
    assert np.all(idx[:, 0] == np.arange(len(x)))
    expected = np.bincount(idx[:, 1:].ravel(), minlength=len(x))
    assert np.array_equal(n_k, expected)


def test_official_self_inclusive_count_is_one_plus_n_k_minus_one():
    # the official notebook's kneighbors_graph(X) counts each point as its own neighbour
    x = np.random.default_rng(2).normal(size=(200, 6))
    nn = NearestNeighbors(n_neighbors=5).fit(x)
    official = np.asarray(nn.kneighbors_graph(x).sum(axis=0)).ravel()
    assert np.array_equal(official, 1 + gm.k_occurrence(x, 4))


def test_skewness_matches_scipy_and_constant_is_zero():
    v = np.array([0, 0, 1, 1, 2, 9])
    m, s = v.mean(), v.std()
    assert gm.hubness_skewness(v) == pytest.approx(np.mean((v - m) ** 3) / s ** 3)
    assert gm.hubness_skewness(v) == pytest.approx(stats.skew(v))
    assert gm.hubness_skewness([5, 5, 5, 5]) == 0.0


def test_hubness_grows_with_dimension_on_gaussians():
    rng = np.random.default_rng(0)
    low = gm.hubness_skewness(gm.k_occurrence(rng.normal(size=(1000, 2)), 5))
    high = gm.hubness_skewness(gm.k_occurrence(rng.normal(size=(1000, 100)), 5))
    assert high > low + 0.5


def test_errors():
    with pytest.raises(ValueError):
        gm.k_occurrence(np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError):
        gm.prdc(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        gm.prdc(np.full((5, 2), np.nan), np.zeros((5, 2)))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_the_prdc_package(k, capsys):
    """Peer cross-check: the four numbers equal the `prdc` package's (Naeem et al.'s reference code)."""
    import prdc as peer  # installed by `make env` (the papers extra)
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 6))
    fake = rng.normal(loc=0.3, scale=1.2, size=(120, 6))
    ours = gm.prdc(real, fake, k=k)
    theirs = peer.compute_prdc(real, fake, nearest_k=k)
    capsys.readouterr()  # the package prints the sample sizes
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-12), name

