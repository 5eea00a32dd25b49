import pytest
import torch
import torch.nn.functional as F

from common.flow_matching import MACCounter, sample
from papers.blockwise_flow_matching.blockwise_flow_matching import (
    alignment_loss,
    bfm_loss,
    build_model,
    frn_loss,
    model_cache_path,
    run_variants,
    sample_bfm,
    sampling_macs,
    segment_of,
    step_macs,
    train_bfm,
)
from papers.blockwise_flow_matching.dit16 import TARGET_DIM, BFMDiT, BFMDiTConfig, spatial_targets

SMALL = dict(width=16, heads=2, feature_depth=2, velocity_depth=1, frn_depth=1, t_freq_dim=16)


def randomised(cfg, seed=0):
    """Every parameter random (the zero-initialised adaLN gates and final layer would hide routing bugs)."""
    torch.manual_seed(seed)
    m = BFMDiT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def test_zero_output_at_initialisation_and_shapes():
    m = BFMDiT(BFMDiTConfig(segments=3, **SMALL))
    x = torch.randn(4, 256)
    v, r = m(x, torch.full((4,), 0.3), torch.arange(4), return_features=True)
    assert v.shape == (4, 256) and torch.equal(v, torch.zeros_like(v))
    assert r.shape == (4, 64, 16)
    assert torch.equal(m.frn(x, m.condition(torch.full((4,), 0.3), torch.arange(4))), torch.zeros(4, 64, 16))
    with pytest.raises(ValueError):
        m(torch.randn(2, 64), torch.zeros(2), torch.arange(2))
    with pytest.raises(ValueError):
        BFMDiTConfig(feature_depth=0, sfg=True)
    with pytest.raises(ValueError):
        BFMDiTConfig(width=18, heads=4)


@pytest.mark.parametrize("sfg", [True, False])
@pytest.mark.parametrize("segments", [1, 3])
def test_step_macs_equal_counted(segments, sfg):
    """Linear layers counted by MACCounter, plus the two attention products (2·T·T·D per block) it cannot see."""
    cfg = BFMDiTConfig(segments=segments, sfg=sfg, **SMALL)
    m = randomised(cfg)
    x, n_blocks = torch.randn(3, 256), cfg.feature_depth + cfg.velocity_depth
    T, D = cfg.dit.tokens, cfg.width
    with MACCounter(m) as c:
        m(x, torch.full((3,), 0.4), torch.arange(3))
    assert c.macs + 3 * n_blocks * 2 * T * T * D == 3 * step_macs(cfg)
    frn_blocks = cfg.frn_depth
    with MACCounter(m) as c:
        r0 = torch.zeros(3, T, D)
        cond = m.condition(torch.full((3,), 0.4), torch.arange(3))
        m.velocity_from(x, cond, r0 + m.frn(x, cond), torch.zeros(3, dtype=torch.long))
    counted_frn = c.macs + 3 * (frn_blocks + cfg.velocity_depth) * 2 * T * T * D  # an FRN step, condition included
    assert counted_frn == 3 * step_macs(cfg, frn_step=True)
    assert step_macs(cfg, frn_step=True) < step_macs(cfg)
    same = BFMDiTConfig(segments=1, sfg=sfg, **SMALL)
    assert step_macs(cfg) == step_macs(same)  # per-step cost independent of S


def test_routing_uses_the_block_of_each_segment():
    cfg = BFMDiTConfig(segments=3, **SMALL)
    m = randomised(cfg)
    x, y = torch.randn(6, 256), torch.arange(6)
    t = torch.tensor([0.9, 0.5, 0.1, 0.95, 0.4, 0.05])
    mixed = m(x, t, y)
    for i in range(6):
        assert torch.allclose(mixed[i], m(x[i:i + 1], t[i:i + 1], y[i:i + 1])[0], atol=1e-5)
    with torch.no_grad():
        for p in m.velocity_blocks[1].parameters():
            p.add_(1.0)
    after = m(x, t, y)
    seg1 = segment_of(t, 3) == 1
    assert torch.allclose(after[~seg1], mixed[~seg1]) and not torch.allclose(after[seg1], mixed[seg1])


def test_sfg_modulation_is_per_token():
    """Under SFG two tokens with equal velocity-stream inputs but different feature tokens get different outputs."""
    cfg = BFMDiTConfig(segments=1, **SMALL)
    m = randomised(cfg)
    x = torch.zeros(1, 256)
    c = m.condition(torch.tensor([0.5]), torch.tensor([3]))
    r = torch.zeros(1, 64, 16)
    base = m.velocity_from(x, c, r, torch.zeros(1, dtype=torch.long))
    r2 = r.clone()
    r2[0, 5] = 1.0
    moved = m.velocity_from(x, c, r2, torch.zeros(1, dtype=torch.long))
    assert not torch.allclose(base, moved)


