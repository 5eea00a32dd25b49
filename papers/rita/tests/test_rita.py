import math

import numpy as np
import pytest
import torch

from common import attention as at
from papers.rita.rita import (
    MOTIFS,
    RULES,
    AdaptiveGroupScheduler,
    TimeSeriesEncoder,
    accuracy,
    attention_time_benchmark,
    compare_attention,
    group_error_stats,
    make_synhar,
    motif,
    scheduler_study,
    train,
    windows,
)


def test_synhar_shapes_labels_and_determinism():
    X, y = make_synhar(12, 400, np.random.default_rng(0))
    assert X.shape == (12, 3, 400) and X.dtype == np.float32
    assert set(y) <= set(range(len(MOTIFS)))
    X2, y2 = make_synhar(12, 400, np.random.default_rng(0))
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    with pytest.raises(ValueError):
        make_synhar(2, 400, np.random.default_rng(0), n_class_bursts=2, n_distractors=2)


def test_motifs_are_distinct_and_enveloped():
    rng = np.random.default_rng(1)
    for kind in MOTIFS:
        wave = motif(kind, 100, rng)
        assert wave.shape == (100,) and abs(wave[0]) < 1e-12 and np.abs(wave).max() <= 1.0
    with pytest.raises(ValueError):
        motif("triangle", 10, rng)


def test_windows_split_shape_and_level():
    X = torch.arange(2 * 3 * 20, dtype=torch.float32).reshape(2, 3, 20)
    tokens = windows(X, 5)
    assert tokens.shape == (2, 4, 18)
    first = tokens[0, 0, :6]  # channel 0, first window: samples 0..4 minus their mean 2, then the mean
    assert torch.allclose(first, torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 2.0]))
    with pytest.raises(ValueError):
        windows(X, 7)


def test_scheduler_grows_n_for_spread_keys_and_shrinks_it_for_identical_keys():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 64, 8, dtype=torch.float64, generator=g)
    spread = torch.randn(1, 1, 64, 8, dtype=torch.float64, generator=g)
    grow = AdaptiveGroupScheduler(64, 1, epsilon=1.5, n_init=8)
    grow.observe(0, q, spread, at.kmeans(spread, 8, generator=g))
    assert grow.n[0] > 8
    same = torch.randn(1, 1, 1, 8, dtype=torch.float64, generator=g).expand(1, 1, 64, 8) + 1e-6 * spread
    shrink = AdaptiveGroupScheduler(64, 1, epsilon=1.5, n_init=8)
    shrink.observe(0, q, same, at.kmeans(same, 8, generator=g))
    assert shrink.n[0] < 8 and shrink.n_groups(0) >= shrink.n_min
    rms = AdaptiveGroupScheduler(64, 1, epsilon=1.5, n_init=8, rule="rms")
    rms.observe(0, q, spread, at.kmeans(spread, 8, generator=g))
    assert 8 < rms.n[0] <= grow.n[0]
    with pytest.raises(ValueError):
        AdaptiveGroupScheduler(64, 1, epsilon=1.0)
    with pytest.raises(ValueError):
        AdaptiveGroupScheduler(64, 1, rule="median")


def test_official_rule_merges_only_with_the_unscaled_threshold():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 64, 16, dtype=torch.float64, generator=g)
    spread = 10 * torch.randn(1, 1, 64, 16, dtype=torch.float64, generator=g)
    official = AdaptiveGroupScheduler(64, 1, epsilon=2.0, n_init=8, rule="official")
    stats = official.observe(0, q, spread, at.kmeans(spread, 8, generator=g))
    assert stats["splits"] > 0 and official.n[0] == 8.0     # splits are counted, never applied
    same = torch.randn(1, 1, 1, 16, dtype=torch.float64, generator=g).expand(1, 1, 64, 16) + 1e-9 * spread
    grouping = at.kmeans(same, 8, generator=g)
    official.observe(0, q, same, grouping)
    merges = int((grouping.counts > 0).sum()) - 1  # every non-empty centroid but the first has an earlier one within 2r
    assert official.n[0] == pytest.approx(8 - 0.5 * merges)
    # the official threshold is ln(eps) / (2 rms|q|), the guarantee's is sqrt(d) times larger
    r_official = official.thresholds(q, at.default_scale(16))
    r_rms = AdaptiveGroupScheduler(64, 1, rule="rms").thresholds(q, at.default_scale(16))
    rms_q = q.square().sum(-1).mean(-1).sqrt()
    assert torch.allclose(r_official, math.log(2.0) / (2 * rms_q))
    assert torch.allclose(r_rms, 4 * r_official)
    assert set(RULES) == {"official", "rms", "bound"}


