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
    # at the top eigenvectors, (vᵀSv)(uᵀAu) equals the block's λ_max(S) λ_max(A) = ρ
    l_star, v, u = kp.flatness_direction(st)
    assert l_star == layer
    S, A = st.S[layer], st.A[layer]
    assert float(v.double() @ S @ v.double()) * float(u.double() @ A @ u.double()) == pytest.approx(rho, rel=1e-5)


def test_flatness_penalty_is_kronecker_rayleigh_quotient():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(20, 3, generator=g, dtype=torch.float64)
    a = torch.randn(20, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, generator=g, dtype=torch.float64)
    u = torch.randn(4, generator=g, dtype=torch.float64)
    v, u = v / v.norm(), u / u.norm()
    S, A = d.T @ d / 20, a.T @ a / 20
    w = torch.kron(v, u)
    assert float(kp.flatness_penalty(d, a, v, u)) == pytest.approx(float(w @ torch.kron(S, A) @ w))


def test_flatness_penalty_steers_first_layer_through_S():
    """A_0 is fixed by the data, but the S part (double backprop through δ) still moves layer 0."""
    torch.manual_seed(0)
    model = MLP(6, (5, 4), 3)
    X = torch.randn(30, 6)
    captured = []
    hook = model.layers[0].register_forward_hook(lambda m, i, o: captured.append((i[0], o)))
    logits = model(X)
    hook.remove()
    a, z = captured[0]
    labels = torch.multinomial(logits.softmax(-1).detach(), 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    (delta,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), z, create_graph=True)
    a_tilde = torch.cat([a, torch.ones(a.size(0), 1)], 1)
    v, u = torch.ones(5) / 5 ** 0.5, torch.ones(7) / 7 ** 0.5
    penalty = kp.flatness_penalty(delta, a_tilde, v, u)
    grads = torch.autograd.grad(penalty, [model.layers[0].weight, model.layers[2].weight])
    assert all(float(gr.abs().max()) > 0 for gr in grads)


@pytest.fixture(scope="module")
def digits():
    return load_digits_data(random_state=0)


@pytest.mark.parametrize("method", kp.METHODS)
def test_train_and_prune_budget_masks_and_determinism(digits, method):
    kw = dict(hidden=(16, 8), keep_ratio=0.25, epochs=3, prune_epochs=(0, 1), seed=3,
              flat_weight=0.01 if method == "kfac" else 0.0)
    r = kp.train_and_prune(digits, method, **kw)
    assert [int(m.sum()) for m in r.masks] == [4, 2]
    for li, (layer, mask) in enumerate(zip(r.model.layers[:-1], r.masks, strict=True)):
        assert torch.all(layer.weight[~mask] == 0) and torch.all(layer.bias[~mask] == 0)
        assert torch.all(r.model.layers[li + 1].weight[:, ~mask] == 0)  # outgoing columns too
    again = kp.train_and_prune(digits, method, **kw)
    assert r.test_acc == again.test_acc and all(torch.equal(a, b) for a, b in zip(r.masks, again.masks, strict=True))
    with pytest.raises(ValueError):
        kp.train_and_prune(digits, "obd")


def test_all_methods_see_the_same_batch_order(digits):
    kw = dict(hidden=(16, 8), keep_ratio=0.25, epochs=3, prune_epochs=(0, 1), seed=5, keep_batch_orders=True)
    runs = [kp.train_and_prune(digits, "kfac", flat_weight=0.01, **kw), kp.train_and_prune(digits, "kfac", **kw),
            kp.train_and_prune(digits, "magnitude", **kw), kp.train_and_prune(digits, "random", **kw)]
    assert len(runs[0].batch_orders) == 3
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0].batch_orders, r.batch_orders, strict=True))
    # while another seed gives another order
    other = kp.train_and_prune(digits, "magnitude", **{**kw, "seed": 6})
    assert not torch.equal(other.batch_orders[0], runs[0].batch_orders[0])


def test_magnitude_ignores_weights_from_pruned_inputs(digits):
    r = kp.train_and_prune(digits, "magnitude", hidden=(16, 8), keep_ratio=0.25, epochs=3, prune_epochs=(0, 1),
                           seed=2)
    dead = ~r.masks[0]
    assert int(dead.sum()) == 12 and torch.all(r.model.layers[1].weight[:, dead] == 0)
    # layer 1's magnitude saliency is then the norm over the live inputs only
    live_norm = r.model.layers[1].weight[:, ~dead].norm(dim=1)
    assert torch.allclose(kp.magnitude_saliency(r.model.layers[1]), live_norm)


def test_flatness_penalty_acts_in_most_epochs(digits):
    kw = dict(hidden=(32, 16), keep_ratio=0.25, epochs=6, prune_epochs=(1, 2), seed=0)
    r = kp.train_and_prune(digits, "kfac", flat_weight=0.01, **kw)
    assert len(r.flat_active_epochs) == 6 and r.flat_active_fraction >= 0.5
    assert len(r.flat_layers) == 6 and all(0 <= layer <= 2 for layer in r.flat_layers)
    plain = kp.train_and_prune(digits, "kfac", **kw)
    assert plain.flat_active_fraction == 0.0 and plain.flat_layers == []
    assert plain.test_acc != r.test_acc or not torch.equal(plain.model.layers[0].weight, r.model.layers[0].weight)


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
