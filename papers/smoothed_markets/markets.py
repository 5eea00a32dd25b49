"""Smoothed markets (Kohring, Pieroth & Bichler, ICML 2023): first-order learning of auction equilibria.

**Auction game.** ``n`` bidders with private additive values ``v_i ∈ [0, 1]^m`` (i.i.d. uniform) for ``m``
items sold simultaneously, each in its own sealed-bid auction. A bidder's strategy maps its values to bids
``b_i = β_θ(v_i)``. For each item ``k`` the highest bid wins (allocation ``x_ik ∈ {0, 1}``) and the winner
pays its own bid (first price, FPSB) or the second-highest bid (second price, SPSB):

    u_i(v_i, b) = Σ_k x_ik(b) (v_ik − p_ik(b))                                              (1)

The symmetric Bayes–Nash equilibria (BNE) are known: ``β*(v) = (n−1)/n · v`` (FPSB) and ``β*(v) = v``
(SPSB, truthful), per item for additive values.

**Why smoothing.** ``x(b)`` is piecewise constant, so the pathwise (first-order) Monte-Carlo gradient of
``E u_i`` w.r.t. ``θ`` ignores the allocation jumps and is systematically misleading; zeroth-order methods
(NPGA = evolution strategies, REINFORCE) work but are noisy and costly.

**Smoothed market** (Sec. 3). Replace the allocation by a softmax with temperature ``λ`` and split the
original total payment of each item in proportion to it:

    x^λ_ik(b) = exp(b_ik/λ) / Σ_j exp(b_jk/λ),     p^λ_ik(b) = x^λ_ik(b) · P_k(b)                 (2)

with ``P_k = max_j b_jk`` (FPSB) or the second-highest bid (SPSB); ``u^λ_i = Σ_k x^λ_ik v_ik − p^λ_ik``.
As ``λ → 0`` the smoothed game tends to the original one. ``u^λ`` is differentiable in the bids, so
**SM** ascends ``E u^λ_i`` by autograd (first order).

**Bias bound** (Sec. 4). The paper bounds the ex-ante utility error of the smoothed game linearly in ``λ``;
for the 2-bidder FPSB against the BNE opponent the bound (official notebook ``smooth-bound``) is

    |ū^λ − ū| ≤ (ln 2 + 1)/s · λ,   s = 0.5                                                    (3)

The bound holds against any opponent; at the BNE itself the error is quadratic, ``−(π²/3) λ² + O(λ³)``
(:func:`smoothing_bias_exact`).

**Metrics.** ``L2 = sqrt(E_v (β(v) − β*(v))²)``; the ex-interim utility loss
``ε = E_v [max_b' u(v, b') − u(v, β(v))]`` against opponents playing ``β`` (best response on a bid grid).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call

from common.zeroth_order import es_gradient, gaussian_log_prob, reinforce_surrogate

__all__ = [
    "MECHANISMS",
    "sample_values",
    "bne_bid",
    "allocate_and_pay",
    "smoothed_allocate_and_pay",
    "utilities",
    "BidderMLP",
    "pretrain_truthful",
    "sm_loss",
    "npga_gradient",
    "reinforce_loss",
    "training_step",
    "train",
    "learning_comparison",
    "l2_distance",
    "utility_loss",
    "smoothing_bias",
    "smoothing_bias_mc",
    "smoothing_bias_exact",
    "BIAS_LEADING_COEFFICIENT",
    "bias_bound",
    "gradient_variance",
    "seeded_generator",
]

MECHANISMS = ("first_price", "second_price")


def _check_mechanism(mechanism: str) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def sample_values(batch: int, n_bidders: int, n_items: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Private values ``(batch, n_bidders, n_items)``, i.i.d. U[0, 1]."""
    if batch < 1 or n_bidders < 2 or n_items < 1:
        raise ValueError(f"need batch >= 1, n_bidders >= 2, n_items >= 1; got {batch}, {n_bidders}, {n_items}")
    return torch.rand(batch, n_bidders, n_items, generator=generator)


def bne_bid(values: torch.Tensor, mechanism: str, n_bidders: int) -> torch.Tensor:
    """Analytical symmetric BNE: ``(n−1)/n · v`` (first price), ``v`` (second price)."""
    _check_mechanism(mechanism)
    return values * (n_bidders - 1) / n_bidders if mechanism == "first_price" else values.clone()


