"""SVARM, Stratified SVARM and the baselines of the paper, behind one interface.

Every estimator is a function ``estimate(game, budget, rng) -> φ̂`` (an array of length n).

**Budget rule** (the same for all, as in the official code's ``get_game_value``): each evaluation
of a non-empty coalition costs 1, the grand coalition included; ``v(∅) = 0`` is known and free.
Re-evaluating a coalition costs again, except in KernelSHAP, which (like the official code and
the ``shap`` package) deduplicates its sampled coalitions. :class:`BudgetMeter` counts and
enforces it: no estimator ever uses more than ``budget`` evaluations.

Because none of these algorithms chooses its next coalition from the values seen so far, each
one draws all its coalitions first, evaluates them in one batched call, and then performs its
updates with array operations. The running means of the sequential algorithms are sums
divided by counts, so the result is the same estimator.

**SVARM** (Algorithm 1). Write ``φ_i = φ_i^+ - φ_i^-`` with

    φ_i^+ = Σ_{S ∋ i} v(S) / (n·C(n-1, |S|-1)),     φ_i^- = Σ_{S ∌ i} v(S) / (n·C(n-1, |S|)).

Draw ``A^+`` with size ``s ~ P^+(s) = 1/(s·H_n)`` (s = 1..n) and uniform members, and ``A^-``
with size ``s ~ P^-(s) = 1/((n-s)·H_n)`` (s = 0..n-1): then ``v(A^+)`` is an unbiased sample of
``φ_i^+`` for every ``i ∈ A^+`` at once, and ``v(A^-)`` of ``φ_i^-`` for every ``i ∉ A^-``. The
estimate is the difference of the running means. A warm-up draws, for every player, one
coalition containing it and one not containing it (sizes uniform), so no mean is empty.

**Stratified SVARM** (Algorithm 2) stratifies by coalition size:
``φ_i^+ = (1/n) Σ_{ℓ=0}^{n-1} φ_{i,ℓ}^+`` with ``φ_{i,ℓ}^+`` the mean of ``v(S ∪ {i})`` over
``S ⊆ N∖{i}``, ``|S| = ℓ`` (and ``φ_{i,ℓ}^-`` the mean of ``v(S)``). The strata of sizes 0, 1,
n−1 and n are computed exactly with 2n+1 evaluations (``v(N)``, every ``v({i})`` and every
``v(N∖{i})``); a warm-up fills every other stratum once from a random partition of the players
per size; then sizes ``s ∈ {2..n−2}`` are drawn from the paper's distribution ``P̃`` (heavier on
small and large sizes, :func:`paper_size_distribution`) and each evaluated ``v(A)`` updates
stratum ``|A|-1`` of every ``i ∈ A`` and stratum ``|A|`` of every ``i ∉ A``.

**Sampling-scheme variant** (:func:`stratified_svarm_scheme`): the same stratified estimator with the
scheme's four choices as options: the size distribution (the paper's P̃ or KernelSHAP's 1/(s(n−s)),
shapiq's default), shapiq's border trick (enumerate every size whose expected draws cover it), the
warm-up, and a budget that counts distinct coalitions (a coalition drawn again is not re-evaluated but
counts again). :func:`stratified_svarm_shapiq_scheme` is the combination shapiq 1.4.1's ``SVARM`` uses.

Baselines: ApproShapley (Castro et al. 2009; permutation sampling, one evaluation per
marginal contribution), KernelSHAP (Lundberg and Lee 2017; with the exact efficiency
constraint and complete enumeration of the sizes the budget covers), Unbiased KernelSHAP
(Covert and Lee 2021) and stratified sampling (Maleki et al. 2013; per-player budget split
over strata ∝ (ℓ+1)^{2/3}).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate

import numpy as np
from scipy.special import comb

Estimator = Callable[..., np.ndarray]


class BudgetExceeded(RuntimeError):
    pass


class BudgetMeter:
    """Evaluates coalitions on a game and charges the budget (non-empty coalitions cost 1)."""

    def __init__(self, game, budget: int):
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise ValueError(f"budget must be a positive integer, got {budget!r}")
        self.game, self.budget, self.used = game, int(budget), 0

    @property
    def left(self) -> int:
        return self.budget - self.used

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        nonempty = coalitions.any(axis=1)
        cost = int(nonempty.sum())
        if cost > self.left:
            raise BudgetExceeded(f"{cost} evaluations requested, {self.left} left of {self.budget}")
        self.used += cost
        values = np.zeros(len(coalitions))
        if cost:
            values[nonempty] = self.game.value(coalitions[nonempty])
        return values


def random_coalitions(rng: np.random.Generator, n: int, sizes: np.ndarray, include=None, exclude=None) -> np.ndarray:
    """One uniformly random coalition per entry of ``sizes`` (rows of a bool matrix).

    ``include[k]`` (a player index or -1) is forced into row k, counted in its size;
    ``exclude[k]`` is kept out of row k.
    """
    sizes = np.asarray(sizes)
    keys = rng.random((len(sizes), n))
    rows = np.arange(len(sizes))
    if include is not None:
        keys[rows, include] = -1.0
    if exclude is not None:
        keys[rows, exclude] = 2.0
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    return ranks < sizes[:, None]


def harmonic(n: int) -> float:
    return float(np.sum(1.0 / np.arange(1, n + 1)))


# --------------------------------------------------------------------------------------------- SVARM

def svarm(game, budget: int, rng: np.random.Generator, warm_up: bool = True) -> np.ndarray:
    """SVARM (Algorithm 1) with the official warm-up; alternates A⁺ and A⁻ draws until the budget is spent."""
    n, meter = game.n, BudgetMeter(game, budget)
    plus_sum, plus_count = np.zeros(n), np.zeros(n)
    minus_sum, minus_count = np.zeros(n), np.zeros(n)
    players = np.arange(n)
    if warm_up:
        if budget < 2 * n:
            raise ValueError(f"SVARM's warm-up needs a budget of at least 2n = {2 * n}")
        plus = random_coalitions(rng, n, rng.integers(0, n, n) + 1, include=players)
        minus = random_coalitions(rng, n, rng.integers(0, n, n), exclude=players)
        plus_sum += meter(plus)
        minus_sum += meter(minus)
        plus_count += 1
        minus_count += 1
    h_n = harmonic(n)
    p_plus = 1.0 / (np.arange(1, n + 1) * h_n)
    p_minus = 1.0 / ((n - np.arange(0, n)) * h_n)
    # draw more alternating pairs than can be afforded, then keep the prefix the budget pays for
    pairs = meter.left
    sizes_plus = rng.choice(np.arange(1, n + 1), pairs, p=p_plus / p_plus.sum())
    sizes_minus = rng.choice(np.arange(0, n), pairs, p=p_minus / p_minus.sum())
    a_plus = random_coalitions(rng, n, sizes_plus)
    a_minus = random_coalitions(rng, n, sizes_minus)
    draws = np.empty((2 * pairs, n), dtype=bool)
    draws[0::2], draws[1::2] = a_plus, a_minus
    cost = np.cumsum(draws.any(axis=1))
    draws = draws[: int(np.searchsorted(cost, meter.left) + 1)]  # up to the evaluation that spends the budget
    values = meter(draws)
    is_plus = np.arange(len(draws)) % 2 == 0
    plus_sum += values[is_plus] @ draws[is_plus].astype(float)   # float: numpy's bool @ float is a slow loop
    plus_count += draws[is_plus].sum(axis=0)
    minus_sum += values[~is_plus] @ (~draws[~is_plus]).astype(float)
    minus_count += (~draws[~is_plus]).sum(axis=0)
    return _mean(plus_sum, plus_count) - _mean(minus_sum, minus_count)


def _mean(total, count):
    return np.divide(total, count, out=np.zeros_like(total, dtype=float), where=count > 0)


def paper_size_distribution(n: int) -> np.ndarray:
    """The paper's distribution P̃ over coalition sizes 0..n for Stratified SVARM (zero on 0, 1, n-1, n).

    n even: P̃(s) = (n log n − 1) / (2 s n log n (H_{n/2−1} − 1)) for s ∉ {n/2}, P̃(n/2) = 1/(n log n);
    n odd:  P̃(s) = 1 / (2 s (H_{(n−1)/2} − 1)) for 2 ≤ s ≤ (n−1)/2, mirrored for s > n/2.
    """
    if n < 4:
        raise ValueError("the paper's size distribution needs n >= 4")
    dist = np.zeros(n + 1)
    if n % 2 == 0:
        nlogn = n * math.log(n)
        frac = (nlogn - 1) / (2 * nlogn * (harmonic(n // 2 - 1) - 1))
        for s in range(2, n // 2):
            dist[s] = dist[n - s] = frac / s
        dist[n // 2] = 1 / nlogn
    else:
        frac = 1 / (2 * (harmonic((n - 1) // 2) - 1))
        for s in range(2, (n - 1) // 2 + 1):
            dist[s] = dist[n - s] = frac / s
    return dist


def stratified_svarm_minimum_budget(n: int) -> int:
    """Evaluations spent before sampling: 2n+1 exact ones and the two warm-ups."""
    return 2 * n + 1 + 2 * sum(math.ceil(n / s) for s in range(2, n - 1))


def _partition_blocks(rng: np.random.Generator, n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """The warm-up's blocks of size ``s``: a random permutation cut into ⌈n/s⌉ blocks, the last one
    padded with random other players; ``owners`` marks the players each block is credited to
    (every player exactly once; padding players are not credited)."""
    order = rng.permutation(n)
    blocks, owners = [], []
    for k in range(n // s):
        block = np.zeros(n, dtype=bool)
        block[order[k * s:(k + 1) * s]] = True
        blocks.append(block)
        owners.append(block.copy())
    if n % s:
        owner = np.zeros(n, dtype=bool)
        owner[order[n - n % s:]] = True
        others = np.flatnonzero(~owner)
        block = owner.copy()
        block[rng.choice(others, s - n % s, replace=False)] = True
        blocks.append(block)
        owners.append(owner)
    return np.array(blocks), np.array(owners)


def _exact_border_strata(meter: BudgetMeter, n: int):
    """The strata of sizes 0, 1, n−1 and n, exactly, with 2n+1 evaluations (``v(N)``, every ``v({i})`` and every
    ``v(N∖{i})``; ``v(∅) = 0``). Returns ``plus_sum, plus_count`` ([player, ℓ = |S|−1], S ∋ i) and
    ``minus_sum, minus_count`` ([player, ℓ = |S|], S ∌ i), the other strata empty."""
    plus_sum, plus_count = np.zeros((n, n)), np.zeros((n, n))    # [player, stratum ℓ = |S|-1, S ∋ i]
    minus_sum, minus_count = np.zeros((n, n)), np.zeros((n, n))  # [player, stratum ℓ = |S|,   S ∌ i]
    eye = np.eye(n, dtype=bool)
    grand = meter(np.ones((1, n), dtype=bool))[0]
    singles, leave_one_out = meter(eye), meter(~eye)
    minus_count[:, 0] = 1
    plus_sum[:, n - 1], plus_count[:, n - 1] = grand, 1
    plus_sum[:, 0], plus_count[:, 0] = singles, 1
    minus_sum[:, 1], minus_count[:, 1] = singles.sum() - singles, n - 1         # v({j}) for all j ≠ i
    minus_sum[:, n - 1], minus_count[:, n - 1] = leave_one_out, 1
    plus_sum[:, n - 2], plus_count[:, n - 2] = leave_one_out.sum() - leave_one_out, n - 1  # v(N∖{j}), j ≠ i
    return plus_sum, plus_count, minus_sum, minus_count


def stratified_svarm(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified SVARM (Algorithm 2): exact border strata, warm-up, then sampling from P̃."""
    n = game.n
    if n < 4:
        raise ValueError("Stratified SVARM needs n >= 4 players")
    minimum = stratified_svarm_minimum_budget(n)
    if budget < minimum:
        raise ValueError(f"Stratified SVARM with n={n} needs a budget of at least {minimum} "
                         "(2n+1 exact evaluations plus the warm-up)")
    meter = BudgetMeter(game, budget)
    plus_sum, plus_count, minus_sum, minus_count = _exact_border_strata(meter, n)

    # warm-up: for each size s = 2..n-2, a random partition into blocks of s (the last block padded)
    for positive in (True, False):
        parts = [_partition_blocks(rng, n, s) for s in range(2, n - 1)]
        blocks = np.concatenate([b for b, _ in parts])
        owners = np.concatenate([o for _, o in parts])
        sizes = blocks.sum(axis=1)
        if positive:
            values = meter(blocks)
            rows, cols = np.nonzero(owners)
            plus_sum[cols, sizes[rows] - 1], plus_count[cols, sizes[rows] - 1] = values[rows], 1
        else:
            values = meter(~blocks)
            rows, cols = np.nonzero(owners)
            minus_sum[cols, n - sizes[rows]], minus_count[cols, n - sizes[rows]] = values[rows], 1

    # sampling: sizes from P̃, every evaluation updates one stratum of every player
    m = meter.left
    sizes = rng.choice(n + 1, m, p=paper_size_distribution(n))
    coalitions = random_coalitions(rng, n, sizes)
    values = meter(coalitions)
    plus_onehot = np.zeros((m, n))
    plus_onehot[np.arange(m), sizes - 1] = 1.0
    minus_onehot = np.zeros((m, n))
    minus_onehot[np.arange(m), sizes] = 1.0
    inside = coalitions.astype(float)   # float: numpy's bool @ float matmul is a slow generic loop
    plus_sum += inside.T @ (values[:, None] * plus_onehot)
    plus_count += inside.T @ plus_onehot
    minus_sum += (1.0 - inside).T @ (values[:, None] * minus_onehot)
    minus_count += (1.0 - inside).T @ minus_onehot
    return _mean(plus_sum, plus_count).mean(axis=1) - _mean(minus_sum, minus_count).mean(axis=1)


