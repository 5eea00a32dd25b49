"""Every attention kernel against the exact reference: limits where it becomes exact,
efficient path == dense matrix, shapes, causal masking, unbiasedness and error metrics."""

import math

import pytest
import torch

from common import attention as at

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def qkv(batch=(2,), n=64, d=16, d_v=8, seed=0, scale=1.0, n_k=None):
    g = gen(seed)
    n_k = n if n_k is None else n_k
    q = scale * torch.randn(*batch, n, d, dtype=F64, generator=g)
    k = scale * torch.randn(*batch, n_k, d, dtype=F64, generator=g)
    v = torch.randn(*batch, n_k, d_v, dtype=F64, generator=g)
    return q, k, v


# ---------------------------------------------------------------- exact softmax


def test_exact_matches_manual_softmax_and_rows_sum_to_one():
    q, k, v = qkv()
    a = at.softmax_attention_matrix(q, k)
    logits = q @ k.transpose(-1, -2) / math.sqrt(16)
    manual = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    assert torch.allclose(a, manual, atol=1e-12)
    assert torch.allclose(a.sum(-1), torch.ones(2, 64, dtype=F64))
    assert at.softmax_attention(q, k, v).shape == (2, 64, 8)
    assert torch.allclose(at.softmax_attention(q, k, v), a @ v)


def test_exact_float64_option_and_batch_dims():
    q, k, v = qkv(batch=(2, 3), n=10)
    out = at.softmax_attention(q.float(), k.float(), v.float(), dtype=F64)
    assert out.dtype == F64 and out.shape == (2, 3, 10, 8)


def test_causal_mask_hides_the_future():
    q, k, v = qkv(n=12)
    out = at.softmax_attention(q, k, v, causal=True)
    assert torch.allclose(out[:, 0], v[:, 0])  # the first query sees only the first key
    k2, v2 = k.clone(), v.clone()
    k2[:, 7:] += 5.0
    v2[:, 7:] -= 3.0
    assert torch.allclose(at.softmax_attention(q, k2, v2, causal=True)[:, :7], out[:, :7])
    a = at.softmax_attention_matrix(q, k, causal=True)
    assert torch.all(torch.triu(a, diagonal=1) == 0)


def test_causal_mask_aligns_at_the_end_for_longer_keys():
    mask = at.causal_mask(2, 4)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_entropy_of_uniform_rows_is_log_n():
    a = torch.full((3, 5), 0.2, dtype=F64)
    assert torch.allclose(at.row_entropy(a), torch.full((3,), math.log(5), dtype=F64))


