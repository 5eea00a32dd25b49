"""Multiplayer Nash Preference Optimisation (Wu et al. 2025) on an exact tabular preference game.

**The game.** For each prompt ``x`` a policy is a distribution ``π(·|x)`` over ``K`` responses and a
preference oracle gives ``P_x[i, j] = P(y_i ≻ y_j | x)`` with ``P + Pᵀ = 1``. The preferences come from
an equal-weight mixture of ``A`` annotators, each a Bradley–Terry model with its own utilities ``u_a``:

    P_x[i, j] = (1/A) Σ_a σ(s (u_a[i] − u_a[j]))                                                    (G)

One annotator is transitive; a mixture of several with conflicting utilities is not (the Condorcet
paradox: majority preferences of three strong-opinion annotators cycle), so no reward model fits it and
the solution concept is the Nash equilibrium of the symmetric zero-sum game ``π ↦ P(π ≻ π')``
(NLHF, Munos et al. 2024). Its approximation quality is the **duality gap**
``DG(π) = max_π' P(π' ≻ π) − min_π' P(π ≻ π')`` (MNPO, Sec. 3; ``common.preference.duality_gap``),
averaged over prompts.

**The methods** (``common.preference``; every method runs ``T`` iterations from ``π_0 = π_ref``; at
iteration ``t`` it draws ``n_pairs`` response pairs per prompt, asks the oracle for a Bernoulli label per
pair and minimises its loss over the logits table with Adam from ``π_t``):

- iterative DPO (reference = previous iterate, ``β = 1/η``) and SimPO (``β = 1/η``, ``γ = β/2``):
  Bradley–Terry losses, which fit a reward to intransitive labels;
- SPPO: regression of ``log π/π_t`` on each response's single-label win-rate estimate;
- INPO: regression (4) towards the mirror step against the current iterate, ``ρ = ητ = 1/3``;
- MNPO: regression (6) towards the multiplayer mirror step against the last ``n_history`` iterates with
  uniform ``λ`` (official ``MNPOTrainer.mnpo_loss``, ``ratio = 1/3``), pairs drawn on-policy as in the
  official pipeline; ``mnpo_pop`` draws the pairs from the λ-mixture of past iterates instead.

All methods get the same iterations, pairs, labels budget and optimiser, and the same step-size grid
for their one strength parameter ``η``, tuned on held-out games (:func:`tune_step_sizes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from common.preference import (
    dpo_loss,
    duality_gap,
    exact_mnpo_update,
    exact_sppo_update,
    fit_table,
    history_weights,
    mnpo_loss,
    simpo_loss,
    sppo_loss,
    win_rate,
)

METHODS = ("dpo", "simpo", "sppo", "inpo", "mnpo", "mnpo_pop")
RHO = 1.0 / 3.0          # official MNPO `ratio` (= ητ), shared by INPO and MNPO
SIMPO_GAMMA_BETA = 0.5   # SimPO's gamma_beta_ratio


@dataclass(frozen=True)
class Games:
    """A batch of tabular preference games: ``P`` (S, X, K, K) and ``log_ref`` (S, X, K)."""

    P: np.ndarray
    log_ref: np.ndarray


def annotator_mixture_games(n_games: int, n_prompts: int, n_responses: int, *, n_annotators: int = 3,
                            sharpness: float = 8.0, ref_scale: float = 1.0, non_transitive: bool = True,
                            random_state=None) -> Games:
    """Draw ``n_games`` independent games (G), each with ``n_prompts`` prompts of ``n_responses`` responses.

    Equal-weight annotators (``w_a = 1/A``) with utilities ``u_a ~ N(0, I)`` and sharpness ``s``; with
    ``non_transitive=True`` a prompt is redrawn until its preferences have no Condorcet winner (no
    response beats all others), so every prompt's Nash equilibrium is mixed (rejection sampling: about
    one prompt in four qualifies at A = 3, s = 8, K = 8). The reference policy is
    ``softmax(ref_scale · N(0, I))`` per prompt.
    """
    for name, value in (("n_games", n_games), ("n_prompts", n_prompts), ("n_responses", n_responses),
                        ("n_annotators", n_annotators)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_responses < 3 and non_transitive:
        raise ValueError("a non-transitive preference game needs at least 3 responses")
    if n_responses < 2:
        raise ValueError("a preference game needs at least 2 responses")
    if sharpness <= 0:
        raise ValueError(f"sharpness must be positive, got {sharpness!r}")
    rng = np.random.default_rng(random_state)
    n_needed = n_games * n_prompts
    kept: list[np.ndarray] = []
    n_kept = 0
    for _ in range(1000):
        u = rng.standard_normal((max(4 * n_needed, 64), n_annotators, n_responses))
        diff = sharpness * (u[..., :, None] - u[..., None, :])
        P = (1.0 / (1.0 + np.exp(-diff))).mean(-3)
        P = 0.5 * (P + 1.0 - np.swapaxes(P, -1, -2))                  # exact P + Pᵀ = 1
        if non_transitive:
            P = P[~condorcet_winner_exists(P)]
        kept.append(P)
        n_kept += P.shape[0]
        if n_kept >= n_needed:
            break
    else:
        raise RuntimeError("could not draw enough non-transitive prompts; raise sharpness or n_annotators")
    P = np.concatenate(kept)[:n_needed].reshape(n_games, n_prompts, n_responses, n_responses)
    logits = ref_scale * rng.standard_normal((n_games, n_prompts, n_responses))
    log_ref = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return Games(P=P, log_ref=log_ref)


def condorcet_winner_exists(P) -> np.ndarray:
    """Whether some response beats every other one with probability > 1/2 (per game and prompt)."""
    P = np.asarray(P)
    K = P.shape[-1]
    beats = (P > 0.5) | np.eye(K, dtype=bool)
    return beats.all(axis=-1).any(axis=-1)


def _sample(log_pi: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling of indices from ``exp(log_pi)`` (..., K) with uniforms (..., N)."""
    cdf = np.cumsum(np.exp(log_pi), axis=-1)
    cdf[..., -1] = 1.0 + 1e-12
    idx = (uniforms[..., :, None] > cdf[..., None, :]).sum(-1)
    return np.minimum(idx, log_pi.shape[-1] - 1)