def _update_plus_probabilities(probs: list, original: list, s: int, drawn: int, available: int) -> None:
    """The official ``__update_probs`` of Stratified SVARM⁺ with ``dynamic=True``, after a draw of size ``s``
    (``drawn`` of the ``available`` coalitions of that size now drawn), in place: an exhausted size gets
    probability 0 and the rest is renormalised; otherwise P(s) = P̃(s)(1 − drawn/available) and the other
    sizes share the remaining mass in proportion (if ``s`` is the only size left it keeps probability 1).
    Plain Python floats: called once per draw, where numpy's per-call overhead dominates."""
    probs_sum, old = sum(probs), probs[s]
    alone = probs_sum == old
    if drawn == available:
        probs[s] = 0.0
        if not alone:
            total = sum(probs)
            probs[:] = [p / total for p in probs]
        return
    new = original[s] * (1 - drawn / available)
    if alone:
        probs[s] = 1.0
        return
    probs[s] = new
    factor = (1 - new) / (sum(probs) - new)
    probs[:] = [p * factor for p in probs]
    probs[s] = new


def stratified_svarm_plus(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified SVARM⁺ (the official ``StratifiedSVARMnoReplacement``, ``dynamic=True, dist_type="paper"``):
    Stratified SVARM's exact strata of sizes 0, 1, n−1, n, no warm-up, then coalitions drawn **without
    replacement**: a size from P̃, updated after every draw (:func:`_update_plus_probabilities`: the
    probability of a size shrinks with the share of its coalitions already drawn, an exhausted size drops
    out), and a uniformly random coalition of that size not drawn before. φ̂_i⁺ and φ̂_i⁻ average the
    stratum means over the strata that have at least one sample (as the official ``get_estimates``).

    The size probabilities depend only on how many coalitions of each size were drawn, so the sequence of
    sizes is simulated first; then the coalitions of each size are a uniformly random set of that many
    distinct coalitions (the same law as drawing them one by one without replacement), evaluated in one
    batch as in the other estimators. Once every coalition is drawn (budget ≥ 2ⁿ − 1) the estimate is
    exact; the official code spends any budget left on re-evaluations that update nothing, here it is
    left unspent.
    """
    n = game.n
    if n < 4:
        raise ValueError("Stratified SVARM⁺ needs n >= 4 players")
    if budget < 2 * n + 1:
        raise ValueError(f"Stratified SVARM⁺ with n={n} needs a budget of at least {2 * n + 1} (the exact strata)")
    meter = BudgetMeter(game, budget)
    plus_sum, plus_count, minus_sum, minus_count = _exact_border_strata(meter, n)
    original = paper_size_distribution(n).tolist()
    probs = list(original)
    available = [int(comb(n, s, exact=True)) if 2 <= s <= n - 2 else 0 for s in range(n + 1)]
    drawn = [0] * (n + 1)
    for u in rng.random(meter.left).tolist():
        cumulative = list(accumulate(probs))
        if cumulative[-1] <= 0:
            break                        # every coalition of sizes 2..n-2 drawn: the estimate is exact
        s = bisect_right(cumulative, u * cumulative[-1])
        if s > n or probs[s] == 0:       # rounding at u ≈ 1
            s = max(j for j in range(n + 1) if probs[j] > 0)
        drawn[s] += 1
        _update_plus_probabilities(probs, original, s, drawn[s], available[s])
    blocks = [_distinct_coalitions(rng, n, s, int(k)) for s, k in enumerate(drawn) if k > 0]
    if blocks:
        draws = np.concatenate(blocks)
        count = len(draws)
        values = meter(draws)
        sizes = draws.sum(axis=1)
        plus, minus = np.zeros((count, n)), np.zeros((count, n))
        plus[np.arange(count), sizes - 1] = 1.0
        minus[np.arange(count), sizes] = 1.0
        inside = draws.astype(float)    # float: numpy's bool @ float matmul is a slow generic loop
        plus_sum += inside.T @ (values[:, None] * plus)
        plus_count += inside.T @ plus
        minus_sum += (1.0 - inside).T @ (values[:, None] * minus)
        minus_count += (1.0 - inside).T @ minus
    return _mean_over_filled(plus_sum, plus_count) - _mean_over_filled(minus_sum, minus_count)


def _distinct_coalitions(rng: np.random.Generator, n: int, s: int, k: int) -> np.ndarray:
    """``k`` distinct coalitions of size ``s``, a uniformly random set of them (rows of a bool matrix):
    by enumeration when they are at least half of all C(n, s), else by drawing and discarding repeats."""
    total = int(comb(n, s, exact=True))
    if k > total:
        raise ValueError(f"cannot draw {k} distinct coalitions of size {s} out of {total}")
    if 2 * k >= total:
        every = _all_of_size(n, s)
        return every[np.sort(rng.choice(total, k, replace=False))]
    rows = np.zeros((0, n), dtype=bool)
    while len(rows) < k:
        more = random_coalitions(rng, n, np.full(2 * (k - len(rows)), s))
        rows = np.concatenate([rows, more])
        _, first = np.unique(np.packbits(rows, axis=1), axis=0, return_index=True)
        rows = rows[np.sort(first)]
    return rows[:k]


def _mean_over_filled(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per player (row): the mean over its strata with at least one sample of the stratum means (0 if none)."""
    filled = (count > 0).sum(axis=1)
    return np.divide(_mean(total, count).sum(axis=1), filled, out=np.zeros(len(total)), where=filled > 0)


# ----------------------------------------------------------------------------------------- baselines

def approshapley(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """ApproShapley: marginal contributions along random permutations, one evaluation each
    (the prefix of length 0 is free); a last, partial permutation uses the remaining budget."""
    n, meter = game.n, BudgetMeter(game, budget)
    n_perm = math.ceil(budget / n)
    order = np.argsort(rng.random((n_perm, n)), axis=1)
    positions = np.argsort(order, axis=1)
    prefixes = positions[:, None, :] <= np.arange(n)[None, :, None]  # [perm, length-1, player]
    prefixes = prefixes.reshape(-1, n)[:budget]
    values = meter(prefixes)
    padded = np.zeros(n_perm * n)
    padded[: len(values)] = values
    padded = padded.reshape(n_perm, n)
    deltas = np.diff(padded, axis=1, prepend=0.0)
    valid = (np.arange(n_perm * n) < len(values)).reshape(n_perm, n)
    total, count = np.zeros(n), np.zeros(n)
    np.add.at(total, order[valid], deltas[valid])
    np.add.at(count, order[valid], 1)
    return _mean(total, count)


def _shapley_kernel_sizes(n: int) -> np.ndarray:
    """q(s) ∝ (n-1) / (s (n-s)) over sizes 0..n (zero at 0 and n), normalized."""
    q = np.zeros(n + 1)
    s = np.arange(1, n)
    q[1:n] = 1.0 / (s * (n - s))
    return q / q.sum()


def kernelshap(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """KernelSHAP: weighted least squares on sampled coalitions with Σφ = v(N) as a hard constraint.

    As in the official code (and ``shap``), sizes are enumerated completely, from the outside in
    (s and n−s together), while the budget allotted by the kernel covers them; the remaining
    budget draws distinct coalitions from the kernel over the other sizes, weighted by how often
    each was drawn.
    """
    n, meter = game.n, BudgetMeter(game, budget)
    grand = meter(np.ones((1, n), dtype=bool))[0]
    left = meter.left
    q = _shapley_kernel_sizes(n)
    weight = q.copy()
    complete, incomplete = [], list(range(1, n))
    for small in range(1, n // 2 + 1):
        large = n - small
        pair = [small] if small == large else [small, large]
        cost = int(sum(comb(n, s, exact=True) for s in pair))
        share = weight[small] / weight[incomplete].sum() * left * len(pair) if incomplete else 0
        if share >= cost and cost <= left:
            complete += pair
            for s in pair:
                incomplete.remove(s)
            left -= cost
        else:
            break
    rows, kernel = [], []
    for s in complete:
        block = _all_of_size(n, s)
        rows.append(block)
        kernel.append(np.full(len(block), q[s] / comb(n, s)))
    if incomplete and left > 0:
        p = q[incomplete] / q[incomplete].sum()
        available = int(sum(comb(n, s, exact=True) for s in incomplete))
        target = min(left, available)
        counts: dict[bytes, int] = {}
        keys: dict[bytes, np.ndarray] = {}
        drawn = 0
        while len(counts) < target:
            sizes = rng.choice(incomplete, size=max(2 * (target - len(counts)), 16), p=p)
            for row in random_coalitions(rng, n, sizes):
                key = np.packbits(row).tobytes()
                drawn += 1
                if key in counts:
                    counts[key] += 1
                else:
                    counts[key] = 1
                    keys[key] = row
                if len(counts) == target:
                    break
        rows.append(np.array(list(keys.values())))
        kernel.append(np.array(list(counts.values()), dtype=float) * q[incomplete].sum() / drawn)
    Z = np.concatenate(rows) if rows else np.zeros((0, n), dtype=bool)
    w = np.concatenate(kernel) if kernel else np.zeros(0)
    y = meter(Z)
    return constrained_weighted_least_squares(Z.astype(float), y, w, grand)


def constrained_weighted_least_squares(Z, y, w, total) -> np.ndarray:
    """argmin_φ Σ_k w_k (y_k − z_k·φ)² subject to Σφ = total (by eliminating the last coordinate)."""
    n = Z.shape[1]
    if len(y) == 0:
        return np.full(n, total / n)
    A = Z[:, :-1] - Z[:, -1:]
    b = y - Z[:, -1] * total
    sw = np.sqrt(w)
    head, *_ = np.linalg.lstsq(A * sw[:, None], b * sw, rcond=None)
    return np.append(head, total - head.sum())


def _all_of_size(n: int, s: int) -> np.ndarray:
    from itertools import combinations

    out = np.zeros((int(comb(n, s, exact=True)), n), dtype=bool)
    for k, members in enumerate(combinations(range(n), s)):
        out[k, list(members)] = True
    return out


def unbiased_kernelshap(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Unbiased KernelSHAP (Covert and Lee 2021): φ̂ = A⁻¹(b̂ − 1 (1ᵀA⁻¹b̂ − v(N)) / 1ᵀA⁻¹1),
    with b̂ the sample mean of z·v(z) over z drawn from the Shapley kernel and A = E[zzᵀ] exact."""
    n, meter = game.n, BudgetMeter(game, budget)
    grand = meter(np.ones((1, n), dtype=bool))[0]
    q = _shapley_kernel_sizes(n)
    sizes = rng.choice(n + 1, meter.left, p=q)
    Z = random_coalitions(rng, n, sizes)
    values = meter(Z)
    b = values @ Z.astype(float) / max(len(Z), 1)
    s = np.arange(2, n)
    coaccur = np.sum((s - 1) / (n - s)) / (n * (n - 1) * np.sum(1.0 / (np.arange(1, n) * (n - np.arange(1, n)))))
    A = np.eye(n) * 0.5 + (1 - np.eye(n)) * coaccur
    a_inv_one = np.linalg.solve(A, np.ones(n))
    a_inv_b = np.linalg.solve(A, b)
    return a_inv_b - a_inv_one * (a_inv_b.sum() - grand) / a_inv_one.sum()


def stratified_sampling(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified sampling (Maleki et al. 2013): each player's marginal contributions are
    stratified by coalition size ℓ = 0..n−1, with the player's share of budget/2 samples split
    ∝ (ℓ+1)^{2/3}; φ̂_i is the mean over its non-empty strata of the stratum means."""
    n, meter = game.n, BudgetMeter(game, budget)
    samples = budget // 2
    per_player = np.full(n, samples // n)
    per_player[: samples % n] += 1
    shares = np.power(np.arange(1, n + 1), 2 / 3)
    allocation = np.floor(per_player[:, None] * shares[None, :] / shares.sum()).astype(int)
    leftover = per_player - allocation.sum(axis=1)
    for i in range(n):
        allocation[i, : leftover[i]] += 1
    players, strata = np.nonzero(allocation)
    repeat = allocation[players, strata]
    players, strata = np.repeat(players, repeat), np.repeat(strata, repeat)
    without = random_coalitions(rng, n, strata, exclude=players)
    with_i = without.copy()
    with_i[np.arange(len(players)), players] = True
    values = meter(np.concatenate([with_i, without]))
    deltas = values[: len(players)] - values[len(players):]
    total, count = np.zeros((n, n)), np.zeros((n, n))
    np.add.at(total, (players, strata), deltas)
    np.add.at(count, (players, strata), 1)
    means = _mean(total, count)
    filled = (count > 0).sum(axis=1)
    return np.divide(means.sum(axis=1), filled, out=np.zeros(n), where=filled > 0)


def _paid_pairs(without: np.ndarray, budget: int) -> int:
    """How many leading (S ∪ {i}, S) pairs the budget pays for in full (each costs 2, or 1 when S = ∅)."""
    cost = np.cumsum(1 + without.any(axis=1))
    return int(np.searchsorted(cost, budget, side="right"))


def _marginal_strata_estimate(players: np.ndarray, strata: np.ndarray, without: np.ndarray, meter: BudgetMeter,
                              n: int, n_strata: int) -> np.ndarray:
    """Evaluate v(S ∪ {i}) and v(S) for every pair, average the marginal contributions per (player, stratum),
    and return per player the mean over its non-empty strata of those means (0 if none)."""
    with_i = without.copy()
    with_i[np.arange(len(players)), players] = True
    values = meter(np.concatenate([with_i, without]))
    deltas = values[: len(players)] - values[len(players):]
    total, count = np.zeros((n, n_strata)), np.zeros((n, n_strata))
    np.add.at(total, (players, strata), deltas)
    np.add.at(count, (players, strata), 1)
    return _mean_over_filled(total, count)


def owen_sampling(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Owen sampling (Okhrati and Lipani 2020), as the official ``OwenSampling``: Owen's multilinear extension
    φ_i = ∫₀¹ E[v(S_q ∪ {i}) − v(S_q)] dq (S_q: every other player independently with probability q) on the
    grid q = k/Q, k = 0..Q, Q = max(⌊T/(4n)⌋, 1); passes over (k, then every player) draw one marginal
    contribution each until the budget is spent (about two per grid point and player); φ̂_i is the plain
    mean over the grid points of their sample means. The equal-weight grid makes it biased by the
    quadrature error (of order 1/Q), not by the sampling."""
    n, meter = game.n, BudgetMeter(game, budget)
    Q = max(budget // (4 * n), 1)
    pairs = np.arange(budget)                      # each pair costs at least 1: no more than `budget` pairs
    grid, players = (pairs // n) % (Q + 1), pairs % n
    without = rng.random((budget, n)) < (grid / Q)[:, None]
    without[pairs, players] = False
    paid = _paid_pairs(without, budget)
    return _marginal_strata_estimate(players[:paid], grid[:paid], without[:paid], meter, n, Q + 1)


def structured_sampling(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Structured sampling (van Campen et al. 2018), as the official ``StructuredSampling``: marginal
    contributions stratified by position. Rounds over positions ℓ = 0..n−1; for each ℓ one random
    permutation, and for every player i the permutation with i swapped to position ℓ gives S = its first ℓ
    players (|S| = ℓ, i ∉ S) and one marginal contribution to stratum (i, ℓ). φ̂_i is the mean over i's
    non-empty strata of their means, so below one full round (about n(2n−1) evaluations) the high
    positions are missing and the estimate is biased."""
    n, meter = game.n, BudgetMeter(game, budget)
    pairs = np.arange(budget)
    block, players = pairs // n, pairs % n
    position = block % n
    n_blocks = int(block[-1]) + 1
    rank = np.argsort(np.argsort(rng.random((n_blocks, n)), axis=1), axis=1)   # rank[b, j]: j's position
    order = np.argsort(rank, axis=1)                                           # order[b, p]: player at p
    without = rank[block] < position[:, None]                                  # the first ℓ players
    inside = without[pairs, players]                                           # i among them: swap with position ℓ
    without[pairs[inside], players[inside]] = False
    without[pairs[inside], order[block[inside], position[inside]]] = True
    paid = _paid_pairs(without, budget)
    return _marginal_strata_estimate(players[:paid], position[:paid], without[:paid], meter, n, n)


# ------------------------------------------------------------------ Stratified SVARM, scheme variants

def kernel_size_distribution(n: int) -> np.ndarray:
    """shapiq's default size weights for SVARM: ∝ 1/(s (n−s)) on sizes 1..n−1 (KernelSHAP's), zero on 0 and n."""
    return _shapley_kernel_sizes(n)


SIZE_DISTRIBUTIONS = {"paper": paper_size_distribution, "kernel": kernel_size_distribution}


def _border_sizes(n: int, budget: int, weights: np.ndarray, exact: list[int]) -> list[int]:
    """shapiq's border trick: while some sampled size s expects at least C(n, s) draws from the remaining
    budget, enumerate all its coalitions instead (and renormalise the weights over the other sizes)."""
    exact = list(exact)
    left = budget - sum(int(comb(n, s, exact=True)) for s in exact if s > 0)
    while True:
        sampled = [s for s in range(n + 1) if s not in exact and weights[s] > 0]
        if not sampled or left <= 0:
            return exact
        p = weights[sampled] / weights[sampled].sum()
        move = [s for s, q in zip(sampled, p, strict=True) if left * q >= comb(n, s, exact=True)]
        if not move:
            return exact
        exact += move
        left -= sum(int(comb(n, s, exact=True)) for s in move)


def _distinct_prefix(rng: np.random.Generator, n: int, sizes_p: np.ndarray, n_distinct: int,
                     available: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw coalitions (size from ``sizes_p``, members uniform) until ``n_distinct`` different ones
    have appeared; returns every draw (duplicates included, in order) and the index of its distinct row."""
    n_distinct = min(n_distinct, available)
    draws = np.zeros((0, n), dtype=bool)
    while True:
        batch = max(2 * n_distinct, 64)
        sizes = rng.choice(n + 1, batch, p=sizes_p)
        draws = np.concatenate([draws, random_coalitions(rng, n, sizes)])
        keys = np.packbits(draws, axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        if len(first) >= n_distinct:
            cut = np.sort(first)[n_distinct - 1] + 1   # the draw that brings the n_distinct-th new coalition
            draws = draws[:cut]
            _, first, inverse = np.unique(np.packbits(draws, axis=1), axis=0, return_index=True,
                                          return_inverse=True)
            return draws, first, np.asarray(inverse).reshape(-1)


def stratified_svarm_scheme(game, budget: int, rng: np.random.Generator, *, sizes: str = "paper",
                            border: bool = False, warm_up: bool = True, distinct: bool = False) -> np.ndarray:
    """Stratified SVARM with the sampling scheme's four choices as options (the estimator — stratum means
    of v(S) over S ∋ i and S ∌ i by size, averaged — is the same in every combination).

    - ``sizes``: the size distribution of the sampled coalitions, ``"paper"`` (P̃, the paper's) or
      ``"kernel"`` (∝ 1/(s(n−s)), shapiq's default);
    - ``border``: after the exact sizes 0, 1, n−1, n, also enumerate every size that would expect at
      least all of its coalitions from the remaining budget (shapiq's border trick);
    - ``warm_up``: one coalition per stratum and player before sampling (the paper's Algorithm 2); without
      it an unsampled stratum contributes 0 (shapiq);
    - ``distinct``: the budget counts distinct coalitions; a coalition drawn again is not re-evaluated but
      counts again in its strata's means (shapiq's sampler).

    ``stratified_svarm_scheme(game, T, rng)`` with the defaults is the paper's scheme (the same estimator as
    :func:`stratified_svarm`, drawn differently); ``sizes="kernel", border=True, warm_up=False,
    distinct=True`` is shapiq's ``SVARM``.
    """
    n = game.n
    if n < 4:
        raise ValueError("Stratified SVARM needs n >= 4 players")
    if sizes not in SIZE_DISTRIBUTIONS:
        raise ValueError(f"sizes must be one of {sorted(SIZE_DISTRIBUTIONS)}, got {sizes!r}")
    weights = SIZE_DISTRIBUTIONS[sizes](n).copy()
    exact = [0, 1, n - 1, n]
    weights[exact] = 0.0
    minimum = 2 * n + 1 + (2 * sum(math.ceil(n / s) for s in range(2, n - 1)) if warm_up else 0)
    if budget < minimum:
        raise ValueError(f"this scheme with n={n} needs a budget of at least {minimum}")
    if border:
        exact = _border_sizes(n, budget - (minimum - 2 * n - 1), weights, exact)
    weights[exact] = 0.0
    meter = BudgetMeter(game, budget)
    plus_sum, plus_count = np.zeros((n, n)), np.zeros((n, n))    # [player, ℓ = |S|-1, S ∋ i]
    minus_sum, minus_count = np.zeros((n, n)), np.zeros((n, n))  # [player, ℓ = |S|,   S ∌ i]

    def add(coalitions, values, plus_credit=None, minus_credit=None):
        """Each coalition A updates stratum |A|-1 of the players in A and |A| of the others (or of the credited ones)."""
        plus_credit = coalitions if plus_credit is None else plus_credit
        minus_credit = ~coalitions if minus_credit is None else minus_credit
        size = coalitions.sum(axis=1)
        plus = np.zeros((len(size), n))
        plus[size > 0, size[size > 0] - 1] = 1.0
        minus = np.zeros((len(size), n))
        minus[size < n, size[size < n]] = 1.0
        plus_credit, minus_credit = plus_credit.astype(float), minus_credit.astype(float)  # bool @ float is slow
        plus_sum[:] += plus_credit.T @ (values[:, None] * plus)
        plus_count[:] += plus_credit.T @ plus
        minus_sum[:] += minus_credit.T @ (values[:, None] * minus)
        minus_count[:] += minus_credit.T @ minus

    for s in sorted(exact):
        block = _all_of_size(n, s)
        add(block, meter(block))
    sampled = [s for s in range(n + 1) if weights[s] > 0]
    if warm_up:  # as in stratified_svarm: per sampled size, a partition of the players into blocks
        for s in sampled:
            blocks, owners = _partition_blocks(rng, n, s)
            add(blocks, meter(blocks), owners, np.zeros_like(owners))
        for s in sampled:
            blocks, owners = _partition_blocks(rng, n, n - s)
            add(~blocks, meter(~blocks), np.zeros_like(owners), owners)
    if not sampled or meter.left == 0:
        return _mean(plus_sum, plus_count).mean(axis=1) - _mean(minus_sum, minus_count).mean(axis=1)
    p = weights / weights.sum()
    if distinct:
        available = int(sum(comb(n, s, exact=True) for s in sampled))
        draws, first, inverse = _distinct_prefix(rng, n, p, meter.left, available)
        values = meter(draws[first])[inverse]
    else:
        draws = random_coalitions(rng, n, rng.choice(n + 1, meter.left, p=p))
        values = meter(draws)
    add(draws, values)
    return _mean(plus_sum, plus_count).mean(axis=1) - _mean(minus_sum, minus_count).mean(axis=1)


def stratified_svarm_shapiq_scheme(game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified SVARM drawn as shapiq 1.4.1 draws it: kernel size weights, border trick, no warm-up,
    distinct coalitions (see :func:`stratified_svarm_scheme`)."""
    return stratified_svarm_scheme(game, budget, rng, sizes="kernel", border=True, warm_up=False, distinct=True)


ESTIMATORS: dict[str, Estimator] = {
    "stratified_svarm": stratified_svarm,
    "svarm": svarm,
    "approshapley": approshapley,
    "kernelshap": kernelshap,
    "unbiased_kernelshap": unbiased_kernelshap,
    "stratified_sampling": stratified_sampling,
    "structured_sampling": structured_sampling,
    "owen_sampling": owen_sampling,
    "stratified_svarm_plus": stratified_svarm_plus,
}

# Variants of the paper's estimators (not among the paper's six; never ranked with them)
VARIANTS: dict[str, Estimator] = {
    "stratified_svarm_shapiq_scheme": stratified_svarm_shapiq_scheme,
}

LABELS = {
    "stratified_svarm": "Stratified SVARM",
    "stratified_svarm_shapiq_scheme": "Stratified SVARM, shapiq's scheme (variant)",
    "svarm": "SVARM",
    "approshapley": "ApproShapley",
    "kernelshap": "KernelSHAP",
    "unbiased_kernelshap": "Unbiased KernelSHAP",
    "stratified_sampling": "Stratified Sampling",
    "structured_sampling": "Structured Sampling",
    "owen_sampling": "Owen Sampling",
    "stratified_svarm_plus": "Stratified SVARM+",
    "shapiq_svarm": "shapiq SVARM (peer)",
    "shapiq_permutation": "shapiq PermutationSampling (peer)",
}
