"""Linear, sliding-window and LoLCATs hybrid attention against explicit quadratic formulas."""

import math

import pytest
import torch

from common import attention as at
from common.attention import linear as la

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def qkv(b=2, h=3, n=20, d=8, seed=0):
    g = gen(seed)
    return tuple(torch.randn(b, h, n, d, dtype=F64, generator=g) for _ in range(3))


def explicit_linear(phi_q, phi_k, v, causal):
    """y_i = Σ_j m_ij φ(q_i)ᵀφ(k_j) v_j / Σ_j m_ij φ(q_i)ᵀφ(k_j), one entry at a time."""
    n = phi_q.shape[-2]
    out = torch.zeros_like(v)
    for i in range(n):
        num = torch.zeros_like(v[..., 0, :])
        den = torch.zeros_like(v[..., 0, :1])
        for j in range(n if not causal else i + 1):
            w = (phi_q[..., i, :] * phi_k[..., j, :]).sum(-1, keepdim=True)
            num, den = num + w * v[..., j, :], den + w
        out[..., i, :] = num / den
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_equals_explicit_formula(causal):
    q, k, v = qkv(n=9)
    phi_q, phi_k = la.elu_feature_map(q), la.elu_feature_map(k)
    ref = explicit_linear(phi_q, phi_k, v, causal)
    assert torch.allclose(la.linear_attention(phi_q, phi_k, v, causal=causal), ref, atol=1e-12)
    assert torch.allclose(la.linear_attention_matrix(phi_q, phi_k, causal=causal) @ v, ref, atol=1e-12)


def test_identity_like_feature_map_gives_unnormalised_dot_product_attention():
    # with φ = identity on positive inputs, linear attention is (QKᵀ ⊙ M) V row-normalised
    g = gen(1)
    q, k, v = torch.rand(2, 16, 5, generator=g, dtype=F64), torch.rand(2, 16, 5, generator=g, dtype=F64), \
        torch.randn(2, 16, 4, generator=g, dtype=F64)
    a = torch.tril(q @ k.transpose(-1, -2))
    ref = (a / a.sum(-1, keepdim=True)) @ v
    assert torch.allclose(la.linear_attention(q, k, v, causal=True), ref, atol=1e-12)


def test_cumsum_equals_masked_quadratic_form_and_rows_sum_to_one():
    q, k, v = qkv(n=33)
    fm = la.HedgehogFeatureMap(3, 8, 4, generator=gen(2), dtype=F64)
    phi_q, phi_k = fm(q), fm(k)
    a = la.linear_attention_matrix(phi_q, phi_k, causal=True)
    assert torch.allclose(a.sum(-1), torch.ones(2, 3, 33, dtype=F64))
    assert torch.all(a.triu(1) == 0)
    assert torch.allclose(la.linear_attention(phi_q, phi_k, v), a @ v, atol=1e-12)


def test_feature_maps_shapes_positivity_and_hedgehog_definition():
    q, _, _ = qkv()
    for kind, f in [("t2r_relu", 8), ("t2r_elu", 8), ("hedgehog", 8), ("elu", 8)]:
        fm = la.make_feature_map(kind, 3, 8, generator=gen(0), dtype=F64)
        out = fm(q)
        assert out.shape == (2, 3, 20, f) and fm.num_features == f
        assert torch.all(out > 0)
    hh = la.HedgehogFeatureMap(3, 8, 4, generator=gen(3), dtype=F64)
    z = torch.einsum("bhnd,hdf->bhnf", q, hh.proj.weight)
    assert torch.allclose(hh(q), torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], -1))
    assert torch.allclose(hh(q).sum(-1), 2 * torch.ones(2, 3, 20, dtype=F64))
    relu = la.T2RFeatureMap(3, 8, 8, generator=gen(4), dtype=F64)
    with torch.no_grad():
        relu.proj.bias.fill_(0.5)
    z = torch.einsum("bhnd,hdf->bhnf", q, relu.proj.weight) + 0.5
    assert torch.allclose(relu(q), torch.relu(z).clamp_min(1e-12))
    with pytest.raises(ValueError):
        la.make_feature_map("cosine", 3, 8)
    with pytest.raises(ValueError):
        hh(torch.randn(2, 4, 5, 8, dtype=F64))      # wrong number of heads


def test_sliding_window_mask_and_attention():
    m = la.sliding_window_mask(5, 5, 2)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(m, expected)
    q, k, v = qkv(n=12)
    logits = q @ k.transpose(-1, -2) / math.sqrt(8)
    band = la.sliding_window_mask(12, 12, 3)
    ref = torch.softmax(logits.masked_fill(~band, float("-inf")), -1) @ v
    assert torch.allclose(la.sliding_window_attention(q, k, v, 3), ref, atol=1e-12)
    assert torch.allclose(la.sliding_window_attention(q, k, v, 12), at.softmax_attention(q, k, v, causal=True))
    with pytest.raises(ValueError):
        la.sliding_window_attention(q, k, v, 0)