def test_exact_rejects_bad_shapes():
    with pytest.raises(ValueError):
        at.softmax_attention(torch.zeros(4, 3), torch.zeros(4, 5), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        at.softmax_attention(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(5, 2))


# ---------------------------------------------------------------- Performer


def test_orthogonal_random_matrix_rows_are_orthogonal_in_blocks_and_chi_distributed():
    w = at.gaussian_orthogonal_random_matrix(40, 16, generator=gen(1))
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    assert torch.allclose(block @ block.T, torch.eye(16, dtype=F64), atol=1e-10)
    lengths = at.gaussian_orthogonal_random_matrix(4000, 16, generator=gen(2)).norm(dim=1)
    # chi(16) lengths: E[‖w‖²] = d, as for a Gaussian row (so the estimate stays unbiased)
    assert abs(float(lengths.square().mean()) - 16) < 0.5
    fixed = at.gaussian_orthogonal_random_matrix(8, 16, generator=gen(3), scaling="sqrt_d")
    assert torch.allclose(fixed.norm(dim=1), torch.full((8,), 4.0, dtype=F64))


def test_performer_efficient_path_equals_dense_matrix():
    q, k, v = qkv()
    for antithetic in (False, True):
        f = at.draw_random_features(16, 32, antithetic=antithetic, generator=gen(4))
        for causal in (False, True):
            dense = at.performer_attention_matrix(q, k, f, causal=causal)
            assert torch.allclose(at.performer_attention(q, k, v, f, causal=causal), dense @ v, atol=1e-10)
            assert torch.allclose(dense.sum(-1), torch.ones(2, 64, dtype=F64))


def test_performer_causal_has_no_future_leak():
    q, k, v = qkv(n=16)
    f = at.draw_random_features(16, 32, generator=gen(5))
    out = at.performer_attention(q, k, v, f, causal=True)
    v2 = v.clone()
    v2[:, 9:] += 10
    assert torch.allclose(at.performer_attention(q, k, v2, f, causal=True)[:, :9], out[:, :9])


@pytest.mark.parametrize("orthogonal", [False, True])
def test_performer_kernel_estimate_is_unbiased(orthogonal):
    q, k, _ = qkv(batch=(), n=6, d=8, scale=0.6)
    exact = at.unnormalized_attention_matrix(q, k)
    moments = at.SeedMoments()
    g = gen(6)
    for _ in range(3000):
        f = at.draw_random_features(8, 8, orthogonal=orthogonal, generator=g)
        moments.add(at.performer_kernel_matrix(q, k, f))
    report = at.bias_report(moments, exact)
    assert report["raw"] < 4 * report["noise_floor"] + 1e-12


def test_performer_iid_mse_matches_lemma_2_and_orthogonal_features_do_better():
    """Distributional cross-check of our features against the Performer paper's closed form."""
    g = gen(7)
    q = 0.35 * torch.randn(4, 8, dtype=F64, generator=g)  # light tails: the empirical MSE converges
    k = 0.35 * torch.randn(4, 8, dtype=F64, generator=g)
    exact = torch.exp((q * k).sum(-1) / math.sqrt(8))
    m, draws = 4, 6000
    errors = {True: torch.zeros(4, dtype=F64), False: torch.zeros(4, dtype=F64)}
    for orthogonal in (False, True):
        for _ in range(draws):
            f = at.draw_random_features(8, m, orthogonal=orthogonal, generator=g)
            pq, lq = at.positive_random_features(q, f)
            pk, lk = at.positive_random_features(k, f)
            est = (pq * pk).sum(-1) * torch.exp(lq + lk).squeeze(-1)
            errors[orthogonal] += (est - exact).square() / draws
    lemma = at.performer_pair_mse(q, k, m)
    assert torch.allclose(errors[False], lemma, rtol=0.15)
    assert torch.all(errors[True] < errors[False])


def test_performer_error_shrinks_with_more_features():
    q, k, v = qkv(scale=0.4)
    exact = at.softmax_attention_matrix(q, k)
    errs = []
    for m in (8, 64, 1024):
        e = [float(at.relative_frobenius_error(at.performer_attention_matrix(q, k, at.draw_random_features(
            16, m, generator=gen(s))), exact)) for s in range(4)]
        errs.append(sum(e) / 4)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1


def test_performer_rejects_bad_arguments():
    with pytest.raises(ValueError):
        at.draw_random_features(8, 7, antithetic=True)
    with pytest.raises(ValueError):
        at.draw_random_features(8, 0)
    with pytest.raises(ValueError):
        at.positive_random_features(torch.zeros(3, 5), at.draw_random_features(8, 4))


# ---------------------------------------------------------------- LSH


def test_sort_and_unsort_round_trip():
    x = torch.randn(3, 2, 10, 4, dtype=F64, generator=gen(8))
    perm = torch.stack([torch.randperm(10, generator=gen(s)).expand(2, 10) for s in range(3)])
    sorted_rows = at.sort_rows(x[0], perm)
    assert torch.equal(sorted_rows[1, 0], x[0, 0][perm[1, 0]])
    assert torch.equal(at.unsort_rows(sorted_rows, perm), x[0].expand(3, 2, 10, 4))
    assert torch.equal(at.invert_permutation(perm).gather(-1, perm), torch.arange(10).expand(3, 2, 10))


def test_xbox_plus_turns_inner_product_into_distance():
    q, k, _ = qkv(batch=(), n=5, d=4)
    qx, kx = at.xbox_plus(q, k)
    dist = torch.cdist(qx, kx).square()
    m_sq = q.square().sum(-1).max() + k.square().sum(-1).max()
    assert torch.allclose(dist, 2 * m_sq - 2 * q @ k.T, atol=1e-10)


@pytest.mark.parametrize("kind", ["angular", "xbox"])
@pytest.mark.parametrize("causal", [False, True])
def test_lsh_efficient_path_equals_dense_matrix_with_several_rounds(kind, causal):
    q, k, v = qkv()
    h = at.draw_lsh(16, n_hashes=3, kind=kind, n_buckets=8, generator=gen(9))
    dense = at.lsh_attention_matrix(q, k, h, bucket_size=16, causal=causal)
    assert torch.allclose(at.lsh_attention(q, k, v, h, bucket_size=16, causal=causal), dense @ v, atol=1e-10)


def test_lsh_support_has_bucket_size_keys_per_query_and_round():
    q, k, _ = qkv()
    h = at.draw_lsh(16, n_hashes=1, kind="angular", n_buckets=4, generator=gen(10))
    support = at.lsh_support(q, k, h, bucket_size=8)
    assert torch.all(support.sum(-1) == 8)
    h3 = at.draw_lsh(16, n_hashes=3, kind="xbox", generator=gen(11))
    support3 = at.lsh_support(q, k, h3, bucket_size=8)
    assert torch.all(support3.sum(-1) == 24) and support3.max() <= 3


@pytest.mark.parametrize("kind", ["angular", "xbox"])
def test_lsh_is_exact_with_one_chunk(kind):
    q, k, v = qkv()
    h = at.draw_lsh(16, kind=kind, n_buckets=2, generator=gen(12))
    for causal in (False, True):
        assert torch.allclose(at.lsh_attention(q, k, v, h, bucket_size=64, causal=causal),
                              at.softmax_attention(q, k, v, causal=causal), atol=1e-12)


def test_lsh_finds_the_dominant_key_at_low_temperature():
    """Queries equal to keys (shared-QK setting): each query's own key is in its bucket."""
    g = gen(13)
    k = torch.randn(1, 128, 16, dtype=F64, generator=g)
    q = k.clone()
    v = torch.randn(1, 128, 4, dtype=F64, generator=g)
    h = at.draw_lsh(16, kind="angular", n_buckets=8, generator=g)
    out = at.lsh_attention(q, k, v, h, bucket_size=16, scale=5.0)
    exact = at.softmax_attention(q, k, v, scale=5.0)
    assert float(at.relative_frobenius_error(out, exact)) < 0.3


def test_lsh_causal_has_no_future_leak_and_rejects_bad_bucket_sizes():
    q, k, v = qkv(n=32)
    h = at.draw_lsh(16, n_hashes=2, kind="angular", n_buckets=4, generator=gen(14))
    out = at.lsh_attention(q, k, v, h, bucket_size=8, causal=True)
    v2 = v.clone()
    v2[:, 20:] += 7
    assert torch.allclose(at.lsh_attention(q, k, v2, h, bucket_size=8, causal=True)[:, :20], out[:, :20])
    with pytest.raises(ValueError):
        at.lsh_attention(q, k, v, h, bucket_size=5)
    with pytest.raises(ValueError):
        at.draw_lsh(16, kind="angular", n_buckets=3)
    with pytest.raises(ValueError):
        at.draw_lsh(16, kind="cosine")


# ---------------------------------------------------------------- Scatterbrain


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["angular", "xbox"])
def test_scatterbrain_efficient_path_equals_dense_matrix(causal, kind):
    q, k, v = qkv(scale=1.2)
    f = at.draw_random_features(16, 16, generator=gen(15))
    h = at.draw_lsh(16, n_hashes=2, kind=kind, n_buckets=8, generator=gen(16))
    dense = at.scatterbrain_attention_matrix(q, k, f, h, bucket_size=16, causal=causal)
    out, log_norm = at.scatterbrain_attention(q, k, v, f, h, bucket_size=16, causal=causal, return_log_normalizer=True)
    assert torch.allclose(out, dense @ v, atol=1e-10)
    kernel = at.scatterbrain_kernel_matrix(q, k, f, h, bucket_size=16, causal=causal)
    assert torch.allclose(log_norm.squeeze(-1), torch.log(kernel.sum(-1)), atol=1e-10)


