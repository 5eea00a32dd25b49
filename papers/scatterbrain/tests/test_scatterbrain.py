import functools
import math

import pandas as pd
import pytest
import torch

from common import attention as at
from papers.scatterbrain.scatterbrain import (
    approximations,
    bias_study,
    budget_split,
    dropin_perplexity,
    real_attention_errors,
    sample_clustered_qkv,
    sample_qkv,
    sparse_lowrank_with_support,
    summarize,
    support_mass,
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
    assert len(sweep) == 2 * 2 * 6
    table = summarize(sweep)
    stats = sweep_statistics(table, 8)
    assert set(stats) >= {"worst_sb_over_best", "best_gain", "sign_changes"}
    assert stats["best_gain"] * stats["worst_sb_over_best"] >= 1 - 1e-12


def test_bias_study_on_a_small_case():
    reports = bias_study(32, 8, 0.3, 8, 200, seed=0)
    assert reports["scatterbrain"]["raw"] < 4 * reports["scatterbrain"]["noise_floor"]
    assert reports["lsh"]["debiased"] > 0.3  # zero outside the buckets: strongly biased
    assert reports["variance_ratio_sb_over_performer"] < 1
    assert reports["collision_mean"] == pytest.approx(4 / 32)   # every query shares a chunk with b = 4 keys
    assert abs(reports["variance_ratio_sb_over_performer"] - reports["variance_ratio_theory"]) < 0.05
    assert len(reports["variance_ratio_batches"]) == 10 and reports["variance_ratio_se"] > 0
    with pytest.raises(ValueError):
        bias_study(32, 8, 0.3, 8, 15, seed=0)


def test_statistics_leave_out_rows_where_every_method_is_worse_than_zero():
    rows = []
    for t, (s, perf, smyrf, sb) in enumerate([(0.1, 0.2, 3.0, 0.3), (0.5, 0.8, 0.9, 0.4), (2.0, 1.5, 1.2, 1.1)]):
        rows.append({"r": 8, "t": t, "s": s, "performer": perf, "smyrf": smyrf, "reformer": 5.0, "scatterbrain": sb,
                     "topk_oracle": 0.01, "sb_oracle": 0.1, "entropy": 1.0})
    table = pd.DataFrame(rows)
    table["best_baseline"] = table[["performer", "smyrf"]].min(axis=1)
    table["sb_over_best"] = table["scatterbrain"] / table["best_baseline"]
    table["informative"] = table[["performer", "smyrf", "reformer", "scatterbrain"]].min(axis=1) <= 1
    stats = sweep_statistics(table, 8)
    assert stats["n_informative"] == 2 and not stats["low_entropy_informative"]
    assert stats["best_gain"] == pytest.approx(2.0)             # row s = 0.5; the row s = 2.0 is left out
    assert stats["worst_sb_over_best"] == pytest.approx(1.5)
    assert stats["low_entropy_lowrank_over_sparse"] == pytest.approx(0.8 / 0.9)
    assert math.isnan(sweep_statistics(table[table.t == 2], 8)["best_gain"])


def test_clustered_model_and_oracle_support():
    g = torch.Generator().manual_seed(0)
    q, k, v = sample_clustered_qkv(256, 16, 8.0, g, delta=0.1, n_clusters=4)
    assert torch.allclose(k.norm(dim=-1), torch.ones(256, dtype=torch.float64))
    assert torch.allclose(q.norm(dim=-1), torch.full((256,), 8.0 * 4.0, dtype=torch.float64))
    exact = at.softmax_attention_matrix(q, k)
    mass = support_mass(q, k, 64, g, n_draws=2)
    assert mass["topk"] > 0.9 and 0 < mass["smyrf"] <= 1   # each query's cluster holds about 64 keys
    full = sparse_lowrank_with_support(q, k, at.draw_random_features(16, 4, generator=g),
                                       torch.ones_like(exact, dtype=torch.bool))
    assert torch.allclose(full, exact)                     # the whole support: exact
    sweep = temperature_sweep(32, 8, [1.0, 4.0], [8], 1, seed=0,
                              sampler=functools.partial(sample_clustered_qkv, n_clusters=2))
    assert set(sweep["method"]) >= {"sb_oracle", "topk_oracle", "scatterbrain"}
    with pytest.raises(ValueError):
        sample_clustered_qkv(8, 4, 0.0, g)


def test_causal_approximations_and_real_attention_errors():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 32, 8, generator=g) for _ in range(3))
    mats = approximations(q.double(), k.double(), 8, torch.Generator().manual_seed(6), causal=True)
    upper = torch.triu(torch.ones(32, 32, dtype=torch.bool), diagonal=1)
    for name, attn in mats.items():
        sums = attn.sum(-1)
        if name in ("smyrf", "reformer"):   # a query whose chunk holds no visible key gets a zero row
            assert torch.all(((sums - 1).abs() < 1e-9) | (sums == 0)), name
        else:
            assert torch.allclose(sums, torch.ones(1, 2, 32, dtype=torch.float64)), name
        assert float(attn[..., upper].abs().max()) == 0.0, name   # nothing attends to the future
    errors = real_attention_errors([(q, k, v), (k, q, v)], 8, n_seeds=2, seed=0)
    assert len(errors) == 2 * 2 * 6 and set(errors["layer"]) == {0, 1}
    assert (errors[errors.method == "topk_oracle"]["err_out"] < 1).all()


def test_dropin_perplexity_restores_exact_attention():
    from common.tinylm import corpus_tokens, load_tinylm, perplexity

    model, _, _ = load_tinylm("tinylm_ci")
    tokens = corpus_tokens(model.config.context + 1, random_state=123)
    result = dropin_perplexity(model, tokens, 16, n_seeds=1, seed=0, methods=("performer", "scatterbrain"))
    assert set(result) == {"exact", "performer", "scatterbrain"} and len(result["performer"]) == 1
    assert result["exact"] == pytest.approx(perplexity(model, tokens))   # the hook was removed
    assert result["performer"][0] > result["exact"]