def test_error_stats_respect_the_bound():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 32, 8, generator=g) for _ in range(3))
    out, grouping = at.group_attention(q, k, v, n_groups=4, generator=g, return_grouping=True)
    stats = group_error_stats(q, k, v, grouping, out)
    assert stats["max_log_ratio"] <= stats["bound"] + 1e-9
    assert 0 < stats["rel_out_error"] < 1 and stats["n_tokens"] == 32


@pytest.mark.parametrize("mode", ["exact", "group", "adaptive"])
def test_encoder_trains_a_few_steps(mode):
    torch.manual_seed(0)
    X, y = make_synhar(16, 400, np.random.default_rng(2))
    tokens, labels = windows(X, 10), torch.as_tensor(y)
    scheduler = AdaptiveGroupScheduler(40, 2) if mode == "adaptive" else None
    model = TimeSeriesEncoder(tokens.shape[-1], 40, 6, attention=mode, n_groups=4, scheduler=scheduler,
                              generator=torch.Generator().manual_seed(0))
    model.monitor = mode != "exact"
    losses = train(model, tokens, labels, epochs=2, batch_size=8, lr=1e-3, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    if mode != "exact":
        assert len(model.log) == 2 * 2 * 2  # layers x batches x epochs
    model.monitor = False
    assert 0 <= accuracy(model, tokens, labels) <= 1
    with pytest.raises(ValueError):
        TimeSeriesEncoder(33, 40, 6, attention="adaptive")


def test_monitor_subsample_and_set_attention():
    X, _ = make_synhar(8, 400, np.random.default_rng(3))
    tokens = windows(X, 20)
    model = TimeSeriesEncoder(tokens.shape[-1], 20, 6, attention="exact", generator=torch.Generator().manual_seed(0))
    scheduler = AdaptiveGroupScheduler(20, 2, rule="official")
    model.set_attention("adaptive", scheduler=scheduler)
    model.monitor, model.monitor_sequences = True, 2
    model(tokens)
    assert len(model.log) == 2 and all(entry["n_tokens"] == 20 for entry in model.log)
    with pytest.raises(ValueError):
        model.set_attention("adaptive")


def test_compare_attention_pairs_seeds_and_scheduler_study_runs():
    X, y = make_synhar(40, 400, np.random.default_rng(4))
    tokens, labels = windows(X, 20), torch.as_tensor(y)
    runs = compare_attention(tokens[:32], labels[:32], tokens[32:], labels[32:], n_seeds=2, n_groups=4,
                             batch_size=16, log=None)
    assert set(runs["accuracy"]) == {"exact", "group"} and all(len(v) == 2 for v in runs["accuracy"].values())
    again = compare_attention(tokens[:32], labels[:32], tokens[32:], labels[32:], n_seeds=2, n_groups=4,
                              batch_size=16, log=None)
    assert again["accuracy"] == runs["accuracy"]
    study = scheduler_study(tokens[:32], labels[:32], tokens[32:], labels[32:], rules=("official", "bound"),
                            pretrain_steps=1, steps=1, batch_size=16, monitor_sequences=4)
    assert set(study["logs"]) == {"official", "bound"}
    assert len(study["logs"]["official"]) == 2 and 0 <= study["accuracy"]["bound"] <= 1
    with pytest.raises(ValueError):
        scheduler_study(tokens, labels, tokens, labels, pretrain_steps=5, steps=5, batch_size=16)


def test_time_benchmark_reports_ratios():
    rows = attention_time_benchmark([64], n_groups=8, repeats=1, warmup=0)
    assert rows[0]["n"] == 64 and rows[0]["exact_ms"] > 0 and rows[0]["flop_ratio"] > 0