def _total_payment(bids: torch.Tensor, mechanism: str) -> torch.Tensor:
    """Per-item price ``P_k`` (batch, 1, m): highest bid (FPSB) or second-highest bid (SPSB)."""
    if mechanism == "first_price":
        return bids.amax(dim=1, keepdim=True)
    return bids.topk(2, dim=1).values[:, 1:2]


def allocate_and_pay(bids: torch.Tensor, mechanism: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact auction (1): one-hot allocation of each item to the highest bid, payments per item."""
    _check_mechanism(mechanism)
    if bids.ndim != 3 or bids.shape[1] < 2:
        raise ValueError(f"bids must be (batch, n_bidders >= 2, n_items), got {tuple(bids.shape)}")
    winner = bids.argmax(dim=1, keepdim=True)
    alloc = torch.zeros_like(bids).scatter_(1, winner, 1.0)
    return alloc, alloc * _total_payment(bids, mechanism)


def smoothed_allocate_and_pay(bids: torch.Tensor, mechanism: str, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed market (2): softmax allocation with temperature ``λ``, price split in proportion."""
    _check_mechanism(mechanism)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if bids.ndim != 3 or bids.shape[1] < 2:
        raise ValueError(f"bids must be (batch, n_bidders >= 2, n_items), got {tuple(bids.shape)}")
    alloc = torch.softmax(bids / temperature, dim=1)
    return alloc, alloc * _total_payment(bids, mechanism)


def utilities(values, bids, mechanism: str, temperature: float | None = None) -> torch.Tensor:
    """Realised utilities ``(batch, n_bidders)`` of (1), or of the smoothed game (2) if ``temperature``."""
    if temperature is None:
        alloc, pay = allocate_and_pay(bids, mechanism)
    else:
        alloc, pay = smoothed_allocate_and_pay(bids, mechanism, temperature)
    return (alloc * values - pay).sum(-1)


class BidderMLP(nn.Module):
    """Bidding strategy ``β_θ : [0,1]^m → R_+^m``: MLP with SELU hidden layers and a softplus output."""

    def __init__(self, n_items: int = 1, hidden: tuple[int, ...] = (10, 10)):
        super().__init__()
        dims = [n_items, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SELU()]
        layers.append(nn.Linear(dims[-1], n_items))
        self.net = nn.Sequential(*layers)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.net(v), beta=20.0)


def pretrain_truthful(model: BidderMLP, steps: int, generator: torch.Generator | None = None, lr: float = 1e-2) -> float:
    """Fit ``β_θ(v) ≈ v`` by least squares (the paper's pretraining); returns the final MSE."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_items = model.net[0].in_features
    loss = torch.tensor(0.0)
    for _ in range(steps):
        v = torch.rand(1024, n_items, generator=generator)
        loss = ((model(v) - v) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def _self_play_bids(model: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """Bids of all bidders under the shared strategy; only bidder 0's bids carry gradients."""
    bids = model(values)
    return torch.cat([bids[:, :1], bids[:, 1:].detach()], dim=1)


def sm_loss(model, values, mechanism: str, temperature: float) -> torch.Tensor:
    """SM objective: minus bidder 0's mean smoothed utility (2), differentiated pathwise."""
    return -utilities(values, _self_play_bids(model, values), mechanism, temperature)[:, 0].mean()


def _population_bids(model: nn.Module, params: list[dict], values: torch.Tensor) -> torch.Tensor:
    """Bids ``(P, ...)`` of ``P`` parameter sets of one network on the same values, in one batched pass.

    A :class:`BidderMLP` is evaluated layer by layer with batched matrix products (one ``baddbmm`` per linear
    layer for the whole population); any other module falls back to one ``functional_call`` per member.
    """
    if not isinstance(model, BidderMLP):
        return torch.stack([functional_call(model, p, (values,)) for p in params])
    h = values.reshape(1, -1, values.shape[-1]).expand(len(params), -1, -1)
    for i, layer in enumerate(model.net):
        if isinstance(layer, nn.Linear):
            weight = torch.stack([p[f"net.{i}.weight"] for p in params])  # (P, out, in)
            bias = torch.stack([p[f"net.{i}.bias"] for p in params]).unsqueeze(1)  # (P, 1, out)
            h = torch.baddbmm(bias, h, weight.transpose(1, 2))
        else:
            h = layer(h)
    return nn.functional.softplus(h, beta=20.0).reshape(len(params), *values.shape)


