import pytest
import torch

from common import attention as at
from papers.scatterbrain.scatterbrain import (
    approximations,
    bias_study,
    budget_split,
    sample_qkv,
    summarize,
    sweep_statistics,
    temperature_sweep,
    topk_support,
)


def test_budget_split_gives_equal_memory():
    split = budget_split(32)
    perf = at.attention_memory("performer", 512, 512, 64, 64, **split["performer"])["budget"]
    lsh = at.attention_memory("lsh", 512, 512, 64, 64, **split["lsh"])["budget"]
    sb = at.attention_memory("scatterbrain", 512, 512, 64, 64, **split["scatterbrain"])["budget"]
    assert perf == lsh == sb
    with pytest.raises(ValueError):
        budget_split(7)


def test_sample_qkv_scales_and_is_seeded():
    q, k, v = sample_qkv(1000, 8, 2.0, torch.Generator().manual_seed(0))
    assert abs(float(q.std()) - 2.0) < 0.1 and abs(float(v.std()) - 1.0) < 0.1
    q2, _, _ = sample_qkv(1000, 8, 2.0, torch.Generator().manual_seed(0))
    assert torch.equal(q, q2)
    with pytest.raises(ValueError):
        sample_qkv(10, 8, 0.0, torch.Generator())


def test_approximations_are_row_stochastic_and_topk_is_exact_at_full_budget():
    q, k, _ = sample_qkv(64, 8, 1.0, torch.Generator().manual_seed(1))
    mats = approximations(q, k, 16, torch.Generator().manual_seed(2))
    for attn in mats.values():
        assert torch.allclose(attn.sum(-1), torch.ones(64, dtype=torch.float64))
    exact = at.softmax_attention_matrix(q, k)
    assert torch.all(topk_support(exact, 16).sum(-1) == 16)
    full = approximations(q, k, 64, torch.Generator().manual_seed(3), exact)
    assert torch.allclose(full["topk_oracle"], exact)


def test_sweep_and_statistics_shapes():
    sweep = temperature_sweep(32, 8, [0.3, 2.0], [8], 2, seed=0)
    assert len(sweep) == 2 * 2 * 5
    table = summarize(sweep)
    stats = sweep_statistics(table, 8)
    assert set(stats) >= {"worst_sb_over_best", "best_gain", "sign_changes"}
    assert stats["best_gain"] * stats["worst_sb_over_best"] >= 1 - 1e-12


def test_bias_study_on_a_small_case():
    reports = bias_study(32, 8, 0.3, 8, 200, seed=0)
    assert reports["scatterbrain"]["raw"] < 4 * reports["scatterbrain"]["noise_floor"]
    assert reports["lsh"]["debiased"] > 0.3  # zero outside the buckets: strongly biased
    assert reports["variance_ratio_sb_over_performer"] < 1