def test_sampler_matches_common_euler_and_frn():
    cfg = BFMDiTConfig(segments=3, **SMALL)
    m = randomised(cfg)
    noise, y = torch.randn(3, 256, generator=torch.Generator().manual_seed(1)), torch.arange(3)
    ours, counts = sample_bfm(m, noise, y, 2)
    ref = sample(lambda x, t, yy: m(x, t, yy), noise, y, n_steps=6)
    assert torch.allclose(ours, ref, atol=1e-4) and counts == {"full": 6, "frn": 0}
    _, counts = sample_bfm(m, noise, y, 3, use_frn=True)
    assert counts == {"full": 3, "frn": 6}
    assert sampling_macs(cfg, 3, use_frn=True) == 3 * step_macs(cfg) + 6 * step_macs(cfg, frn_step=True)


def test_losses_on_tokens():
    cfg = BFMDiTConfig(segments=3, **SMALL)
    m = randomised(cfg)
    g = torch.Generator().manual_seed(0)
    x, y, target = torch.randn(6, 256), torch.arange(6), torch.randn(6, 64 * TARGET_DIM)
    loss, logs = bfm_loss(m, x, y, target, g)
    assert torch.isfinite(loss) and set(logs) == {"fm", "align"}
    r = torch.randn(6, 64, 16)
    z = m.proj(r)
    tokens = target.reshape(6, 64, TARGET_DIM)  # token k aligned with the target at position k
    expected = -torch.stack([F.cosine_similarity(z[:, k], tokens[:, k], dim=1) for k in range(64)]).mean()
    assert alignment_loss(m, r, target).item() == pytest.approx(expected.item(), rel=1e-5)
    # a zero FRN and a feature network independent of x and t: r(x_t) = r(x_ts), so the FRN loss is 0
    with torch.no_grad():
        m.feat_embed.weight.zero_()
        for p in m.feat_blocks.parameters():
            p.zero_()
        m.t_embedder[2].weight.zero_()
        m.t_embedder[2].bias.zero_()
        m.t_embedder[0].weight.zero_()
        m.frn_out.weight.zero_()
        m.frn_out.bias.zero_()
    loss0, _ = frn_loss(m, x, y, torch.Generator().manual_seed(0))
    assert loss0.item() == pytest.approx(0.0, abs=1e-10)


def test_train_cache_round_trip_and_keys(tmp_path):
    cfg = BFMDiTConfig(segments=3, **SMALL)
    model, summary = train_bfm(cfg, 0, 3, batch_size=8, frn_iters=2, cache_dir=tmp_path)
    assert summary["cached"] is False and len(list(tmp_path.iterdir())) == 1
    again, summary2 = train_bfm(cfg, 0, 3, batch_size=8, frn_iters=2, cache_dir=tmp_path)
    assert summary2["cached"] is True and summary2["fm"] == summary["fm"] and summary2["frn"] == summary["frn"]
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    fresh, _ = train_bfm(cfg, 0, 3, batch_size=8, frn_iters=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    key = model_cache_path(tmp_path, cfg, 0, 3, 8, 2e-3, 2)
    assert key != model_cache_path(tmp_path, cfg, 1, 3, 8, 2e-3, 2)
    assert key != model_cache_path(tmp_path, BFMDiTConfig(segments=1, **SMALL), 0, 3, 8, 2e-3, 2)
    assert key != model_cache_path(tmp_path, cfg, 0, 4, 8, 2e-3, 2)
    assert isinstance(build_model(cfg), BFMDiT)


def test_run_variants_in_workers_equals_sequential():
    configs = {"s1_nosfg": BFMDiTConfig(segments=1, sfg=False, **{**SMALL, "frn_depth": 0}),
               "s1_sfg": BFMDiTConfig(segments=1, **{**SMALL, "frn_depth": 0}),
               "s3_nosfg": BFMDiTConfig(segments=3, sfg=False, **{**SMALL, "frn_depth": 0}),
               "s3_sfg": BFMDiTConfig(segments=3, **SMALL)}
    args = (configs, [0, 100], 1, 3, 2, 8, [3, 6], [5], 20)
    seq = run_variants(*args, progress=False, grid=4, grid_steps=3)
    par = run_variants(*args, n_jobs=2, progress=False, grid=4, grid_steps=3)
    assert seq[0] == par[0] and seq[1] == par[1]
    assert len(seq[0]["s1_sfg"]) == 2 and len(seq[0]["s1_nosfg"]) == 1 and len(seq[0]["s3_sfg_frn"]) == 1
    assert set(seq[2]["grids"]) == set(configs) and seq[2]["grids"]["s3_sfg"].shape == (4, 256)
    assert all(torch.equal(seq[2]["grids"][k], par[2]["grids"][k]) for k in configs)


def test_spatial_targets_follow_the_token_grid():
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import DigitsFeatures

    x8 = load_digits_split().x_train[:3]
    t = spatial_targets(x8)
    assert t.shape == (3, 64, TARGET_DIM)
    net = DigitsFeatures.load().net
    with torch.no_grad():
        fmap = F.silu(net.conv2(F.silu(net.conv1(x8.reshape(-1, 1, 8, 8).float()))))  # [3, 64, 8, 8]
    for k in (0, 9, 27, 63):  # token k = (row k // 8, column k % 8), as patchify orders the 16x16 image's patches
        assert torch.allclose(t[:, k], fmap[:, :, k // 8, k % 8])
