import math

import pytest
import torch

from common.kv_decoding import (
    SparseDecodingAttention,
    block_key_summaries,
    block_scores,
    block_sparse_attention,
    decode_step,
    kv_reads_per_step,
    n_selected_blocks,
    oracle_block_mass,
    prefill,
    reprefill_last,
    select_blocks,
)
from common.tinylm import TinyGPT, TinyGPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TinyGPT(TinyGPTConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, context=64)).double().eval()
    # larger weights than the init so that attention is far from uniform and sparsity matters
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return m


def tokens(b=3, t=40, seed=1):
    return torch.randint(0, 50, (b, t), generator=torch.Generator().manual_seed(seed))


def full_kv(model, idx):
    _, qkv = model(idx, return_qkv=True)
    return [(k, v) for _, k, v in qkv]


def test_dense_kv_decoding_equals_full_forward(model):
    idx = tokens()
    full = model(idx)
    logits, cache = prefill(model, idx[:, :10])
    out = [logits[:, -1]]
    for t in range(10, idx.shape[1]):
        out.append(decode_step(model, cache, idx[:, t]))
    dec = torch.stack(out, dim=1)
    assert torch.allclose(dec, full[:, 9:], atol=1e-6, rtol=0)
    for (k, v), layer in zip(full_kv(model, idx), range(2), strict=True):
        ck, cv = cache.get(layer)
        assert torch.allclose(ck, k, atol=1e-6) and torch.allclose(cv, v, atol=1e-6)


def test_sparse_with_all_blocks_kept_equals_dense(model):
    idx = tokens(seed=2)
    for attn in (SparseDecodingAttention("quest", block_size=4, sparse_ratio=1.0, local_blocks=1, min_blocks=1),
                 SparseDecodingAttention("oracle", block_size=4, sparse_ratio=0.1, local_blocks=1, min_blocks=64)):
        _, c_dense = prefill(model, idx[:, :12])
        _, c_sparse = prefill(model, idx[:, :12])
        for t in range(12, idx.shape[1]):
            a = decode_step(model, c_dense, idx[:, t])
            b = decode_step(model, c_sparse, idx[:, t], attn)
            assert torch.allclose(a, b, atol=1e-10)
        assert all(f == 1.0 for f in attn.kept_fraction)


def test_sparse_differs_and_reprefill_restores_dense_cache(model):
    idx = tokens(seed=3)
    attn = SparseDecodingAttention("quest", block_size=4, sparse_ratio=0.25, local_blocks=1, min_blocks=1)
    _, cache = prefill(model, idx[:, :8])
    for t in range(8, 40):
        decode_step(model, cache, idx[:, t], attn)
    ref = full_kv(model, idx)
    assert not torch.allclose(cache.get(1)[0], ref[1][0], atol=1e-3)  # sparse steps moved the cache
    assert cache.get(0)[0].shape == ref[0][0].shape
    # layer-0 keys depend on the token only: exact even under sparse decoding
    assert torch.allclose(cache.get(0)[0], ref[0][0], atol=1e-10)
    logits = reprefill_last(model, cache, idx[:, 8:40])  # rewrite every generated entry
    for layer in range(2):
        assert torch.allclose(cache.get(layer)[0], ref[layer][0], atol=1e-10)
        assert torch.allclose(cache.get(layer)[1], ref[layer][1], atol=1e-10)
    assert torch.allclose(logits[:, -1], model(idx)[:, -1], atol=1e-10)


def test_reprefill_without_sparse_steps_is_identity(model):
    idx = tokens(seed=4)
    _, cache = prefill(model, idx[:, :20])
    for t in range(20, 30):
        decode_step(model, cache, idx[:, t])
    before = cache.clone()
    reprefill_last(model, cache, idx[:, 22:30])
    for layer in range(2):
        assert torch.allclose(cache.get(layer)[0], before.get(layer)[0], atol=1e-10)
        assert torch.allclose(cache.get(layer)[1], before.get(layer)[1], atol=1e-10)
    with pytest.raises(ValueError):
        reprefill_last(model, cache, idx[:, :31])


