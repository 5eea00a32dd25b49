"""Preference optimisation: DPO, SimPO, SPPO, INPO and MNPO losses, and their tabular updates.

Every loss takes **sequence log-probabilities** (a tensor per pair or per sample, any batch shape),
so the same function trains a softmax table over ``K`` responses (:func:`fit_table`) or a language
model (sum of token log-probs of a response). A pair is ``(y_w, y_l)``: the preferred and the
dispreferred response to the same prompt; ``pi_*`` are the trained policy's log-probs, ``ref_*`` the
reference policy's, ``old_*`` the current iterate's (the policy that sampled the pairs), ``hist_*``
past iterates'. Each loss returns the per-example loss (same shape as its inputs); average it.

**DPO** (Rafailov et al. 2023, eq. 7), with reward margin ``β (Δ_π − Δ_ref)``, ``Δ_π = log π(y_w) − log π(y_l)``:

    L_DPO = −log σ(β [(log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))])          (1)

Iterative DPO uses the previous iterate as ``π_ref``.

**SimPO** (Meng et al. 2024, eq. 6): length-normalised log-probs, no reference, target margin ``γ``:

    L_SimPO = −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ)                               (2)

(the official code writes ``γ = β · gamma_beta_ratio``).

**SPPO** (Wu et al. 2024, eq. 4.x, "SPPO loss"): square loss of each sampled response's log-ratio
to the current iterate against its estimated win rate ``P̂(y ≻ π_t)``:

    L_SPPO = (log π(y) − log π_t(y) − η (P̂(y ≻ π_t) − 1/2))²                                    (3)

(the −1/2 replaces the log-partition function ``log Z_t / η`` by a constant, as in the paper). Its
exact update is ``π_{t+1}(y) ∝ π_t(y) exp(η P(y ≻ π_t))``: multiplicative weights on the preference
game, with no pull towards ``π_ref``.

**INPO** (Zhang et al. 2024, online mirror descent with a KL regulariser to ``π_ref``): with
``ρ = ητ`` (the official code's ``ratio``),

    h_t(π; y_w, y_l) = Δ_π − ρ Δ_ref − (1 − ρ) Δ_{π_t},      L_INPO = (h_t − η/2)²              (4)

on pairs drawn from ``π_t``. The official code writes the shift as ``1/(2·eta)``: its ``eta`` is our
``1/η``. Since ``h`` is antisymmetric in the pair, (4) with a Bernoulli label ``z = 1[y ≻ y']`` is
``(h(y, y') − η(z − 1/2))²``, and for ``y, y' ~ π_t`` i.i.d. its population minimiser over all
policies is (on the support of ``π_t``)

    log π_{t+1}(y) = ρ log π_ref(y) + (1 − ρ) log π_t(y) + η P(y ≻ π_t) + c                    (5)

the INPO/OMD step. Its fixed point is the Nash equilibrium of the KL-regularised preference game
with ``τ = ρ/η``: ``π* ∝ π_ref exp((η/ρ) P(y ≻ π*))``.

**MNPO** (Wu et al. 2025; official ``MNPOTrainer.mnpo_loss``): the opponent is a population of past
iterates ``π_{t−j}`` with normalised weights ``λ_j`` (``j = 0`` is ``π_t``):

    h_t(π; y_w, y_l) = Δ_π − ρ Δ_ref − (1 − ρ) Σ_j λ_j Δ_{π_{t−j}},   L_MNPO = (h_t − η/2)²        (6)

Its population minimiser (pairs from a sampling distribution ``μ``, i.i.d.) is the multiplayer
mirror step

    log π_{t+1}(y) = ρ log π_ref(y) + (1 − ρ) Σ_j λ_j log π_{t−j}(y) + η P(y ≻ μ) + c            (7)

The official pipeline samples the pairs on-policy (``μ = π_t``); ``μ = Σ_j λ_j π_{t−j}`` (pairs drawn
from the population) makes the preference term the win rate against the whole population. With one
history policy (``λ = (1)``) MNPO is INPO. (The official trainer as shipped reads a ``history_weights``
field that its config does not define, so it ignores the config's ``weights=[1, 0]`` and weights its
``max_history_t = 2`` most recent iterates, ``π_t`` and ``π_{t−1}``, uniformly.)

Tabular helpers: a game is a preference tensor ``P[..., i, j] = P(y_i ≻ y_j)`` (``P + Pᵀ = 1``);
:func:`duality_gap` uses ``common.game_metrics`` on the symmetric zero-sum game it defines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.game_metrics import nash_exploitability

__all__ = [
    "dpo_loss",
    "simpo_loss",
    "sppo_loss",
    "inpo_loss",
    "mnpo_loss",
    "history_weights",
    "win_rate",
    "duality_gap",
    "regularized_duality_gap",
    "exact_sppo_update",
    "exact_mnpo_update",
    "exact_inpo_update",
    "fit_table",
]


def _check_positive(name: str, value) -> None:
    """``value`` (a number, or an array/tensor of them, e.g. a batch of step sizes) is positive and finite."""
    v = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


def _check_ratio(rho: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho (= eta * tau, the weight of the reference) must be in [0, 1], got {rho!r}")


# ----------------------------------------------------------------------------------------- losses
def dpo_loss(pi_w, pi_l, ref_w, ref_l, *, beta: float) -> torch.Tensor:
    """DPO loss (1) per pair."""
    _check_positive("beta", beta)
    return -F.logsigmoid(beta * ((pi_w - pi_l) - (ref_w - ref_l)))


def simpo_loss(pi_w, pi_l, *, beta: float, gamma: float, len_w=1.0, len_l=1.0) -> torch.Tensor:
    """SimPO loss (2) per pair; ``len_*`` are response lengths (1 for a table of responses)."""
    _check_positive("beta", beta)
    if np.any(np.asarray(gamma, dtype=np.float64) < 0):
        raise ValueError(f"gamma (the target margin) must be non-negative, got {gamma!r}")
    return -F.logsigmoid(beta * (pi_w / len_w - pi_l / len_l) - gamma)


def sppo_loss(pi_y, old_y, win_rate_estimate, *, eta: float) -> torch.Tensor:
    """SPPO loss (3) per sampled response ``y`` with its estimated win rate ``P̂(y ≻ π_t)`` in [0, 1]."""
    _check_positive("eta", eta)
    return (pi_y - old_y - eta * (win_rate_estimate - 0.5)) ** 2


def history_weights(n_available: int, weights: Sequence[float] | None = None) -> np.ndarray:
    """Normalised ``λ_j`` over the ``min(len(weights), n_available)`` most recent iterates.

    ``weights=None`` is uniform over all available iterates; as in the official code, the weights are
    truncated to the available history and renormalised (uniform if they sum to 0).
    """
    if n_available < 1:
        raise ValueError(f"MNPO needs at least one history policy, got {n_available}")
    w = np.ones(n_available) if weights is None else np.asarray(weights, dtype=float)[:n_available]
    if w.ndim != 1 or w.size == 0 or np.any(w < 0):
        raise ValueError(f"history weights must be a non-empty list of non-negative numbers, got {weights!r}")
    total = w.sum()
    return w / total if total > 0 else np.full(w.size, 1.0 / w.size)


def mnpo_loss(pi_w, pi_l, ref_w, ref_l, hist_w: Sequence, hist_l: Sequence, *, eta: float, rho: float,
              weights: Sequence[float] | None = None) -> torch.Tensor:
    """MNPO loss (6) per pair; ``hist_w[j], hist_l[j]`` are the log-probs under ``π_{t−j}`` (most recent first)."""
    _check_positive("eta", eta)
    _check_ratio(rho)
    if len(hist_w) != len(hist_l):
        raise ValueError(f"history log-probs must come in pairs, got {len(hist_w)} and {len(hist_l)}")
    lam = history_weights(len(hist_w), weights)
    mixed = sum(float(lam[j]) * (hist_w[j] - hist_l[j]) for j in range(lam.size))
    h = (pi_w - pi_l) - rho * (ref_w - ref_l) - (1.0 - rho) * mixed
    return (h - eta / 2.0) ** 2


def inpo_loss(pi_w, pi_l, ref_w, ref_l, old_w, old_l, *, eta: float, rho: float) -> torch.Tensor:
    """INPO loss (4) per pair: MNPO (6) with the current iterate as the only opponent."""
    return mnpo_loss(pi_w, pi_l, ref_w, ref_l, [old_w], [old_l], eta=eta, rho=rho)


# ------------------------------------------------------------------------------- tabular games
def win_rate(P, policy, opponent) -> np.ndarray:
    """``P(π ≻ π') = Σ_ij π_i P_ij π'_j`` over the last axis (batched over leading axes)."""
    P, policy, opponent = (np.asarray(a, dtype=float) for a in (P, policy, opponent))
    return np.einsum("...i,...ij,...j->...", policy, P, opponent)


def duality_gap(P, policy) -> np.ndarray:
    """Duality gap ``max_π' P(π' ≻ π) − min_π' P(π ≻ π')`` of ``policy`` in the preference game ``P``.

    The symmetric zero-sum game: row payoff ``A = P``, column payoff ``B = 1 − P`` (``B_ij = P(j ≻ i)``);
    the gap is the NashConv (sum of both players' regrets, ``common.game_metrics``) of the profile
    ``(π, π)``, which equals ``2 (max_y P(y ≻ π) − 1/2)``. It is 0 exactly at a Nash equilibrium.
    """
    P = np.asarray(P, dtype=float)
    if P.shape[-1] != P.shape[-2] or not np.allclose(P + np.swapaxes(P, -1, -2), 1.0, atol=1e-9):
        raise ValueError("P must be a (..., K, K) preference tensor with P + Pᵀ = 1")
    policy = np.asarray(policy, dtype=float)
    return nash_exploitability(P, 1.0 - P, policy, policy, reduction="sum").numpy()


def regularized_duality_gap(P, policy, log_ref, *, tau: float) -> np.ndarray:
    """Duality gap of ``policy`` in the KL-regularised game ``f(π, π') = P(π ≻ π') − τ KL(π‖π_ref) + τ KL(π'‖π_ref)``.

    ``max_π' f(π', π) − min_π' f(π, π') = 2 M + 2 τ KL(π‖π_ref) − 1`` with the soft best response value
    ``M = max_π' [P(π' ≻ π) − τ KL(π'‖π_ref)] = τ log Σ_y π_ref(y) exp(P(y ≻ π)/τ)``; 0 exactly at the
    regularised equilibrium ``π* ∝ π_ref exp(P(y ≻ π*)/τ)``, the fixed point of INPO and MNPO.
    """
    _check_positive("tau", tau)
    P = np.asarray(P, dtype=float)
    policy, log_ref = np.asarray(policy, dtype=float), np.asarray(log_ref, dtype=float)
    pref = np.einsum("...ij,...j->...i", P, policy)
    soft_best = tau * np.logaddexp.reduce(log_ref + pref / tau, axis=-1)
    log_pi = np.log(np.where(policy > 0, policy, 1.0))
    kl = (policy * (log_pi - log_ref)).sum(-1)
    return 2.0 * soft_best + 2.0 * tau * kl - 1.0


def _log_normalise(logits: np.ndarray) -> np.ndarray:
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def exact_sppo_update(P, log_pi_t, *, eta: float) -> np.ndarray:
    """Exact SPPO step: ``log π_{t+1} = log π_t + η P(y ≻ π_t) + c`` (normalised log-probs)."""
    _check_positive("eta", eta)
    P = np.asarray(P, dtype=float)
    pref = np.einsum("...ij,...j->...i", P, np.exp(log_pi_t))
    return _log_normalise(log_pi_t + eta * pref)


def exact_mnpo_update(P, log_ref, log_history: Sequence[np.ndarray], *, eta: float, rho: float,
                      weights: Sequence[float] | None = None, sampler: str = "current") -> np.ndarray:
    """Exact MNPO step (7): the population minimiser of (6) over all policies.

    ``log_history[j]`` is ``log π_{t−j}`` (most recent first). ``sampler="current"`` draws the pairs from
    ``π_t`` (official pipeline), ``"population"`` from ``Σ_j λ_j π_{t−j}``.
    """
    _check_positive("eta", eta)
    _check_ratio(rho)
    lam = history_weights(len(log_history), weights)
    mixed = sum(float(lam[j]) * log_history[j] for j in range(lam.size))
    if sampler == "current":
        mu = np.exp(log_history[0])
    elif sampler == "population":
        mu = sum(float(lam[j]) * np.exp(log_history[j]) for j in range(lam.size))
    else:
        raise ValueError(f"sampler must be 'current' or 'population', got {sampler!r}")
    pref = np.einsum("...ij,...j->...i", np.asarray(P, dtype=float), mu)
    return _log_normalise(rho * log_ref + (1.0 - rho) * mixed + eta * pref)


def exact_inpo_update(P, log_ref, log_pi_t, *, eta: float, rho: float) -> np.ndarray:
    """Exact INPO step (5)."""
    return exact_mnpo_update(P, log_ref, [log_pi_t], eta=eta, rho=rho)


# ----------------------------------------------------------------------------- table training
def fit_table(loss_fn: Callable[[torch.Tensor], torch.Tensor], logits_init, *, steps: int = 200,
              lr: float = 0.05) -> np.ndarray:
    """Minimise ``loss_fn(log_softmax(θ))`` over a logits table ``θ`` (..., K) with Adam from ``logits_init``.

    ``loss_fn`` maps the table's log-probs to a scalar (sum over independent prompts/games of the
    mean loss per prompt, so each prompt's gradient does not depend on the others). Returns the
    normalised log-probs of the fitted table.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps!r}")
    _check_positive("lr", lr)
    theta = torch.tensor(np.asarray(logits_init, dtype=np.float64), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(torch.log_softmax(theta, dim=-1))
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.log_softmax(theta, dim=-1).numpy()