def npga_gradient(model, values, mechanism: str, sigma: float, population: int, generator=None) -> torch.Tensor:
    """NPGA: ES estimate (common.zeroth_order eq. 1) of ``∇_θ E u_0`` in the *unsmoothed* game.

    Bidder 0 plays the perturbed parameters ``θ + σε``, the others the current ``θ``.
    """
    params = {k: p.detach() for k, p in model.named_parameters()}
    shapes = [(k, p.shape, p.numel()) for k, p in params.items()]
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    with torch.no_grad():
        opp_bids = model(values[:, 1:])

    def unflatten(vec):
        out, i = {}, 0
        for k, shape, size in shapes:
            out[k] = vec[i : i + size].view(shape)
            i += size
        return out

    def objective(thetas: torch.Tensor) -> torch.Tensor:
        own = _population_bids(model, [unflatten(th) for th in thetas], values[:, :1])  # (P, batch, 1, m)
        n_pop, batch = own.shape[:2]
        bids = torch.cat([own, opp_bids.expand(n_pop, *opp_bids.shape)], 2).flatten(0, 1)
        u0 = utilities(values.repeat(n_pop, 1, 1), bids, mechanism)[:, 0]
        return u0.view(n_pop, batch).mean(1)

    return es_gradient(objective, theta, sigma, population, generator=generator)


def reinforce_loss(model, values, mechanism: str, std: float, generator=None) -> torch.Tensor:
    """REINFORCE surrogate (common.zeroth_order eq. 2) for the Gaussian policy ``b ~ N(β_θ(v), std²)``."""
    mean = model(values)
    actions = mean.detach() + torch.randn(mean.shape, generator=generator) * std
    # The policy's action is the unclamped Gaussian sample (its log-density is the score); the auction then
    # treats a negative bid as a bid of 0, which is part of the environment, not of the policy.
    reward = utilities(values, actions.clamp_min(0.0), mechanism)[:, 0]
    log_prob = gaussian_log_prob(actions[:, 0], mean[:, 0], std).sum(-1)
    return reinforce_surrogate(log_prob, reward)


def _set_grad(model: nn.Module, flat_grad: torch.Tensor) -> None:
    i = 0
    for p in model.parameters():
        p.grad = flat_grad[i : i + p.numel()].view_as(p).clone()
        i += p.numel()


def training_step(model, opt, method: str, values, *, mechanism: str, temperature: float = 0.01, sigma: float = 0.05,
                  population: int = 16, reinforce_std: float = 0.05, generator: torch.Generator | None = None) -> None:
    """One iteration of a learner on a batch of values: gradient estimate, then ``opt.step()``.

    ``"sm"``: autograd through the smoothed utility (2); ``"npga"``: ES estimate in the exact game;
    ``"reinforce"``: score-function estimate with a Gaussian policy in the exact game.
    """
    opt.zero_grad()
    if method == "sm":
        sm_loss(model, values, mechanism, temperature).backward()
    elif method == "reinforce":
        reinforce_loss(model, values, mechanism, reinforce_std, generator).backward()
    elif method == "npga":
        _set_grad(model, -npga_gradient(model, values, mechanism, sigma, population, generator))
    else:
        raise ValueError(f"method must be 'sm', 'npga' or 'reinforce', got {method!r}")
    opt.step()


