"""Exact answers on small cases and invariants of the K-FAC neuron-pruning pieces."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from common.curvature import kronecker_max_eigenvalue
from common.smallnets import MLP, load_digits_data
from papers.kfac_pruning import kfac_pruning as kp


def test_keep_schedule_geometric_and_ends_at_budget():
    assert kp.keep_schedule(64, 0.125, 4) == [38, 23, 13, 8]
    assert kp.keep_schedule(10, 0.01, 3)[-1] == 1
    counts = kp.keep_schedule(128, 0.3, 5)
    assert counts == sorted(counts, reverse=True) and counts[-1] == round(128 * 0.3)
    with pytest.raises(ValueError):
        kp.keep_schedule(10, 0.0, 3)


def test_kfac_saliency_is_half_Sjj_times_quadratic_form():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, generator=g, dtype=torch.float64)
    d = torch.randn(40, 3, generator=g, dtype=torch.float64)
    a = torch.randn(40, 5, generator=g, dtype=torch.float64)
    S, A = d.T @ d / 40, a.T @ a / 40
    sal = kp.kfac_saliency(S, A, W)
    for j in range(3):
        # ½ vec(ΔW)ᵀ (S ⊗ A) vec(ΔW) with ΔW the j-th row only (row-major vec)
        dW = torch.zeros_like(W)
        dW[j] = W[j]
        full = 0.5 * dW.reshape(-1) @ torch.kron(S, A) @ dW.reshape(-1)
        assert torch.isclose(sal[j], full)
        # and = ½ E[δ_j²] E[z_j²] with z = a W_jᵀ
        assert torch.isclose(sal[j], 0.5 * (d[:, j] ** 2).mean() * ((a @ W[j]) ** 2).mean())
    with pytest.raises(ValueError):
        kp.kfac_saliency(S, A, W.T)


def test_prune_step_keeps_top_active_neurons():
    scores = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0])
    mask = torch.tensor([True, True, False, True, True])
    new = kp.prune_step(scores, mask, 2)
    assert new.tolist() == [True, False, False, True, False]  # 4.0 is inactive, so 5 and 3 stay
    with pytest.raises(ValueError):
        kp.prune_step(scores, mask, 5)


def test_kfac_statistics_shapes_psd_and_spectral_radius():
    torch.manual_seed(0)
    model = MLP(6, (5, 4), 3)
    X = torch.randn(30, 6)
    st = kp.kfac_statistics(model, X, generator=torch.Generator().manual_seed(0))
    assert [tuple(S.shape) for S in st.S] == [(5, 5), (4, 4), (3, 3)]
    assert [tuple(A.shape) for A in st.A] == [(7, 7), (6, 6), (5, 5)]
    assert all(torch.linalg.eigvalsh(M)[0] > -1e-10 for M in st.S + st.A)
    assert torch.allclose(st.A[0][-1, -1], torch.tensor(1.0, dtype=torch.float64))  # homogeneous coordinate
    rho, layer = kp.kfac_spectral_radius(st)
    assert rho == pytest.approx(max(kronecker_max_eigenvalue(S, A) for S, A in zip(st.S, st.A, strict=True)))
    # the penalty at the top eigenvector of A equals λ_max(S) λ_max(A) on the same activations
    _, top_s, u = kp.flatness_direction(st)
    assert top_s * float(torch.linalg.eigvalsh(st.A[layer])[-1]) == pytest.approx(rho, rel=1e-6)


def test_flatness_penalty_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    u = torch.tensor([0.0, 1.0])
    assert float(kp.flatness_penalty(a, 3.0, u)) == pytest.approx(3.0 * (0 + 4) / 2)


@pytest.fixture(scope="module")
def digits():
    return load_digits_data(random_state=0)


@pytest.mark.parametrize("method", kp.METHODS)
def test_train_and_prune_budget_masks_and_determinism(digits, method):
    kw = dict(hidden=(16, 8), keep_ratio=0.25, epochs=3, prune_epochs=(0, 1), seed=3,
              flat_weight=0.01 if method == "kfac" else 0.0)
    r = kp.train_and_prune(digits, method, **kw)
    assert [int(m.sum()) for m in r.masks] == [4, 2]
    for layer, mask in zip(r.model.layers[:-1], r.masks, strict=True):
        assert torch.all(layer.weight[~mask] == 0) and torch.all(layer.bias[~mask] == 0)
    again = kp.train_and_prune(digits, method, **kw)
    assert r.test_acc == again.test_acc and all(torch.equal(a, b) for a, b in zip(r.masks, again.masks, strict=True))
    with pytest.raises(ValueError):
        kp.train_and_prune(digits, "obd")


def test_physical_pruning_and_peer_magnitude(digits):
    r = kp.train_and_prune(digits, "magnitude", hidden=(16, 8), keep_ratio=0.5, epochs=2, prune_epochs=(0,), seed=0)
    small = kp.physically_prune(r.model, r.masks, digits.X_train[:2])
    assert [layer.out_features for layer in small.layers[:-1]] == [8, 4]
    assert sum(p.numel() for p in small.parameters()) == kp.count_parameters(64, [8, 4], 10)
    with torch.no_grad():
        assert torch.allclose(small(digits.X_test), r.model(digits.X_test), atol=1e-6)
    theirs = kp.torch_pruning_magnitude(r.model, digits.X_train[:2])
    for layer, t in zip(r.model.layers[:-1], theirs, strict=True):
        assert torch.allclose(kp.magnitude_saliency(layer) ** 2, t, rtol=1e-5, atol=1e-7)


def test_hessian_spectral_radius_ignores_pruned_neurons(digits):
    r = kp.train_and_prune(digits, "random", hidden=(16, 8), keep_ratio=0.5, epochs=2, prune_epochs=(0,), seed=1)
    small = kp.physically_prune(r.model, r.masks, digits.X_train[:2])
    X, y = digits.X_train[:200], digits.y_train[:200]
    lam_masked = kp.hessian_spectral_radius(r.model, X, y, max_iter=500, tol=1e-7)
    lam_small = kp.hessian_spectral_radius(small, X, y, max_iter=500, tol=1e-7)
    assert lam_masked == pytest.approx(lam_small, rel=1e-3)
    with torch.no_grad():
        assert np.isfinite(float(F.cross_entropy(r.model(X), y)))