def test_hybrid_with_window_covering_the_sequence_is_softmax_attention():
    q, k, v = qkv(n=16)
    fm = la.HedgehogFeatureMap(3, 8, 4, generator=gen(5), dtype=F64)
    ref = at.softmax_attention(q, k, v, causal=True)
    for w in (16, 40):
        out = la.hybrid_attention(q, k, v, fm(q), fm(k), w, torch.tensor([0.1, 0.5, 0.9], dtype=F64))
        assert torch.allclose(out, ref, atol=1e-12)
        assert torch.allclose(la.hybrid_attention_recurrent(q, k, v, fm(q), fm(k), w, 0.3), ref, atol=1e-12)


def test_hybrid_equals_explicit_eq2_and_recurrent_path():
    q, k, v = qkv(n=14)
    fm = la.T2RFeatureMap(3, 8, 6, activation="elu", generator=gen(6), dtype=F64)
    pq, pk = fm(q), fm(k)
    w, gamma = 4, torch.tensor([0.2, 0.6, 0.9], dtype=F64)
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    out = torch.zeros_like(v)
    for i in range(14):
        js = range(max(0, i - w + 1), i + 1)
        m = s[..., i, list(js)].amax(-1, keepdim=True)
        weights = torch.zeros(2, 3, 14, dtype=F64)
        for j in range(i + 1):
            if j > i - w:
                weights[..., j] = gamma * torch.exp(s[..., i, j] - m[..., 0])
            else:
                weights[..., j] = (pq[..., i, :] * pk[..., j, :]).sum(-1)
        out[..., i, :] = (weights.unsqueeze(-1) * v).sum(-2) / weights.sum(-1, keepdim=True)
    assert torch.allclose(la.hybrid_attention(q, k, v, pq, pk, w, gamma), out, atol=1e-12)
    assert torch.allclose(la.hybrid_attention_recurrent(q, k, v, pq, pk, w, gamma), out, atol=1e-12)
    a = la.hybrid_attention_matrix(q, k, pq, pk, w, gamma)
    assert torch.allclose(a.sum(-1), torch.ones(2, 3, 14, dtype=F64)) and torch.all(a.triu(1) == 0)
    # affine factors (λ = 1 − γ) agree on both paths too
    lam = 1 - gamma
    assert torch.allclose(la.hybrid_attention(q, k, v, pq, pk, w, gamma, lam),
                          la.hybrid_attention_recurrent(q, k, v, pq, pk, w, gamma, lam), atol=1e-12)


def test_hybrid_attention_module_hook_paths_agree_and_window_zero_is_linear():
    q, k, v = qkv(n=24)
    for window in (0, 5):
        layer = la.make_hybrid_attention("hedgehog", 3, 8, window=window, generator=gen(7), dtype=F64)
        layer.double()
        y = layer(q, k, v)
        layer.recurrent = True
        assert torch.allclose(layer(q, k, v), y, atol=1e-10)
        assert y.shape == q.shape
    lin = la.make_hybrid_attention("t2r_relu", 3, 8, window=0, generator=gen(8), dtype=F64).double()
    ref = la.linear_attention(lin.feature_map_q(q), lin.feature_map_k(k), v)
    assert torch.allclose(lin(q, k, v), ref, atol=1e-10)
    assert not lin.window_factors.requires_grad
    hyb = la.make_hybrid_attention("hedgehog", 3, 8, window=4, generator=gen(9))
    assert torch.allclose(hyb.factors()[0], torch.full((3,), 0.1))
    names = {n for n, p in hyb.named_parameters() if p.requires_grad}
    assert names == {"window_factors", "feature_map_q.proj.weight", "feature_map_k.proj.weight"}
    with pytest.raises(ValueError):
        la.window_factor_logit(1.0)


def test_hybrid_gradients_flow_to_feature_maps_and_window_factors():
    q, k, v = (t.float() for t in qkv(n=10))
    layer = la.make_hybrid_attention("hedgehog", 3, 8, window=3, generator=gen(10))
    layer(q, k, v).square().sum().backward()
    assert layer.window_factors.grad.abs().sum() > 0
    assert layer.feature_map_q.proj.weight.grad.abs().sum() > 0


def test_feature_map_initialisation_is_seeded():
    a = la.make_hybrid_attention("hedgehog", 2, 8, window=2, generator=gen(11))
    b = la.make_hybrid_attention("hedgehog", 2, 8, window=2, generator=gen(11))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
