"""CPD-EPC: the factor subproblem (exact QCQP), the full correction (error kept, ss lowered), the layers."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from common.tensor_decomp import (
    cp_als,
    cp_balance,
    cp_sensitivity,
    cp_to_tensor,
    tucker2_hosvd,
)
from papers.stable_cpd.stable_cpd import (
    CPConv2d,
    SVDConv2d,
    Tucker2Conv2d,
    cp_epc,
    cp_params,
    epc_factor_update,
    epc_weights,
    kernel_to_tensor,
    matched_svd_rank,
    matched_tucker2_rank,
    svd_kernel,
    svd_params,
    tensor_to_kernel,
    tucker2_params,
)


def test_kernel_reshape_round_trip():
    w = np.random.default_rng(0).standard_normal((6, 4, 3, 3))
    y = kernel_to_tensor(w)
    assert y.shape == (9, 4, 6)
    assert y[3 * 1 + 2, 3, 5] == w[5, 3, 1, 2]
    assert np.array_equal(tensor_to_kernel(y), w)


def test_epc_weights_give_sensitivity_as_function_of_one_factor():
    rng = np.random.default_rng(1)
    factors = [rng.standard_normal((n, 3)) for n in (3, 4, 5)]
    w = epc_weights(factors, 0)
    scaled = [factors[0] * 2.0, factors[1], factors[2]]
    # ss is affine in ‖a_r‖²: doubling A adds 3 Σ_r w_r ‖a_r‖²
    assert cp_sensitivity(scaled) - cp_sensitivity(factors) == pytest.approx(3 * np.sum(w * np.sum(factors[0] ** 2, axis=0)))


def test_factor_update_solves_the_qcqp():
    """Feasible, active constraint, and no feasible random point has a smaller weighted norm near the optimum."""
    rng = np.random.default_rng(2)
    y = rng.standard_normal((4, 12))
    k = rng.standard_normal((12, 3))
    w = rng.uniform(0.5, 2.0, 3)
    ls = np.linalg.lstsq(k, y.T, rcond=None)[0].T
    delta_sq = 1.2 * np.sum((y - ls @ k.T) ** 2)
    a, mu = epc_factor_update(y, k, w, delta_sq)
    assert mu > 0
    assert np.sum((y - a @ k.T) ** 2) == pytest.approx(delta_sq, rel=1e-8)
    # KKT: A (KᵀK + μ diag w) = Y K
    assert np.allclose(a @ (k.T @ k + mu * np.diag(w)), y @ k, atol=1e-8)
    best = np.sum(w * np.sum(a ** 2, axis=0))
    for _ in range(200):
        b = a + 0.05 * rng.standard_normal(a.shape)
        if np.sum((y - b @ k.T) ** 2) <= delta_sq:
            assert np.sum(w * np.sum(b ** 2, axis=0)) >= best - 1e-12


def test_factor_update_infeasible_gives_least_squares():
    rng = np.random.default_rng(3)
    y, k, w = rng.standard_normal((3, 10)), rng.standard_normal((10, 2)), np.ones(2)
    a, mu = epc_factor_update(y, k, w, 0.0)
    assert mu == 0.0
    assert np.allclose(a, np.linalg.lstsq(k, y.T, rcond=None)[0].T)


def test_epc_keeps_error_and_lowers_sensitivity_on_degenerate_als():
    rng = np.random.default_rng(4)
    y = rng.standard_normal((5, 6, 7))
    als, _ = cp_als(y, 5, n_iter=200, random_state=0)
    start = cp_balance(als)
    delta = np.linalg.norm(y - cp_to_tensor(start))
    epc, hist = cp_epc(y, als, n_outer=4, n_inner=80, n_sweeps=20)
    assert np.linalg.norm(y - cp_to_tensor(epc)) <= delta * (1 + 1e-10)
    assert cp_sensitivity(epc) <= cp_sensitivity(start)
    assert hist["ss_end"] == pytest.approx(cp_sensitivity(epc))


def test_epc_alternating_only_is_monotone():
    rng = np.random.default_rng(5)
    y = rng.standard_normal((4, 5, 6))
    als, _ = cp_als(y, 4, n_iter=100, random_state=1)
    epc, hist = cp_epc(y, als, n_outer=0, n_sweeps=15)
    ss = hist["ss_start"], hist["ss_end"]
    assert ss[1] <= ss[0] * (1 + 1e-12)


def test_cp_layer_equals_conv_with_reconstructed_kernel():
    rng = np.random.default_rng(6)
    factors = [rng.standard_normal((9, 3)), rng.standard_normal((4, 3)), rng.standard_normal((5, 3))]
    bias = torch.randn(5)
    x = torch.randn(2, 4, 6, 6)
    kernel = torch.as_tensor(tensor_to_kernel(cp_to_tensor(factors)), dtype=torch.float32)
    assert torch.allclose(CPConv2d(factors, bias)(x), F.conv2d(x, kernel, bias, padding=1), atol=1e-4)
    w = rng.standard_normal((5, 4, 3, 3))
    first, last = svd_kernel(w, 5)
    approx = torch.as_tensor(np.einsum("tq,qshw->tshw", last, first), dtype=torch.float32)
    assert torch.allclose(SVDConv2d(first, last, bias)(x), F.conv2d(x, approx, bias, padding=1), atol=1e-4)
    y = kernel_to_tensor(w)
    core, us = tucker2_hosvd(y, (1, 2), (4, 5))                 # full ranks: exact
    full = torch.as_tensor(w, dtype=torch.float32)
    assert torch.allclose(Tucker2Conv2d(core, us, bias)(x), F.conv2d(x, full, bias, padding=1), atol=1e-4)


def test_parameter_budgets():
    shape = (32, 16, 3, 3)
    assert cp_params(shape, 8) == 8 * (16 + 9 + 32)
    r1, r2 = matched_tucker2_rank(shape, cp_params(shape, 8))
    assert tucker2_params(shape, r1, r2) <= cp_params(shape, 8)
    q = matched_svd_rank(shape, cp_params(shape, 16))
    assert svd_params(shape, q) <= cp_params(shape, 16) < svd_params(shape, q + 1)
