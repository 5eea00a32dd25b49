"""common.tensor_decomp: CP algebra, ALS, sensitivity (closed form vs Monte Carlo), balancing, Tucker-2."""

import numpy as np
import pytest

from common.tensor_decomp import (
    cp_als,
    cp_balance,
    cp_relative_error,
    cp_sensitivity,
    cp_to_tensor,
    degeneracy_index,
    fold,
    khatri_rao,
    mode_product,
    rank_one_norms,
    tucker2_hosvd,
    tucker2_to_tensor,
    unfold,
)


def random_factors(shape, rank, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, rank)) for n in shape]


def test_cp_to_tensor_matches_einsum_and_unfolding():
    a, b, c = random_factors((3, 4, 5), 2)
    y = cp_to_tensor([a, b, c])
    assert np.allclose(y, np.einsum("ir,jr,kr->ijk", a, b, c))
    for n, (f, others) in enumerate([(a, [b, c]), (b, [a, c]), (c, [a, b])]):
        assert np.allclose(unfold(y, n), f @ khatri_rao(others).T)
        assert np.allclose(fold(unfold(y, n), n, y.shape), y)


def test_cp_als_recovers_exact_low_rank_tensor():
    # orthonormal terms with weights 3, 2, 1; plain ALS reaches the exact CPD from this start (from some
    # other starts it stalls at a stationary point that misses a term: ALS has no global guarantee)
    factors = [np.linalg.qr(f)[0] for f in random_factors((4, 5, 6), 3, seed=1)]
    factors[0] = factors[0] * np.array([3.0, 2.0, 1.0])
    y = cp_to_tensor(factors)
    factors, errors = cp_als(y, 3, n_iter=300, random_state=1)
    assert errors[-1] < 1e-8
    assert cp_relative_error(y, factors) < 1e-8


def test_cp_als_error_nonincreasing_and_deterministic():
    y = np.random.default_rng(3).standard_normal((4, 5, 6))
    f1, e1 = cp_als(y, 4, n_iter=50, random_state=5)
    f2, e2 = cp_als(y, 4, n_iter=50, random_state=5)
    assert np.all(np.diff(e1) <= 1e-12)
    assert all(np.array_equal(x, z) for x, z in zip(f1, f2, strict=True))


def test_sensitivity_closed_form_matches_monte_carlo():
    factors = random_factors((3, 4, 5), 2, seed=4)
    base = cp_to_tensor(factors)
    rng = np.random.default_rng(0)
    sigma = 1e-6
    draws = [np.sum((cp_to_tensor([f + sigma * rng.standard_normal(f.shape) for f in factors]) - base) ** 2) / sigma**2
             for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(cp_sensitivity(factors), rel=0.05)


def test_sensitivity_order3_formula():
    a, b, c = random_factors((3, 4, 5), 2, seed=6)
    na, nb, nc = (np.sum(f ** 2, axis=0) for f in (a, b, c))
    expected = np.sum(3 * nb * nc + 4 * na * nc + 5 * na * nb)
    assert cp_sensitivity([a, b, c]) == pytest.approx(expected)


def test_balance_keeps_tensor_and_attains_am_gm_minimum():
    factors = random_factors((3, 4, 5), 3, seed=7)
    factors[0] *= 100.0
    factors[1] /= 10.0
    balanced = cp_balance(factors)
    assert np.allclose(cp_to_tensor(balanced), cp_to_tensor(factors))
    expected = 3 * (3 * 4 * 5) ** (1 / 3) * np.sum(rank_one_norms(factors) ** (4 / 3))
    assert cp_sensitivity(balanced) == pytest.approx(expected)
    assert cp_sensitivity(balanced) <= cp_sensitivity(factors)
    # any other admissible rescaling is worse
    s = np.array([2.0, 0.5, 1.0])
    assert cp_sensitivity([f * k for f, k in zip(balanced, s, strict=True)]) >= cp_sensitivity(balanced)


def test_degeneracy_index_orthogonal_terms_is_one_and_cancelling_terms_large():
    e = np.eye(3)
    y = cp_to_tensor([e, e, e])
    assert degeneracy_index(y, [e, e, e]) == pytest.approx(1.0)
    a = np.array([[1.0, 1.0], [0.0, 1e-3]])
    factors = [a * np.array([1e3, -1e3]), a, a]          # two huge nearly collinear terms that cancel
    assert degeneracy_index(cp_to_tensor(factors), factors) > 1e3


def test_tucker2_full_rank_is_exact_and_hooi_not_worse():
    y = np.random.default_rng(8).standard_normal((4, 5, 6))
    core, us = tucker2_hosvd(y, (1, 2), (5, 6))
    assert np.allclose(tucker2_to_tensor(core, (1, 2), us), y)
    c0, u0 = tucker2_hosvd(y, (1, 2), (2, 3))
    c1, u1 = tucker2_hosvd(y, (1, 2), (2, 3), n_iter=10)
    e0 = np.linalg.norm(y - tucker2_to_tensor(c0, (1, 2), u0))
    e1 = np.linalg.norm(y - tucker2_to_tensor(c1, (1, 2), u1))
    assert e1 <= e0 + 1e-12
    assert np.allclose(mode_product(y, np.eye(5), 1), y)


def test_cp_als_matches_tensorly_parafac_from_same_start():
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import parafac

    tl.set_backend("numpy")
    y = np.random.default_rng(9).standard_normal((4, 5, 6))
    start = random_factors(y.shape, 3, seed=10)
    ours, _ = cp_als(y, 3, n_iter=20, init=start)
    theirs = parafac(y, 3, n_iter_max=20, init=tl.cp_tensor.CPTensor((np.ones(3), [f.copy() for f in start])), tol=0)
    assert np.allclose(cp_to_tensor(ours), tl.cp_to_tensor(theirs), atol=1e-8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        cp_als(np.zeros((2, 2, 2)), 0)
    with pytest.raises(ValueError):
        khatri_rao([np.ones((2, 2)), np.ones((2, 3))])
    with pytest.raises(ValueError):
        tucker2_hosvd(np.zeros((2, 3, 4)), (1, 1), (1, 1))
    with pytest.raises(ValueError):
        unfold(np.zeros((2, 2)), 2)
