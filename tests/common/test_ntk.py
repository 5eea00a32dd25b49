"""NTK tools against explicit double loops of autograd gradients (float64), and their invariants."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from common import ntk
from common.smallnets import MLP, SmallCNN1d


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP(5, (7, 6), 3).double()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)


def test_jacobians_match_autograd(mlp, data):
    X, _ = data
    J = ntk.per_example_jacobians(mlp, X)
    P = sum(p.numel() for p in mlp.parameters())
    assert J.shape == (4, 3, P)
    out = mlp(X[2:3]).squeeze(0)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(out[1], list(mlp.parameters()))])
    torch.testing.assert_close(J[2, 1], g, rtol=1e-12, atol=1e-12)


def test_entk_and_pntk_match_explicit_loops(mlp, data):
    X1, X2 = data
    ref = ntk.explicit_entk(mlp, X1, X2)
    torch.testing.assert_close(ntk.entk(mlp, X1, X2), ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk.mlp_entk(mlp, X1, X2), ref, rtol=1e-11, atol=1e-11)
    pref = ntk.explicit_pntk(mlp, X1, X2)
    torch.testing.assert_close(ntk.pntk(mlp, X1, X2), pref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk.mlp_pntk(mlp, X1, X2), pref, rtol=1e-11, atol=1e-11)
    # the pNTK is the average block entry of the eNTK: (1/O) sum_kl Theta_kl
    torch.testing.assert_close(ntk.sum_of_logits(ref), pref, rtol=1e-11, atol=1e-11)


def test_cnn_pntk_matches_explicit_loop():
    torch.manual_seed(2)
    model = SmallCNN1d(channels=(2, 3), n_classes=4, length=8).double()
    X = torch.randn(3, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(ntk.entk(model, X), ntk.explicit_entk(model, X, X), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk.pntk(model, X), ntk.explicit_pntk(model, X, X), rtol=1e-11, atol=1e-11)


def test_mlp_without_bias(data):
    torch.manual_seed(3)
    model = MLP(5, (4,), 2, bias=False, activation="tanh").double()
    X1, X2 = data
    torch.testing.assert_close(ntk.mlp_entk(model, X1, X2), ntk.entk(model, X1, X2), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk.mlp_pntk(model, X1, X2), ntk.pntk(model, X1, X2), rtol=1e-11, atol=1e-11)


def test_linear_readout_only_is_exact():
    """A purely linear model f(x) = W x + b has Θ = (xᵀx' + 1) I_O: the pNTK is exact."""
    model = MLP(4, (), 3).double()
    X = torch.randn(5, 4, dtype=torch.float64)
    theta = ntk.entk(model, X)
    k = X @ X.T + 1
    torch.testing.assert_close(theta, ntk.kron_identity(k, 3))
    torch.testing.assert_close(ntk.pntk(model, X), k)
    assert ntk.relative_error(theta, ntk.pntk(model, X)) < 1e-12


def test_relative_error_and_trace_kernel_optimality(mlp, data):
    X, _ = data
    theta = ntk.entk(mlp, X)
    o = theta.shape[1]
    for kernel in (ntk.sum_of_logits(theta), ntk.first_logit_kernel(theta), ntk.trace_kernel(theta)):
        direct = torch.linalg.norm(ntk.flatten_ntk(theta - ntk.kron_identity(kernel, o))) / torch.linalg.norm(theta)
        assert math.isclose(ntk.relative_error(theta, kernel), float(direct), rel_tol=1e-10)
    best = ntk.relative_error(theta, ntk.trace_kernel(theta))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = ntk.trace_kernel(theta) + 1e-2 * torch.randn(4, 4, generator=g, dtype=torch.float64)
        assert ntk.relative_error(theta, other) > best
    assert best <= ntk.relative_error(theta, ntk.sum_of_logits(theta))


def test_flatten_is_example_major(mlp, data):
    X, _ = data
    theta = ntk.entk(mlp, X)
    flat = ntk.flatten_ntk(theta)
    assert flat[2 * 3 + 1, 3 * 3 + 0] == theta[2, 1, 3, 0]
    torch.testing.assert_close(flat, flat.T)


def test_kernel_regression_interpolates_and_pntk_equals_kron():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((6, 20))
    K = F @ F.T
    Y = rng.standard_normal((6, 3))
    np.testing.assert_allclose(ntk.kernel_regression(K, K, Y, diag_reg=0.0), Y, atol=1e-9)
    # pNTK regression with K equals eNTK regression with K ⊗ I_O
    labels = np.array([0, 1, 2, 1, 0, 2])
    Kt = torch.from_numpy(K)
    pred_p = ntk.pntk_regression(K, K[:2], labels, 3, diag_reg=1e-3)
    pred_e = ntk.entk_regression(ntk.kron_identity(Kt, 3).numpy(), ntk.kron_identity(Kt[:2], 3).numpy(), labels,
                                 diag_reg=1e-3)
    np.testing.assert_allclose(pred_p, pred_e, rtol=1e-10, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError):
        ntk.kernel_regression(np.eye(3), np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError):
        ntk.kernel_regression(np.eye(3), np.ones((2, 3)), np.ones(3), diag_reg=-1)
    with pytest.raises(ValueError):
        ntk.mlp_entk(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2))
    with pytest.raises(ValueError):
        ntk.relative_error(torch.zeros(2, 3, 2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        ntk.per_example_jacobians(MLP(2, (2,), 2), torch.zeros(2))