def test_scatterbrain_is_exact_on_its_support_and_lowrank_elsewhere():
    q, k, _ = qkv()
    f = at.draw_random_features(16, 16, generator=gen(17))
    h = at.draw_lsh(16, kind="angular", n_buckets=8, generator=gen(18))
    kernel = at.scatterbrain_kernel_matrix(q, k, f, h, bucket_size=16)
    support = at.lsh_support(q, k, h, bucket_size=16) > 0
    exact = at.unnormalized_attention_matrix(q, k)
    lowrank = at.performer_kernel_matrix(q, k, f)
    assert torch.allclose(kernel[support], exact[support])
    assert torch.allclose(kernel[~support], lowrank[~support])


def test_scatterbrain_is_exact_with_one_chunk():
    q, k, v = qkv()
    f = at.draw_random_features(16, 8, generator=gen(19))
    h = at.draw_lsh(16, kind="xbox", generator=gen(20))
    assert torch.allclose(at.scatterbrain_attention(q, k, v, f, h, bucket_size=64), at.softmax_attention(q, k, v),
                          atol=1e-10)


def test_scatterbrain_unnormalised_estimate_is_unbiased_with_less_variance_than_performer():
    q, k, _ = qkv(batch=(), n=16, d=8, scale=0.8)
    exact = at.unnormalized_attention_matrix(q, k)
    sb, pf = at.SeedMoments(), at.SeedMoments()
    g = gen(21)
    for _ in range(2000):
        f = at.draw_random_features(8, 8, generator=g)
        h = at.draw_lsh(8, kind="angular", n_buckets=4, generator=g)
        sb.add(at.scatterbrain_kernel_matrix(q, k, f, h, bucket_size=4))
        pf.add(at.performer_kernel_matrix(q, k, f))
    report = at.bias_report(sb, exact)
    assert report["raw"] < 4 * report["noise_floor"]
    assert sb.variance_sum < pf.variance_sum


