"""Equivariant equilibrium approximators (Duan, Ma & Deng, ICML 2023), turned into numerical tests.

An **equilibrium approximator** is a network ``f`` mapping a two-player game
``G = (A, B) ∈ R^{2×n×n}`` to a strategy profile: a product ``(x, y) ∈ Δ_n × Δ_n`` for Nash
equilibrium (NE) or a joint distribution ``π ∈ Δ_{n×n}`` for (coarse) correlated equilibrium.
It is trained without solver labels by minimising the exploitability directly,

    min_f  E_{G ~ D} expl(f(G), G)                                                        (1)

(exploitability from :mod:`common.game_metrics`). Relabelling actions acts on games by
``σ = (σ_1, σ_2)``: ``(σG)_ij = G_{σ_1(i) σ_2(j)}``. The paper's architectures:

* **OPE** (one-player equivariant, for NE): ``x(σG) = σ_1 x(G)`` and ``x`` is invariant to
  ``σ_2`` (and symmetrically for ``y``). Built here from exchangeable layers (row/column pooling,
  :mod:`common.equivariant`), ``x`` read out by pooling over columns, ``y`` over rows.
* **PPE** (permutation equivariant, for CE/CCE): ``π(σG) = σπ(G)``; here a softmax over all
  ``n²`` entries of an exchangeable net's output.
* **MLP**: the baseline general approximator on the flattened ``2n²`` payoffs.

Theoretical results turned into checks (Sec. 4–5 of the paper):

* **Orbit averaging** (approximation benefit). The orbit average
  ``f̄(G) = 1/|S| Σ_σ σ⁻¹ f(σG)`` is equivariant. For CCE, exploitability is convex in ``π``,
  so by Jensen ``expl(f̄(G), G) ≤ 1/|S| Σ_σ expl(f(σG), σG)``; averaging over a test set closed
  under ``S`` (or in expectation over a permutation-invariant ``D``) gives
  ``E expl(f̄) ≤ E expl(f)``.                                                               (2)
  The same holds for CE, whose exploitability (a sum of maxima of linear functions) is convex in ``π``.
* **Generalisation** (benefit). Equivariant classes have smaller covering numbers, hence
  smaller generalisation gaps ``E_test expl − E_train expl`` at a given training-set size.
* **Equilibrium selection** (limitation). On the identity coordination game ``I_n`` (``A = B = I``),
  which is invariant under ``σ_1 = σ_2``, an OPE approximator must output the uniform
  profile, whose welfare ``2/n`` is a fraction ``1/n`` of the optimum 2 (pure NE).          (3)
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from common.equivariant import ExchangeableNet, col_readout, permute_game, row_readout
from common.game_metrics import cce_exploitability, ce_exploitability, nash_exploitability, social_welfare

__all__ = [
    "sample_games",
    "identity_game",
    "MLPNash",
    "OPENash",
    "MLPCCE",
    "PPECCE",
    "exploitability",
    "train_approximator",
    "fit_nash",
    "all_permutation_pairs",
    "orbit_outputs",
    "orbit_average_cce",
    "orbit_closed_exploitability",
    "orbit_average_nash",
    "orbit_closed_nash_exploitability",
    "equivariance_error",
    "welfare_ratio_identity",
]

DISTRIBUTIONS = ("uniform", "row_shift", "zero_sum")


def sample_games(n_games: int, n: int, distribution: str = "uniform", random_state=None) -> torch.Tensor:
    """Random bimatrix games ``(n_games, 2, n, n)`` (float32).

    ``"uniform"``: payoffs i.i.d. U[0, 1] (permutation-invariant distribution). ``"row_shift"``:
    the same plus a mean shift ``i/(n−1)`` on the row player's payoff of row ``i`` (not invariant).
    ``"zero_sum"``: ``A`` i.i.d. U[0, 1] and ``B = −A`` (permutation-invariant, two-player zero-sum).
    """
    if n_games < 1 or n < 2:
        raise ValueError(f"need n_games >= 1 and n >= 2, got {n_games}, {n}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    rng = np.random.default_rng(random_state)
    G = rng.random((n_games, 2, n, n))
    if distribution == "row_shift":
        G[:, 0] += (np.arange(n) / (n - 1))[:, None]
    if distribution == "zero_sum":
        G[:, 1] = -G[:, 0]
    return torch.as_tensor(G, dtype=torch.float32)


def identity_game(n: int) -> torch.Tensor:
    """The identity coordination game ``A = B = I_n`` as a ``(1, 2, n, n)`` tensor."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    eye = torch.eye(n)
    return torch.stack([eye, eye]).unsqueeze(0)