def test_block_summaries_and_scores_small_case():
    k = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]])[None, None]  # T = 3, D = 2
    kmin, kmax = block_key_summaries(k, 2)
    assert kmin.tolist() == [[[[1.0, -2.0], [-1.0, 5.0]]]]
    assert kmax.tolist() == [[[[3.0, 0.0], [-1.0, 5.0]]]]
    q = torch.tensor([[[[1.0, -1.0]]]])
    s = block_scores(q, kmin, kmax)
    # block 0: max(3, 1) + max(0, 2) = 5 ; block 1: -1 + -5 = -6
    assert s.tolist() == [[[5.0, -6.0]]]
    # the score bounds q.k from above for every key of the block
    qk = (q @ k.transpose(-2, -1))[0, 0, 0]
    assert qk[0] <= s[0, 0, 0] and qk[1] <= s[0, 0, 0] and qk[2] <= s[0, 0, 1]


def test_score_is_an_upper_bound_random():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 1, 8, generator=g), torch.randn(2, 3, 37, 8, generator=g)
    s = block_scores(q, *block_key_summaries(k, 5))
    qk = (q @ k.transpose(-2, -1))[..., 0, :]
    for j in range(math.ceil(37 / 5)):
        assert torch.all(qk[..., 5 * j: 5 * j + 5].amax(-1) <= s[..., j] + 1e-6)


def test_selection_counts_and_local_blocks():
    assert n_selected_blocks(24, 0.125, 2) == 3
    assert n_selected_blocks(5, 0.125, 2) == 2
    assert n_selected_blocks(1, 0.1, 16) == 1
    assert n_selected_blocks(10, 0.1, 1) == 1
    scores = torch.tensor([[[5.0, 1.0, 4.0, -9.0]]])
    assert select_blocks(scores, 2, 1).tolist() == [[[True, False, False, True]]]
    assert select_blocks(scores, 3, 1).tolist() == [[[True, False, True, True]]]
    assert select_blocks(scores, 9, 1).all()
    with pytest.raises(ValueError):
        select_blocks(scores, 0, 1)
    with pytest.raises(ValueError):
        n_selected_blocks(4, 0.0, 1)
    with pytest.raises(ValueError):
        SparseDecodingAttention("topp")


def test_oracle_mass_sums_to_one_and_sparse_attention_renormalises():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 2, 1, 4, generator=g), torch.randn(1, 2, 10, 4, generator=g), torch.randn(1, 2, 10, 4, generator=g)
    m = oracle_block_mass(q, k, 4)
    assert m.shape == (1, 2, 3) and torch.allclose(m.sum(-1), torch.ones(1, 2))
    mask = torch.tensor([True, False, True]).expand(1, 2, 3)
    y = block_sparse_attention(q, k, v, mask, 4)
    keep = torch.tensor([0, 1, 2, 3, 8, 9])
    p = torch.softmax((q @ k[..., keep, :].transpose(-2, -1)) / 2.0, -1)
    assert torch.allclose(y, p @ v[..., keep, :], atol=1e-6)


def test_kv_reads():
    assert kv_reads_per_step(192, 8, 0.125, 1, 2) == 24.0
    assert kv_reads_per_step(192, 8, 0.125, 1, 2, rectify_every=16) == 24.0 + 12.0
    assert kv_reads_per_step(10, 8, 0.125, 1, 2) == 10.0


def test_dense_kv_decoding_on_the_checkpoint():
    from common.tinylm import corpus_tokens, load_tinylm

    m = load_tinylm("tinylm_ci")[0].double()
    idx = corpus_tokens(2 * 120, random_state=5).view(2, 120)
    full = m(idx)
    logits, cache = prefill(m, idx[:, :40])
    out = [logits[:, -1]] + [decode_step(m, cache, idx[:, t]) for t in range(40, 120)]
    assert torch.allclose(torch.stack(out, dim=1), full[:, 39:], atol=1e-6, rtol=0)
