import numpy as np
import pytest
import torch

from common.flow_matching import MACCounter, sample
from papers.blockwise_flow_matching.blockwise_flow_matching import (
    BFM,
    BFMConfig,
    flops_to_match,
    flops_to_match_bounds,
    frn_loss,
    inference_parameters,
    sample_bfm,
    sampling_macs,
    segment_bounds,
    segment_of,
    segment_split,
    step_macs,
    stratified_times,
)


def randomised(cfg, seed=0):
    """A model with every parameter random (the zero-initialised adaLN gates would hide routing bugs)."""
    torch.manual_seed(seed)
    m = BFM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def test_segments():
    assert np.allclose(segment_bounds(3), [1, 2 / 3, 1 / 3, 0])
    t = torch.tensor([1.0, 0.9, 2 / 3, 0.6, 1 / 3, 0.2, 0.0])
    assert segment_of(t, 3).tolist() == [0, 0, 1, 1, 2, 2, 2]  # t_s itself starts segment s
    assert segment_of(t, 1).tolist() == [0] * 7
    assert segment_split(10, 3) == [4, 3, 3] and sum(segment_split(7, 6)) == 7
    t, s = stratified_times(300, 3, torch.Generator().manual_seed(0))
    b = torch.tensor(segment_bounds(3), dtype=t.dtype)
    assert torch.all((t <= b[s]) & (t >= b[s + 1])) and s.bincount().tolist() == [100, 100, 100]
    with pytest.raises(ValueError):
        segment_bounds(0)
    with pytest.raises(ValueError):
        BFMConfig(feature_depth=0, sfg=True)


@pytest.mark.parametrize("sfg", [True, False])
@pytest.mark.parametrize("segments", [1, 3])
def test_step_macs_equal_counted_and_independent_of_s(segments, sfg):
    cfg = BFMConfig(segments=segments, sfg=sfg, width=16, cond_dim=8, feature_depth=2, velocity_depth=2)
    m = randomised(cfg)
    x = torch.randn(5, 64)
    with MACCounter(m) as c:
        m(x, torch.full((5,), 0.4), torch.arange(5))
    assert c.macs == 5 * step_macs(cfg)
    assert step_macs(cfg) == step_macs(BFMConfig(segments=1, sfg=sfg, width=16, cond_dim=8, feature_depth=2,
                                                 velocity_depth=2))


def test_routing_uses_the_block_of_each_segment():
    cfg = BFMConfig(segments=3, width=16, cond_dim=8, feature_depth=1)
    m = randomised(cfg)
    x, y = torch.randn(6, 64), torch.arange(6)
    t = torch.tensor([0.9, 0.5, 0.1, 0.95, 0.4, 0.05])
    mixed = m(x, t, y)
    for i in range(6):
        assert torch.allclose(mixed[i], m(x[i:i + 1], t[i:i + 1], y[i:i + 1])[0], atol=1e-6)
    # changing block 2 changes only the samples of segment 2
    with torch.no_grad():
        for p in m.velocity_blocks[2].parameters():
            p.add_(1.0)
    after = m(x, t, y)
    seg2 = segment_of(t, 3) == 2
    assert torch.allclose(after[~seg2], mixed[~seg2]) and not torch.allclose(after[seg2], mixed[seg2])


def test_sampler_matches_common_euler_and_frn_costs():
    cfg = BFMConfig(segments=3, width=16, cond_dim=8, feature_depth=2, frn_depth=1)
    m = randomised(cfg)
    noise, y = torch.randn(4, 64, generator=torch.Generator().manual_seed(1)), torch.arange(4)
    ours, counts = sample_bfm(m, noise, y, 2)
    ref = sample(lambda x, t, yy: m(x, t, yy), noise, y, n_steps=6)
    assert torch.allclose(ours, ref, atol=1e-5) and counts == {"full": 6, "frn": 0}
    # one step per segment: the FRN is never used
    assert torch.equal(sample_bfm(m, noise, y, 1, use_frn=True)[0], sample_bfm(m, noise, y, 1)[0])
    with MACCounter(m) as c:
        _, counts = sample_bfm(m, noise, y, 4, use_frn=True)
    assert counts == {"full": 3, "frn": 9}
    assert c.macs == 4 * sampling_macs(cfg, 4, use_frn=True)
    assert sampling_macs(cfg, 4, use_frn=True) < sampling_macs(cfg, 4)


def test_frn_loss_zero_when_features_constant_in_segment():
    # with the feature network made independent of x (zero input weights) and of t only through c, r(x_t) - r(x_ts)
    # depends on t only; with a zero FRN the loss equals that mean squared gap; at a zero-width gap it is 0
    cfg = BFMConfig(segments=2, width=8, cond_dim=4, feature_depth=1, frn_depth=1)
    m = randomised(cfg)
    with torch.no_grad():
        m.feat_in.weight.zero_()
        for p in m.feat_blocks.parameters():
            p.zero_()
        m.t_embed[2].weight.zero_()  # c independent of t
    loss, _ = frn_loss(m, torch.randn(8, 64), torch.arange(8), torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.frn_out.weight.zero_()
        m.frn_out.bias.zero_()
    loss0, _ = frn_loss(m, torch.randn(8, 64), torch.arange(8), torch.Generator().manual_seed(0))
    assert loss0.item() == pytest.approx(0.0, abs=1e-12) and loss.item() >= 0


def test_parameters_and_flops_to_match():
    m1 = BFM(BFMConfig(segments=1, width=16, cond_dim=8, frn_depth=0))
    m3 = BFM(BFMConfig(segments=3, width=16, cond_dim=8, frn_depth=0))
    block = sum(p.numel() for p in m1.velocity_blocks[0].parameters())
    assert inference_parameters(m3) - inference_parameters(m1) == 2 * block
    assert flops_to_match([1, 2, 4], [5.0, 3.0, 1.0], 3.0) == 2.0
    assert flops_to_match([1, 2], [5.0, 4.0], 3.0) == float("inf")


def test_flops_to_match_bounds():
    # curve A matches first at 4 (3 failed before it), curve B never matches (largest point 5)
    lo, hi = flops_to_match_bounds([([1, 3, 4], [5.0, 3.5, 2.0]), ([2, 5], [4.0, 3.1])], 3.0)
    assert (lo, hi) == (3.0, 4.0)
    # the upper bound agrees with flops_to_match on a single curve
    assert flops_to_match_bounds([([4, 1, 2], [1.0, 5.0, 3.0])], 3.0) == (1.0, flops_to_match([1, 2, 4], [5.0, 3.0, 1.0], 3.0))
    # the cheapest point matches: lower bound 0; no curve matches: (largest swept FLOPs, inf)
    assert flops_to_match_bounds([([1, 2], [2.0, 1.0])], 3.0) == (0.0, 1.0)
    assert flops_to_match_bounds([([1, 2], [5.0, 4.0])], 3.0) == (2.0, float("inf"))