def draw_pairs(P: np.ndarray, log_mu: np.ndarray, n_pairs: int, rng: np.random.Generator):
    """``n_pairs`` pairs ``y, y' ~ μ`` i.i.d. per prompt, labelled by the oracle; returns (winner, loser) indices.

    ``log_mu`` may carry extra leading axes (a batch of policies for the same games, e.g. one per step
    size of a grid): the uniforms are drawn once per game and prompt and shared along those axes, so each
    policy of the batch gets exactly the draws it would get alone.
    """
    u = rng.random(P.shape[:-2] + (3, n_pairs))
    y, y2 = _sample(log_mu, u[..., 0, :]), _sample(log_mu, u[..., 1, :])
    P = np.broadcast_to(P, y.shape[:-1] + P.shape[-2:])
    p = np.take_along_axis(np.take_along_axis(P, y[..., :, None], axis=-2), y2[..., :, None], axis=-1)[..., 0]
    first_wins = u[..., 2, :] < p
    return np.where(first_wins, y, y2), np.where(first_wins, y2, y)


def _gather(logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(logp, -1, idx)


def method_step(method: str, P: np.ndarray, log_ref: np.ndarray, history: Sequence[np.ndarray], *, eta,
                n_pairs: int, rng: np.random.Generator, n_history: int = 3, steps: int = 200,
                lr: float = 0.05, autograd: bool = False) -> np.ndarray:
    """One iteration of ``method``: draw labelled pairs, fit the new table; returns ``log π_{t+1}``.

    ``history`` lists ``log π_t, log π_{t−1}, ...`` (most recent first). ``eta`` is a number, or a 1-D
    grid of E step sizes: then every table in ``history`` has a leading axis of length E (one policy per
    step size), all E problems are fitted at once, and each gets exactly what a run with its own ``eta``
    alone would get (the same pair draws; Adam's update is elementwise and the loss is a sum of
    independent per-prompt terms, so batching changes no number).

    The fit runs :func:`_fit_pairs`, which computes autograd's gradient with the same ATen kernels in the
    same order and Adam's update op for op, without the autograd graph and optimiser overhead: the
    same bits, a few times faster (a unit test checks it). ``autograd=True`` runs the reference instead:
    the loss of :mod:`common.preference` minimised by :func:`common.preference.fit_table`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    log_old = history[0]
    if np.ndim(eta) == 1:
        grid = np.asarray(eta, dtype=np.float64)
        if log_old.shape[:1] != grid.shape:
            raise ValueError(f"a grid of {grid.size} step sizes needs tables with a leading axis of that length, "
                             f"got shape {log_old.shape}")
        eta = torch.as_tensor(grid).reshape((-1,) + (1,) * (log_old.ndim - 1))  # broadcasts over (E, S, X, pairs)
        log_ref = np.ascontiguousarray(np.broadcast_to(log_ref, log_old.shape))
    elif np.ndim(eta) != 0:
        raise ValueError(f"eta must be a number or a 1-D grid, got shape {np.shape(eta)}")
    hist = list(history[:n_history])
    if method == "mnpo_pop":
        lam = history_weights(len(hist))
        log_mu = np.logaddexp.reduce(np.stack([np.log(lam[j]) + hist[j] for j in range(len(hist))]), axis=0)
    else:
        log_mu = log_old
    w, l = (torch.as_tensor(i) for i in draw_pairs(P, log_mu, n_pairs, rng))  # noqa: E741 (y_w, y_l: the paper's notation)
    old_t, ref_t = torch.as_tensor(log_old), torch.as_tensor(log_ref)
    # log-probs of the fixed policies on the drawn pairs, gathered once
    old_w, old_l, ref_w, ref_l = _gather(old_t, w), _gather(old_t, l), _gather(ref_t, w), _gather(ref_t, l)
    hist_w = [_gather(torch.as_tensor(h), w) for h in hist]
    hist_l = [_gather(torch.as_tensor(h), l) for h in hist]

    def loss(logp: torch.Tensor) -> torch.Tensor:
        pw, pl = _gather(logp, w), _gather(logp, l)
        if method == "dpo":
            per = dpo_loss(pw, pl, old_w, old_l, beta=1.0 / eta)
        elif method == "simpo":
            per = simpo_loss(pw, pl, beta=1.0 / eta, gamma=SIMPO_GAMMA_BETA / eta)
        elif method == "sppo":
            per = (sppo_loss(pw, old_w, 1.0, eta=eta) + sppo_loss(pl, old_l, 0.0, eta=eta)) / 2
        elif method == "inpo":
            per = mnpo_loss(pw, pl, ref_w, ref_l, [old_w], [old_l], eta=eta, rho=RHO)
        else:  # mnpo, mnpo_pop
            per = mnpo_loss(pw, pl, ref_w, ref_l, hist_w, hist_l, eta=eta, rho=RHO)
        return per.mean(-1).sum()

    if autograd:
        return fit_table(loss, log_old, steps=steps, lr=lr)
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps!r}")
    with torch.no_grad():
        loss(torch.log_softmax(torch.as_tensor(log_old), dim=-1))   # the losses' own argument checks, once
    consts = {"old_w": old_w, "old_l": old_l, "ref_w": ref_w, "ref_l": ref_l,
              "hist_w": [old_w] if method == "inpo" else hist_w, "hist_l": [old_l] if method == "inpo" else hist_l}
    return _fit_pairs(method, log_old, w, l, consts, eta=eta, steps=steps, lr=lr)


_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8   # torch.optim.Adam's defaults (as fit_table uses them)


def _numpy(value):
    """A float stays a float; a tensor (a grid of step sizes) becomes its NumPy view."""
    return value.numpy() if isinstance(value, torch.Tensor) else value


def _fit_pairs(method: str, log_old: np.ndarray, win: torch.Tensor, lose: torch.Tensor, consts: dict, *, eta,
               steps: int, lr: float) -> np.ndarray:
    """:func:`common.preference.fit_table` on ``method``'s pair loss, with the gradient written out.

    Bit-identical to the autograd reference (``method_step(..., autograd=True)``; ``tests/test_mnpo.py``
    checks every method, scalar and grid ``η``), because it performs the floating-point operations that
    autograd and ``torch.optim.Adam`` (single-tensor CPU path) perform, in the same order, and the
    transcendental ones with the same ATen kernels:

    * forward: ``log_softmax`` (ATen), the two gathers (a copy: NumPy ``take``), the loss's elementwise
      terms as written in :mod:`common.preference` (NumPy: ``+ − ×`` of float64 are correctly rounded in
      both libraries); the loss value itself is never needed, only what its backward reads;
    * backward of ``per.mean(-1).sum()``: ``g = 1/N`` per pair (``mean_backward``), then the formulas of
      ``derivatives.yaml``: ``neg``: ``−g``; ``mul``: ``g · other``; ``sub``: ``g``, ``−g``; ``div`` by
      1 (SimPO's lengths): ``g``; ``pow(·, 2)``: ``g · (2x)``, computed as ``(2g) · x`` (both doublings
      are exact, so the product is the same rounded real number); ``log_sigmoid``:
      ``aten.log_sigmoid_backward`` with the buffer of ``aten.log_sigmoid_forward``; ``gather``:
      ``zeros.scatter_add_`` (ATen), the two uses of ``log π`` summed (``a + (−b)`` is ``a − b``);
      ``log_softmax``: ``aten._log_softmax_backward_data``;
    * Adam: ``lerp_``, ``mul_``/``addcmul_``, bias corrections in Python floats, ``sqrt``, ``div``,
      ``add_``, ``addcdiv_``, as ``torch.optim.adam._single_tensor_adam`` (ATen: it may fuse
      multiply-adds).

    Constant sub-expressions (the fixed policies' log-ratios, ``1/η``) are computed once instead of at
    every step, with the same expressions, so they have the same values.
    """
    theta = torch.tensor(np.asarray(log_old, dtype=np.float64))
    exp_avg, exp_avg_sq = torch.zeros_like(theta), torch.zeros_like(theta)
    n_rows, K = theta.numel() // theta.shape[-1], theta.shape[-1]
    base = (np.arange(n_rows, dtype=np.int64) * K).reshape(win.shape[:-1] + (1,))
    flat_w, flat_l = (base + win.numpy()).ravel(), (base + lose.numpy()).ravel()
    shape = tuple(win.shape)
    g_mean = torch.ones(shape, dtype=theta.dtype) / shape[-1]            # mean_backward of the sum of means
    twice_g = (2.0 * g_mean).numpy()
    if method in ("dpo", "simpo"):
        neg_g_mean = g_mean.neg()
        beta = 1.0 / eta
        if method == "dpo":
            ref_diff = (consts["old_w"] - consts["old_l"]).numpy()
        else:
            gamma = _numpy(SIMPO_GAMMA_BETA / eta)
        beta_np = _numpy(beta)
    elif method == "sppo":
        g_sppo = (g_mean / 2 * 2.0).numpy()                                # (g/2)·(2u) = g·u exactly
        shift_w, shift_l = _numpy(eta * (1.0 - 0.5)), _numpy(eta * (0.0 - 0.5))
        old_w, old_l = consts["old_w"].numpy(), consts["old_l"].numpy()
    else:  # inpo, mnpo, mnpo_pop: mnpo_loss's constant terms
        hist_w, hist_l = consts["hist_w"], consts["hist_l"]
        lam = history_weights(len(hist_w))
        mixed = sum(float(lam[j]) * (hist_w[j] - hist_l[j]) for j in range(lam.size))
        ref_term = (RHO * (consts["ref_w"] - consts["ref_l"])).numpy()
        hist_term = ((1.0 - RHO) * mixed).numpy()
        half_eta = _numpy(eta / 2.0)
    log_sigmoid_fwd, log_sigmoid_bwd = torch.ops.aten.log_sigmoid_forward, torch.ops.aten.log_sigmoid_backward
    pw, pl, x = np.empty(shape), np.empty(shape), np.empty(shape)
    for step in range(1, steps + 1):
        logp = torch.log_softmax(theta, dim=-1)
        logp_flat = logp.numpy().reshape(-1)
        np.take(logp_flat, flat_w, out=pw.reshape(-1), mode="wrap")   # indices in range: a plain copy
        np.take(logp_flat, flat_l, out=pl.reshape(-1), mode="wrap")
        np.subtract(pw, pl, out=x)
        if method in ("dpo", "simpo"):
            if method == "dpo":
                np.subtract(x, ref_diff, out=x)                                   # (pw − pl) − (old_w − old_l)
                np.multiply(beta_np, x, out=x)
            else:
                np.multiply(beta_np, x, out=x)                                    # pw / 1.0 is pw exactly
                np.subtract(x, gamma, out=x)
            x_t = torch.from_numpy(x)
            g_x = log_sigmoid_bwd(neg_g_mean, x_t, log_sigmoid_fwd(x_t)[1])
            g_w = (g_x * beta).numpy()
            g_l = None                                                            # −g_w
        elif method == "sppo":
            g_w = np.multiply(g_sppo, np.subtract(np.subtract(pw, old_w), shift_w))
            g_l = np.multiply(g_sppo, np.subtract(np.subtract(pl, old_l), shift_l))
        else:
            np.subtract(x, ref_term, out=x)
            np.subtract(x, hist_term, out=x)
            np.subtract(x, half_eta, out=x)
            g_w = np.multiply(twice_g, x)
            g_l = None
        grad_w = torch.zeros_like(logp).scatter_add_(-1, win, torch.from_numpy(g_w))
        if g_l is None:   # the loser's gradient is −g_w: its scatter-sum is minus that of g_w, exactly
            g_logp = grad_w.sub_(torch.zeros_like(logp).scatter_add_(-1, lose, torch.from_numpy(g_w)))
        else:
            g_logp = grad_w.add_(torch.zeros_like(logp).scatter_add_(-1, lose, torch.from_numpy(g_l)))
        grad = torch._log_softmax_backward_data(g_logp, logp, -1, theta.dtype)
        exp_avg.lerp_(grad, 1 - _ADAM_BETA1)
        exp_avg_sq.mul_(_ADAM_BETA2).addcmul_(grad, grad, value=1 - _ADAM_BETA2)
        bias_correction1 = 1 - _ADAM_BETA1 ** float(step)
        bias_correction2 = 1 - _ADAM_BETA2 ** float(step)
        denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(_ADAM_EPS)
        theta.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
    return torch.log_softmax(theta, dim=-1).numpy()


def run_method(method: str, games: Games, *, T: int, eta, n_pairs: int, random_state, n_history: int = 3,
               steps: int = 200, lr: float = 0.05, autograd: bool = False) -> list[np.ndarray]:
    """``T`` iterations of ``method`` from ``π_ref`` on every game at once; returns ``[log π_0, ..., log π_T]``.

    The pair-sampling uniforms depend only on ``random_state`` and ``t``, so every method sees common
    random numbers (the same draws, through its own policy). With a 1-D grid ``eta`` of E step sizes,
    every table of the path has a leading axis of length E: E independent runs at once, identical to
    E separate calls (see :func:`method_step`; ``autograd=True`` fits with the autograd reference).
    """
    if T < 1:
        raise ValueError(f"T must be positive, got {T!r}")
    path = [np.broadcast_to(games.log_ref, np.shape(eta)[:1] + games.log_ref.shape).copy()]
    for t in range(T):
        rng = np.random.default_rng([int(random_state), t])
        history = path[::-1]
        path.append(method_step(method, games.P, games.log_ref, history, eta=eta, n_pairs=n_pairs, rng=rng,
                                n_history=n_history, steps=steps, lr=lr, autograd=autograd))
    return path


def run_exact(method: str, games: Games, *, T: int, eta: float, n_history: int = 3) -> list[np.ndarray]:
    """``T`` exact (population) steps of SPPO, INPO, MNPO or MNPO-pop: the limit of infinitely many pairs."""
    path = [games.log_ref.copy()]
    for _ in range(T):
        history = path[::-1][:n_history]
        if method == "sppo":
            new = exact_sppo_update(games.P, history[0], eta=eta)
        elif method == "inpo":
            new = exact_mnpo_update(games.P, games.log_ref, history[:1], eta=eta, rho=RHO)
        elif method == "mnpo":
            new = exact_mnpo_update(games.P, games.log_ref, history, eta=eta, rho=RHO)
        elif method == "mnpo_pop":
            new = exact_mnpo_update(games.P, games.log_ref, history, eta=eta, rho=RHO, sampler="population")
        else:
            raise ValueError(f"no exact update for {method!r}; expected sppo, inpo, mnpo or mnpo_pop")
        path.append(new)
    return path


def path_metrics(games: Games, path: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-game metrics of a trajectory (each averaged over prompts; arrays of length S).

    ``gap``: duality gap of ``π_T``; ``gap_path`` (T+1, S); ``min_win_past``: ``min_{t<T}`` of the
    prompt-averaged win rate ``P(π_T ≻ π_t)``; ``win_ref``: ``P(π_T ≻ π_ref)``; ``kl_ref``: ``KL(π_T ‖ π_ref)``.
    """
    pi = [np.exp(lp) for lp in path]
    gap_path = np.stack([duality_gap(games.P, p).mean(-1) for p in pi])
    wins_past = np.stack([win_rate(games.P, pi[-1], p).mean(-1) for p in pi[:-1]])
    kl = (pi[-1] * (path[-1] - games.log_ref)).sum(-1).mean(-1)
    return {"gap": gap_path[-1], "gap_path": gap_path, "min_win_past": wins_past.min(0),
            "win_ref": wins_past[0], "kl_ref": kl}


def tune_step_sizes(methods: Sequence[str], games: Games, grid: Sequence[float], *, T: int, n_pairs: int,
                    random_state, **kwargs) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Pick each method's ``η`` from the same ``grid`` by its mean final duality gap on ``games``.

    Returns the chosen ``η`` per method and the mean gap per grid value (the tuning curve). The grid's
    runs of one method are batched (one :func:`run_method` call with the whole grid; same numbers as one
    call per ``η``, a few times faster).
    """
    best, curves = {}, {}
    for m in methods:
        path = run_method(m, games, T=T, eta=np.asarray(grid, dtype=np.float64), n_pairs=n_pairs,
                          random_state=random_state, **kwargs)
        gaps = np.array([path_metrics(games, [table[e] for table in path])["gap"].mean() for e in range(len(grid))])
        curves[m] = gaps
        best[m] = float(grid[int(np.argmin(gaps))])
    return best, curves


def symmetric_nash(P) -> np.ndarray:
    """A Nash equilibrium of the symmetric zero-sum game ``P`` (K, K) by linear programming (HiGHS).

    Maximise ``v`` subject to ``Σ_i π_i P[i, j] ≥ v`` for every ``j``, ``π ∈ Δ_K``; the value is 1/2.
    """
    from scipy.optimize import linprog

    P = np.asarray(P, dtype=float)
    K = P.shape[-1]
    if P.shape != (K, K):
        raise ValueError(f"P must be a (K, K) matrix, got {P.shape}")
    c = np.zeros(K + 1)
    c[-1] = -1.0
    A_ub = np.hstack([-P.T, np.ones((K, 1))])
    A_eq = np.hstack([np.ones((1, K)), np.zeros((1, 1))])
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(K), A_eq=A_eq, b_eq=[1.0],
                  bounds=[(0, None)] * K + [(None, None)], method="highs")
    if not res.success:
        raise RuntimeError(f"linprog failed: {res.message}")
    pi = np.clip(res.x[:K], 0.0, None)
    return pi / pi.sum()
