import copy

import pytest
import torch

from papers.smoothed_markets.markets import (
    BIAS_LEADING_COEFFICIENT,
    BidderMLP,
    allocate_and_pay,
    bias_bound,
    bne_bid,
    l2_distance,
    learning_comparison,
    pretrain_truthful,
    reinforce_loss,
    sample_values,
    seeded_generator,
    smoothed_allocate_and_pay,
    smoothing_bias,
    smoothing_bias_exact,
    smoothing_bias_mc,
    train,
    utilities,
    utility_loss,
)


class FixedBid(torch.nn.Module):
    """A one-item strategy b = slope * v, shaped like BidderMLP for the metrics."""

    def __init__(self, slope):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, 1))
        self.slope = slope

    def forward(self, v):
        return self.slope * v


def test_exact_auction_first_and_second_price_two_items():
    bids = torch.tensor([[[0.3, 0.9], [0.5, 0.2], [0.1, 0.4]]])  # (1 batch, 3 bidders, 2 items)
    values = torch.ones_like(bids)
    alloc, pay = allocate_and_pay(bids, "first_price")
    assert alloc[0, :, 0].tolist() == [0, 1, 0] and alloc[0, :, 1].tolist() == [1, 0, 0]
    assert pay[0, 1, 0] == pytest.approx(0.5) and pay[0, 0, 1] == pytest.approx(0.9)
    _, pay2 = allocate_and_pay(bids, "second_price")
    assert pay2[0, 1, 0] == pytest.approx(0.3) and pay2[0, 0, 1] == pytest.approx(0.4)
    u = utilities(values, bids, "second_price")
    assert u[0].tolist() == pytest.approx([0.6, 0.7, 0.0])


def test_smoothed_market_tends_to_exact_and_is_differentiable():
    g = seeded_generator(0)
    v = sample_values(500, 2, 3, g)
    bids = (0.5 * v).requires_grad_()
    u_exact = utilities(v, bids.detach(), "first_price")
    u_smooth = utilities(v, bids, "first_price", temperature=1e-4)
    assert torch.allclose(u_smooth.mean(0), u_exact.mean(0), atol=5e-3)
    u_smooth[:, 0].sum().backward()
    assert bids.grad.abs().sum() > 0
    alloc, _ = smoothed_allocate_and_pay(bids.detach(), "second_price", 0.1)
    assert torch.allclose(alloc.sum(1), torch.ones(500, 3))
    with pytest.raises(ValueError):
        smoothed_allocate_and_pay(bids.detach(), "first_price", 0.0)
    with pytest.raises(ValueError):
        allocate_and_pay(bids.detach(), "dutch")


def test_fpsb_bne_is_half_value_and_spsb_truthful():
    # Grid best response against the analytical BNE gives (almost) zero utility loss...
    g = seeded_generator(1)
    assert utility_loss(FixedBid(0.5), "first_price", 2, n_opponent=20000, generator=g) < 2e-3
    assert utility_loss(FixedBid(1.0), "second_price", 2, n_opponent=20000, generator=g) < 2e-3
    # ...while truthful bidding in the first-price auction is clearly exploitable (loss 1/12 ≈ 0.083 at n=2).
    assert utility_loss(FixedBid(1.0), "first_price", 2, n_opponent=20000, generator=g) > 0.05
    v = torch.linspace(0, 1, 11)
    assert torch.allclose(bne_bid(v, "first_price", 2), v / 2) and torch.allclose(bne_bid(v, "second_price", 2), v)
    assert l2_distance(FixedBid(0.5), "first_price", 2) == pytest.approx(0.0)