# ---------------------------------------------------------------- group attention (RITA)


def test_kmeans_groups_are_a_partition_with_mean_centroids():
    _, k, _ = qkv(batch=(3,), n=50)
    grouping = at.kmeans(k, 7, generator=gen(22))
    assert torch.all(grouping.counts.sum(-1) == 50)
    centroids, counts = at.group_means(k, grouping.assignment, 7)
    assert torch.allclose(grouping.centroids, centroids) and torch.equal(grouping.counts, counts)
    with pytest.raises(ValueError):
        at.kmeans(k, 51)


def test_group_attention_is_exact_when_every_key_equals_its_centroid():
    g = gen(23)
    distinct = torch.randn(2, 6, 16, dtype=F64, generator=g)
    k = distinct[:, torch.randint(0, 6, (60,), generator=g)]
    q = torch.randn(2, 40, 16, dtype=F64, generator=g)
    v = torch.randn(2, 60, 8, dtype=F64, generator=g)
    # k-means may merge two distinct keys (a random start can pick the same value twice): group by value
    labels = torch.unique(k, dim=1, return_inverse=True)[1]
    grouping = at.grouping_from_assignment(k, labels.expand(2, 60), int(labels.max()) + 1)
    assert float(at.group_radius(k, grouping).max()) < 1e-12
    assert float(at.group_error_bound(q, k, grouping).max()) < 1e-10
    assert torch.allclose(at.group_attention(q, k, v, grouping=grouping), at.softmax_attention(q, k, v), atol=1e-12)


def test_group_attention_with_one_key_per_group_is_exact():
    q, k, v = qkv(n=20)
    assert torch.allclose(at.group_attention(q, k, v, n_groups=20, generator=gen(24)), at.softmax_attention(q, k, v),
                          atol=1e-12)


def test_group_attention_obeys_its_error_bound_and_dense_matrix_matches():
    q, k, v = qkv(n=64, scale=0.8)
    for n_groups in (4, 16, 32):
        out, grouping = at.group_attention(q, k, v, n_groups=n_groups, generator=gen(25), return_grouping=True)
        dense = at.group_attention_matrix(q, k, grouping)
        assert torch.allclose(out, dense @ v, atol=1e-12)
        assert torch.allclose(dense.sum(-1), torch.ones(2, 64, dtype=F64))
        exact = at.softmax_attention_matrix(q, k)
        for b in range(2):
            assert at.max_log_ratio(dense[b], exact[b]) <= at.group_error_bound(q, k, grouping)[b] + 1e-12