def train(model, method: str, iterations: int, *, mechanism: str, n_bidders: int, batch: int, lr: float,
          temperature: float = 0.01, sigma: float = 0.05, population: int = 16, reinforce_std: float = 0.05,
          generator: torch.Generator | None = None, eval_every: int = 0, eval_values=None) -> list[float]:
    """Self-play learning of the shared strategy with Adam; ``method`` ∈ {"sm", "npga", "reinforce"}.

    Returns the L2 distances to the BNE recorded every ``eval_every`` iterations (if > 0).
    """
    if method not in ("sm", "npga", "reinforce"):
        raise ValueError(f"method must be 'sm', 'npga' or 'reinforce', got {method!r}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_items = model.net[0].in_features
    curve = []
    for it in range(iterations):
        values = sample_values(batch, n_bidders, n_items, generator)
        training_step(model, opt, method, values, mechanism=mechanism, temperature=temperature, sigma=sigma,
                      population=population, reinforce_std=reinforce_std, generator=generator)
        if eval_every and (it + 1) % eval_every == 0:
            curve.append(l2_distance(model, mechanism, n_bidders, eval_values))
    return curve


def learning_comparison(seed: int, methods=("sm", "npga", "reinforce"), *, iterations: int, pretrain_steps: int,
                        mechanism: str, n_bidders: int, n_items: int = 1, eval_every: int = 0, **hyper) -> dict:
    """One seed of the learner comparison: pretrain a truthful strategy, then train a copy with each method.

    Every method starts from the same pretrained network and sees the same sequence of value batches
    (each method's run restarts a generator seeded with ``seed``), so per-seed differences between methods
    are paired. Returns ``{"pretrained": model, "models": {m: model}, "curves": {m: [L2...]},
    "l2": {m: final L2}, "utility_loss": {m: ε}}``.
    """
    torch.manual_seed(int(seed) % (2**31))
    base = BidderMLP(n_items)
    pretrain_truthful(base, pretrain_steps, seeded_generator(seed))
    out = {"pretrained": base, "models": {}, "curves": {}, "l2": {}, "utility_loss": {}}
    for method in methods:
        model = copy.deepcopy(base)
        g = seeded_generator(seed + 1)  # same value batches for every method
        out["curves"][method] = train(model, method, iterations, mechanism=mechanism, n_bidders=n_bidders,
                                      generator=g, eval_every=eval_every, **hyper)
        out["models"][method] = model
        out["l2"][method] = l2_distance(model, mechanism, n_bidders)
        if n_items == 1:
            out["utility_loss"][method] = utility_loss(model, mechanism, n_bidders, generator=seeded_generator(seed + 2))
    return out


@torch.no_grad()
def l2_distance(model, mechanism: str, n_bidders: int, values: torch.Tensor | None = None) -> float:
    """``L2 = sqrt(E_v ‖β(v) − β*(v)‖² / m)`` on the given values.

    Default values: a uniform grid of 1001 points for one item; for ``m > 1`` items, 4096 fixed uniform draws
    from ``[0, 1]^m`` (generator seed 0, the same for every model).
    """
    if values is None:
        n_items = model.net[0].in_features
        if n_items == 1:
            values = torch.linspace(0, 1, 1001).unsqueeze(1)
        else:
            values = torch.rand(4096, n_items, generator=torch.Generator().manual_seed(0))
    diff = model(values) - bne_bid(values, mechanism, n_bidders)
    return float(diff.pow(2).mean().sqrt())


@torch.no_grad()
def utility_loss(model, mechanism: str, n_bidders: int, n_values: int = 64, n_bids: int = 256,
                 n_opponent: int = 4096, generator: torch.Generator | None = None) -> float:
    """Ex-interim utility loss ε of a one-item strategy against opponents playing it (grid best response).

    For each value ``v`` on a grid, ``u(v, b) = E[(v − p) 1{b > max opp bid}]`` is estimated on ``n_opponent``
    sampled opponent profiles (sorted, so ``P(win)`` and the expected second price are prefix counts and sums)
    for every ``b`` on a bid grid over [0, 1] and for ``b = β(v)``;
    ε = mean over ``v`` of ``max(0, max_b u(v, b) − u(v, β(v)))``.
    """
    _check_mechanism(mechanism)
    if model.net[0].in_features != 1:
        raise ValueError("utility_loss is implemented for one-item auctions")
    opp = model(torch.rand(n_opponent * (n_bidders - 1), 1, generator=generator)).view(n_opponent, n_bidders - 1)
    max_opp = opp.max(1).values.sort().values  # (K,) sorted highest opposing bids
    cum = torch.cat([torch.zeros(1), max_opp.cumsum(0)])  # cum[k] = sum of the k smallest
    v = (torch.arange(n_values) + 0.5) / n_values  # (V,)
    grid = torch.linspace(0, 1, n_bids)  # (B,)

    def expected_utility(vv, bb):  # vv (V, 1), bb (V, B) -> (V, B)
        k = torch.searchsorted(max_opp, bb.contiguous())  # number of opposing maxima strictly below bb
        win = k / n_opponent
        pay = bb * win if mechanism == "first_price" else cum[k] / n_opponent
        return vv * win - pay

    u_grid = expected_utility(v.unsqueeze(1), grid.expand(n_values, -1)).amax(1)
    u_own = expected_utility(v.unsqueeze(1), model(v.unsqueeze(1)))[:, 0]
    return float((u_grid - u_own).clamp_min(0).mean())


def smoothing_bias(temperature: float, mechanism: str = "first_price", n_bidders: int = 2, n_samples: int = 65536,
                   generator: torch.Generator | None = None) -> float:
    """``|ū^λ − ū|``: bidder 0's ex-ante utility error in the smoothed game at the analytical BNE."""
    values = sample_values(n_samples, n_bidders, 1, generator).double()
    bids = bne_bid(values, mechanism, n_bidders)
    u_smooth = utilities(values, bids, mechanism, temperature)[:, 0].mean()
    u_exact = utilities(values, bids, mechanism)[:, 0].mean()
    return float((u_smooth - u_exact).abs())


def smoothing_bias_mc(temperature: float, n_samples: int = 65536, generator: torch.Generator | None = None
                      ) -> tuple[float, float]:
    """Signed Monte-Carlo estimate of ``ū^λ − ū`` (two-bidder FPSB, both at the BNE) and its standard error.

    The exact and the smoothed utilities are evaluated on the same value profiles, so only the profiles
    with ``|b_0 − b_1| ≲ λ`` contribute; the standard error is that of the per-profile differences.
    """
    values = sample_values(n_samples, 2, 1, generator).double()
    bids = bne_bid(values, "first_price", 2)
    diff = utilities(values, bids, "first_price", temperature)[:, 0] - utilities(values, bids, "first_price")[:, 0]
    return float(diff.mean()), float(diff.std() / math.sqrt(n_samples))


BIAS_LEADING_COEFFICIENT = math.pi**2 / 3
"""``ū^λ − ū = −(π²/3) λ² + O(λ³)`` at the BNE of the two-bidder FPSB (see :func:`smoothing_bias_exact`)."""


def smoothing_bias_exact(temperature: float) -> float:
    """``ū^λ − ū`` (signed) at the BNE ``b = v/2`` of the two-bidder FPSB with U[0,1] values, by quadrature.

    With ``w = v_0 − v_1`` the bid gap is ``w/2``; integrating bidder 0's utility difference
    ``(σ(w/2λ) − 1{w>0}) (v_0 − max(b_0, b_1))`` over ``v_0`` in closed form leaves the 1-D integral

        ū^λ − ū = ∫_0^1 (σ(w/2λ) − 1) (1 − w²)/4 dw + ∫_{−1}^0 σ(w/2λ) (1 + w)(1 + 3w)/4 dw.

    Both weights equal 1/4 at ``w = 0`` and ``σ − 1{w>0}`` is odd, so the O(λ) term cancels; the kink of the
    weight at the tie (slopes 0 and 1) leaves ``−(π²/3) λ²`` (``∫_0^∞ t σ(−t) dt = π²/12``). The paper's
    bound (3) is linear in λ because it holds for any opponent strategy; at the BNE the bias is quadratic.
    """
    from scipy.integrate import quad
    from scipy.special import expit

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    lam = float(temperature)
    knot = min(1.0, 50 * lam)  # the integrands live within a few λ of the tie
    above = quad(lambda w: (expit(w / (2 * lam)) - 1) * (1 - w * w) / 4, 0, 1, limit=500, points=[knot])[0]
    below = quad(lambda w: expit(w / (2 * lam)) * (1 + w) * (1 + 3 * w) / 4, -1, 0, limit=500, points=[-knot])[0]
    return above + below


def bias_bound(temperature: float, s: float = 0.5) -> float:
    """The paper's linear bias bound (3): ``(ln 2 + 1)/s · λ``."""
    return (math.log(2) + 1) / s * temperature


def gradient_variance(model, method: str, n_estimates: int, *, mechanism: str, n_bidders: int, batch: int,
                      temperature: float = 0.01, sigma: float = 0.05, population: int = 16,
                      generator: torch.Generator | None = None) -> float:
    """Total variance ``Σ_d Var[ĝ_d]`` of a method's gradient estimate over independent mini-batches at fixed θ."""
    if n_estimates < 2:
        raise ValueError("need at least two estimates")
    model = copy.deepcopy(model)
    n_items = model.net[0].in_features
    grads = []
    for _ in range(n_estimates):
        values = sample_values(batch, n_bidders, n_items, generator)
        if method == "sm":
            model.zero_grad()
            sm_loss(model, values, mechanism, temperature).backward()
            grads.append(-torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        elif method == "npga":
            grads.append(npga_gradient(model, values, mechanism, sigma, population, generator))
        else:
            raise ValueError(f"method must be 'sm' or 'npga', got {method!r}")
    g = torch.stack(grads)
    return float(g.var(0).sum())


def seeded_generator(seed: int) -> torch.Generator:
    """A torch generator seeded from an int (NumPy-drawn seeds are fine)."""
    return torch.Generator().manual_seed(int(seed) % (2**63))