class MLPNash(nn.Module):
    """General NE approximator: flattened payoffs → two softmaxes ``(x, y)``."""

    def __init__(self, n: int, hidden: int = 64):
        super().__init__()
        self.n = n
        self.net = nn.Sequential(nn.Linear(2 * n * n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * n))

    def forward(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.net(G.flatten(1))
        return torch.softmax(z[:, : self.n], -1), torch.softmax(z[:, self.n :], -1)


class OPENash(nn.Module):
    """OPE NE approximator: exchangeable layers; ``x`` pools channel 0 over columns, ``y`` channel 1 over rows."""

    def __init__(self, hidden: int = 32, depth: int = 3):
        super().__init__()
        self.net = ExchangeableNet(2, hidden, 2, depth=depth)

    def forward(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.net(G)
        return torch.softmax(row_readout(z[:, 0]), -1), torch.softmax(col_readout(z[:, 1]), -1)


class MLPCCE(nn.Module):
    """General CCE approximator: flattened payoffs → softmax over the ``n²`` joint actions."""

    def __init__(self, n: int, hidden: int = 64):
        super().__init__()
        self.n = n
        self.net = nn.Sequential(nn.Linear(2 * n * n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n * n))

    def forward(self, G: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(G.flatten(1)), -1).view(-1, self.n, self.n)


class PPECCE(nn.Module):
    """PPE CCE approximator: exchangeable layers, softmax over all entries of one output channel."""

    def __init__(self, hidden: int = 32, depth: int = 3):
        super().__init__()
        self.net = ExchangeableNet(2, hidden, 1, depth=depth)

    def forward(self, G: torch.Tensor) -> torch.Tensor:
        z = self.net(G)[:, 0]
        return torch.softmax(z.flatten(1), -1).view_as(z)


def exploitability(model: nn.Module, G: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-game exploitability ``(N,)`` of the model's output: ``kind`` is ``"nash"``, ``"cce"`` or ``"ce"``.

    ``"ce"`` and ``"cce"`` read the model's output as a joint distribution (an :class:`MLPCCE` or
    :class:`PPECCE` network serves both; only the training loss differs).
    """
    A, B = G[:, 0], G[:, 1]
    if kind == "nash":
        x, y = model(G)
        return nash_exploitability(A, B, x, y)
    if kind == "cce":
        return cce_exploitability(A, B, model(G))
    if kind == "ce":
        return ce_exploitability(A, B, model(G))
    raise ValueError(f"kind must be 'nash', 'cce' or 'ce', got {kind!r}")


def train_approximator(model: nn.Module, G: torch.Tensor, kind: str, steps: int, lr: float = 2e-3) -> list[float]:
    """Minimise the training objective (1), full batch, with Adam; returns the loss curve."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = exploitability(model, G, kind).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def fit_nash(architecture: str, n: int, train: torch.Tensor, test: torch.Tensor, *, model_seed: int, steps: int,
             lr: float = 2e-3, mlp_hidden: int = 64, equi_hidden: int = 32) -> tuple[nn.Module, float, float]:
    """Train an NE approximator (``"mlp"`` or ``"equi"`` = OPE) on ``train``; returns (model, train, test expl).

    The torch seed is set to ``model_seed`` before the network is built, so both architectures trained with
    the same seed and training set form a paired comparison.
    """
    if architecture not in ("mlp", "equi"):
        raise ValueError(f"architecture must be 'mlp' or 'equi', got {architecture!r}")
    torch.manual_seed(model_seed)
    model = MLPNash(n, mlp_hidden) if architecture == "mlp" else OPENash(equi_hidden)
    train_approximator(model, train, "nash", steps=steps, lr=lr)
    with torch.no_grad():
        tr = float(exploitability(model, train, "nash").mean())
        te = float(exploitability(model, test, "nash").mean())
    return model, tr, te


def all_permutation_pairs(n: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """All ``(n!)²`` pairs ``(σ_1, σ_2)`` of row and column permutations."""
    perms = list(itertools.permutations(range(n)))
    return [(p, q) for p in perms for q in perms]


def _inverse(p) -> list[int]:
    inv = [0] * len(p)
    for i, pi in enumerate(p):
        inv[pi] = i
    return inv


@torch.no_grad()
def orbit_outputs(model: nn.Module, G: torch.Tensor) -> torch.Tensor:
    """``σ⁻¹ f(σG)`` for every pair ``σ``: ``(|S|, N, n, n)`` joint distributions of a CCE model."""
    outs = []
    for p, q in all_permutation_pairs(G.shape[-1]):
        pi = model(permute_game(G, p, q))
        outs.append(permute_game(pi, _inverse(p), _inverse(q)))
    return torch.stack(outs)


def orbit_average_cce(model: nn.Module, G: torch.Tensor) -> torch.Tensor:
    """The orbit-averaged (equivariant) approximator ``f̄(G) = 1/|S| Σ_σ σ⁻¹ f(σG)`` of (2)."""
    return orbit_outputs(model, G).mean(0)


@torch.no_grad()
def orbit_closed_exploitability(model: nn.Module, G: torch.Tensor, kind: str = "cce") -> float:
    """Mean CCE (or CE) exploitability of ``f`` over the orbit-closed test set ``{σG}`` (right side of (2))."""
    if kind not in ("cce", "ce"):
        raise ValueError(f"kind must be 'cce' or 'ce', got {kind!r}")
    vals = [exploitability(model, permute_game(G, p, q), kind).mean() for p, q in all_permutation_pairs(G.shape[-1])]
    return float(torch.stack(vals).mean())


@torch.no_grad()
def orbit_average_nash(model: nn.Module, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orbit average of an NE approximator: ``x̄ = 1/|S| Σ_σ σ_1⁻¹ x(σG)``, ``ȳ`` likewise (each player's marginal).

    ``x(σG)_i`` is the probability of the original action ``σ_1(i)``, so it is mapped back by ``σ_1⁻¹``.
    For two-player zero-sum games the sum of the two regrets, ``max_i (Ay)_i − min_j (Aᵀx)_j``, is convex in
    ``(x, y)``, so Jensen gives ``Σ-regret(x̄, ȳ) ≤ mean_σ Σ-regret(f(σG), σG)``; the max over players
    (the paper's exploitability) is not convex in general and carries no such guarantee.
    """
    xs, ys = [], []
    for p, q in all_permutation_pairs(G.shape[-1]):
        x, y = model(permute_game(G, p, q))
        xs.append(x[:, _inverse(p)])
        ys.append(y[:, _inverse(q)])
    return torch.stack(xs).mean(0), torch.stack(ys).mean(0)


@torch.no_grad()
def orbit_closed_nash_exploitability(model: nn.Module, G: torch.Tensor, reduction: str = "max") -> float:
    """Mean NE exploitability (max or sum of regrets) of ``f`` over the orbit-closed test set ``{σG}``."""
    vals = []
    for p, q in all_permutation_pairs(G.shape[-1]):
        Gp = permute_game(G, p, q)
        x, y = model(Gp)
        vals.append(nash_exploitability(Gp[:, 0], Gp[:, 1], x, y, reduction).mean())
    return float(torch.stack(vals).mean())


@torch.no_grad()
def equivariance_error(model: nn.Module, G: torch.Tensor, kind: str, random_state=None) -> float:
    """``max ‖f(σG) − σf(G)‖_∞`` over the batch for one random ``σ = (σ_1, σ_2)``."""
    rng = np.random.default_rng(random_state)
    n = G.shape[-1]
    p, q = rng.permutation(n), rng.permutation(n)
    Gp = permute_game(G, p, q)
    if kind == "nash":
        (x, y), (xp, yp) = model(G), model(Gp)
        return float(max((xp - x[:, p]).abs().max(), (yp - y[:, q]).abs().max()))
    if kind in ("cce", "ce"):
        return float((model(Gp) - permute_game(model(G), p, q)).abs().max())
    raise ValueError(f"kind must be 'nash', 'cce' or 'ce', got {kind!r}")


@torch.no_grad()
def welfare_ratio_identity(model: nn.Module, n: int) -> dict[str, float]:
    """Limitation (3): the NE model's profile on ``I_n``, its welfare and its ratio to the optimum 2."""
    G = identity_game(n).to(next(model.parameters()).dtype)
    x, y = model(G)
    welfare = float(social_welfare(G[:, 0], G[:, 1], x.unsqueeze(-1) * y.unsqueeze(-2))[0])
    uniform_dev = float(max((x - 1 / n).abs().max(), (y - 1 / n).abs().max()))
    return {"welfare": welfare, "ratio": welfare / 2.0, "max_dev_from_uniform": uniform_dev}