def test_radius_for_ratio_inverts_the_bound():
    q = torch.randn(3, 10, 4, dtype=F64, generator=gen(26))
    r = at.radius_for_ratio(q, 2.0)
    assert torch.allclose(2 * q.norm(dim=-1).amax(-1) * r / 2, torch.full((3,), math.log(2.0), dtype=F64))
    with pytest.raises(ValueError):
        at.radius_for_ratio(q, 1.0)


def test_group_attention_is_differentiable_and_rejects_causal():
    q, k, v = (t.float().requires_grad_() for t in qkv(n=32))
    at.group_attention(q, k, v, n_groups=4, generator=gen(27)).sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    assert torch.isfinite(k.grad).all()
    with pytest.raises(ValueError):
        at.group_attention(q, k, v, n_groups=4, causal=True)


# ---------------------------------------------------------------- metrics and the registry


def test_relative_error_and_max_log_ratio():
    a = torch.rand(4, 5, dtype=F64, generator=gen(28)) + 0.1
    assert float(at.relative_frobenius_error(a, a)) == 0.0
    assert abs(float(at.relative_frobenius_error(2 * a, a)) - 1.0) < 1e-12
    assert abs(float(at.max_log_ratio(2 * a, a)) - math.log(2)) < 1e-12
    errs = at.attention_errors(a, a, torch.randn(5, 3, dtype=F64))
    assert errs == {"attn": 0.0, "out": 0.0}
    assert at.relative_frobenius_error(2 * a, a, dims=(-1,)).shape == (4,)


def test_bias_report_detects_a_biased_estimator_and_not_an_unbiased_one():
    exact = torch.ones(10, 10, dtype=F64)
    g = gen(29)
    unbiased, biased = at.SeedMoments(), at.SeedMoments()
    for _ in range(500):
        noise = torch.randn(10, 10, dtype=F64, generator=g)
        unbiased.add(exact + noise)
        biased.add(1.2 * exact + noise)
    u, b = at.bias_report(unbiased, exact), at.bias_report(biased, exact)
    assert u["debiased"] < 0.02 and u["raw"] < 3 * u["noise_floor"]
    assert abs(b["debiased"] - 0.2) < 0.02


def test_memory_and_flop_counters():
    perf = at.attention_memory("performer", 512, 512, 64, 64, num_features=32)
    lsh = at.attention_memory("lsh", 512, 512, 64, 64, bucket_size=32)
    sb = at.attention_memory("scatterbrain", 512, 512, 64, 64, num_features=16, bucket_size=16)
    assert perf["budget"] == lsh["budget"] == sb["budget"] == 512 * 32
    assert at.attention_memory("exact", 512, 512, 64, 64)["budget"] == 512 ** 2
    exact = at.attention_flops("exact", 4096, 4096, 64, 64)
    assert exact == 2 * 4096 ** 2 * 128
    assert at.attention_flops("group", 4096, 4096, 64, 64, n_groups=64) < exact / 10
    assert at.attention_flops("performer", 4096, 4096, 64, 64, num_features=64) < exact / 10
    with pytest.raises(ValueError):
        at.attention_memory("nystrom", 1, 1, 1, 1)


@pytest.mark.parametrize("name", at.KERNELS)
def test_make_attention_gives_every_kernel_one_interface(name):
    q, k, v = (t.float() for t in qkv(n=64))
    fn = at.make_attention(name, num_features=16, bucket_size=16, n_groups=8)
    out = fn(q, k, v, generator=gen(30))
    assert out.shape == (2, 64, 8) and torch.isfinite(out).all()
    assert torch.equal(out, fn(q, k, v, generator=gen(30)))
    if name != "group":
        assert fn(q, k, v, causal=True, generator=gen(30)).shape == (2, 64, 8)
    with pytest.raises(ValueError):
        at.make_attention("linformer")