def test_bias_within_bound_and_quadratic_at_bne():
    # The paper's bound is linear in λ; the bias at the BNE is -(π²/3) λ² + O(λ³): both are checked.
    for lam in (0.001, 0.01, 0.05):
        assert abs(smoothing_bias_exact(lam)) <= bias_bound(lam)
    assert bias_bound(0.02) == pytest.approx(2 * bias_bound(0.01))
    assert smoothing_bias_exact(1e-3) / (-BIAS_LEADING_COEFFICIENT * 1e-6) == pytest.approx(1.0, abs=0.01)
    assert smoothing_bias_exact(2e-3) / smoothing_bias_exact(1e-3) == pytest.approx(4.0, rel=0.02)
    # The simulator's Monte-Carlo estimate agrees with the quadrature (within 4 standard errors).
    g = seeded_generator(2)
    mc, se = smoothing_bias_mc(0.05, 1 << 17, g)
    assert abs(mc - smoothing_bias_exact(0.05)) < 4 * se
    assert smoothing_bias(0.05, generator=seeded_generator(2), n_samples=20000) <= bias_bound(0.05)


def test_reinforce_scores_the_unclamped_action():
    # The score is that of the Gaussian sample a = μ + std·ξ (the policy's action); the auction sees max(a, 0).
    # Low values make many actions negative, where the old code scored the clamped bid 0 instead of a.
    model = FixedBid(0.0)
    model.slope = torch.nn.Parameter(torch.tensor(0.1))
    values = sample_values(256, 2, 1, seeded_generator(4))
    std = 0.05
    reinforce_loss(model, values, "first_price", std, seeded_generator(5)).backward()
    mean = 0.1 * values
    actions = mean + torch.randn(mean.shape, generator=seeded_generator(5)) * std
    reward = utilities(values, actions.clamp_min(0.0), "first_price")[:, 0]
    score = ((actions[:, 0] - mean[:, 0]) / std**2 * values[:, 0]).sum(-1)  # d log N(a; slope·v, std²)/d slope
    expected = -((reward - reward.mean()) * score).mean()
    assert (actions < 0).any()
    assert float(model.slope.grad) == pytest.approx(float(expected), rel=1e-5)


def test_learning_comparison_pairs_methods():
    out = learning_comparison(3, ("sm", "reinforce"), iterations=5, pretrain_steps=5, mechanism="first_price",
                              n_bidders=2, batch=64, lr=1e-3)
    assert set(out["l2"]) == {"sm", "reinforce"} and set(out["utility_loss"]) == {"sm", "reinforce"}
    again = learning_comparison(3, ("sm",), iterations=5, pretrain_steps=5, mechanism="first_price",
                                n_bidders=2, batch=64, lr=1e-3)
    assert again["l2"]["sm"] == out["l2"]["sm"]  # the same seed gives the same run


def test_sm_moves_towards_bne():
    torch.manual_seed(0)
    g = seeded_generator(3)
    model = BidderMLP(1)
    pretrain_truthful(model, 150, g)
    before = l2_distance(model, "first_price", 2)
    trained = copy.deepcopy(model)
    train(trained, "sm", 60, mechanism="first_price", n_bidders=2, batch=1024, lr=1e-2, generator=g)
    assert l2_distance(trained, "first_price", 2) < before
    with pytest.raises(ValueError):
        train(model, "adam", 1, mechanism="first_price", n_bidders=2, batch=8, lr=1e-2)


def test_multi_item_and_second_price_learning_runs():
    # Two items: the L2 distance uses fixed uniform draws from [0, 1]^2; a truthful strategy is at L2 = 0 in SPSB.
    out = learning_comparison(4, ("sm",), iterations=3, pretrain_steps=3, mechanism="first_price", n_bidders=2,
                              n_items=2, batch=64, lr=1e-3)
    assert out["l2"]["sm"] > 0 and out["utility_loss"] == {}
    v = torch.rand(4096, 2, generator=torch.Generator().manual_seed(0))

    class Half(torch.nn.Module):
        net = torch.nn.Sequential(torch.nn.Linear(2, 1))

        def forward(self, values):
            return values / 2

    assert l2_distance(Half(), "first_price", 2) == pytest.approx(0.0)
    assert l2_distance(Half(), "second_price", 2) == pytest.approx(float((v / 2).pow(2).mean().sqrt()))
    spsb = learning_comparison(4, ("sm",), iterations=3, pretrain_steps=3, mechanism="second_price", n_bidders=2,
                               batch=64, lr=1e-3)
    assert set(spsb["utility_loss"]) == {"sm"}
