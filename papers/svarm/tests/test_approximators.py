import itertools
import math

import numpy as np
import pytest

from papers.svarm import (
    ESTIMATORS,
    SOUG,
    AirportGame,
    BudgetExceeded,
    BudgetMeter,
    Game,
    ModelGame,
    ShoeGame,
    exact_shapley_by_enumeration,
    paper_size_distribution,
    stratified_svarm_minimum_budget,
)


class TableGame(Game):
    """A game given by a dict from frozenset to value (v(∅) = 0)."""

    def __init__(self, n, table):
        self.n, self.table = n, table

    def _values(self, coalitions):
        return np.array([self.table.get(frozenset(np.flatnonzero(row)), 0.0) for row in coalitions])


def test_enumeration_on_a_hand_computed_game():
    # v = 1 for {0,1}, {0,2}, {0,1,2} (a "glove" game where player 0 is essential): φ = (2/3, 1/6, 1/6)
    game = TableGame(3, {frozenset({0, 1}): 1.0, frozenset({0, 2}): 1.0, frozenset({0, 1, 2}): 1.0})
    assert np.allclose(exact_shapley_by_enumeration(game), [2 / 3, 1 / 6, 1 / 6])


@pytest.mark.parametrize("game", [SOUG(8, n_unanimity=12, random_state=3), ShoeGame(8),
                                  AirportGame(np.array([3.0, 1, 2, 2, 5, 4, 1]))],
                         ids=["soug", "shoe", "airport"])
def test_closed_forms_match_enumeration(game):
    assert np.allclose(game.shapley_values(), exact_shapley_by_enumeration(game), atol=1e-12)


def test_airport_matches_the_papers_values():
    phi = AirportGame().shapley_values()
    # values listed in the official AirportGame.py for the cheapest, a middle and the costliest player
    assert phi[0] == pytest.approx(0.01) and phi[8] == pytest.approx(0.020869565)
    assert phi[99] == pytest.approx(0.289369662)
    assert phi.sum() == pytest.approx(10.0)  # efficiency: v(N) = max cost


def test_soug_is_normalized_and_model_game_is_efficient():
    game = SOUG(20, random_state=0)
    assert game.grand_value == pytest.approx(100.0)
    assert game.shapley_values().sum() == pytest.approx(100.0)
    model = ModelGame("wine")
    assert model.n == 13 and model.value(np.zeros(13, dtype=bool))[0] == 0.0
    assert exact_shapley_by_enumeration(model).sum() == pytest.approx(model.grand_value)


def test_paper_distribution_is_a_distribution_on_2_to_n_minus_2():
    for n in (6, 7, 20, 21, 100):
        p = paper_size_distribution(n)
        assert p.sum() == pytest.approx(1.0)
        assert p[[0, 1, n - 1, n]].sum() == 0 and np.all(p[2:n - 1] > 0)
        assert np.allclose(p, p[::-1])


def test_budget_meter_charges_nonempty_coalitions_only():
    meter = BudgetMeter(ShoeGame(4), 2)
    meter(np.array([[0, 0, 0, 0], [1, 0, 1, 0]], dtype=bool))
    assert meter.used == 1
    with pytest.raises(BudgetExceeded):
        meter(np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError):
        BudgetMeter(ShoeGame(4), 0)


class CountingGame(Game):
    def __init__(self, inner):
        self.inner, self.n, self.calls = inner, inner.n, 0

    def _values(self, coalitions):
        self.calls += int(coalitions.any(axis=1).sum())
        return self.inner.value(coalitions)


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("budget", [200, 333, 1000])
def test_budget_is_never_exceeded(name, budget):
    game = CountingGame(SOUG(12, random_state=1))
    ESTIMATORS[name](game, budget, np.random.default_rng(0))
    assert game.calls <= budget


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_same_seed_same_estimate(name):
    game = SOUG(10, random_state=2)
    a = ESTIMATORS[name](game, 300, np.random.default_rng(7))
    b = ESTIMATORS[name](game, 300, np.random.default_rng(7))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["kernelshap", "unbiased_kernelshap"])
def test_efficiency_of_regression_estimators(name):
    game = SOUG(10, random_state=4)
    phi = ESTIMATORS[name](game, 300, np.random.default_rng(0))
    assert phi.sum() == pytest.approx(game.grand_value)


def test_stratified_svarm_is_exact_once_every_stratum_is_exact():
    # n = 5: sizes 0,1,4,5 are computed exactly and the warm-up covers sizes 2,3 with one
    # coalition each; on a game where v depends only on |S| one sample per stratum is exact.
    class Symmetric(Game):
        n = 5

        def _values(self, coalitions):
            return coalitions.sum(axis=1).astype(float) ** 2

    game = Symmetric()
    phi = ESTIMATORS["stratified_svarm"](game, stratified_svarm_minimum_budget(5), np.random.default_rng(0))
    assert np.allclose(phi, game.grand_value / 5)


def test_stratified_svarm_rejects_too_small_budget():
    with pytest.raises(ValueError, match="at least 155"):
        ESTIMATORS["stratified_svarm"](SOUG(20, random_state=0), 100, np.random.default_rng(0))


def test_kernelshap_is_exact_when_the_budget_covers_every_coalition():
    game = SOUG(8, random_state=5)
    phi = ESTIMATORS["kernelshap"](game, 2**8, np.random.default_rng(0))
    assert np.allclose(phi, game.shapley_values(), atol=1e-9)


def test_stratified_svarm_beats_permutation_sampling_on_soug():
    """The paper's headline on a few games (a smoke version of the notebook's claim)."""
    ratios = []
    for k in range(3):
        game = SOUG(20, random_state=k)
        exact = game.shapley_values()
        mse = {name: np.mean((ESTIMATORS[name](game, 1000, np.random.default_rng(k)) - exact) ** 2)
               for name in ("stratified_svarm", "approshapley")}
        ratios.append(mse["approshapley"] / mse["stratified_svarm"])
    assert min(ratios) > 5


def test_random_coalitions_have_requested_sizes_and_constraints():
    from papers.svarm.approximators import random_coalitions

    rng = np.random.default_rng(0)
    sizes = np.array([1, 1, 3, 5, 2])
    rows = random_coalitions(rng, 5, sizes, include=np.array([0, 1, 2, 3, 4]))
    assert np.array_equal(rows.sum(axis=1), sizes)
    assert all(rows[k, k] for k in range(5))
    rows = random_coalitions(rng, 5, np.array([4, 4, 4]), exclude=np.array([0, 1, 2]))
    assert not any(rows[k, k] for k in range(3)) and np.all(rows.sum(axis=1) == 4)
    # uniformity over the C(5,2) subsets of size 2
    rows = random_coalitions(rng, 5, np.full(20000, 2))
    counts = {c: 0 for c in itertools.combinations(range(5), 2)}
    for row in rows:
        counts[tuple(np.flatnonzero(row))] += 1
    assert max(counts.values()) / min(counts.values()) < 1.2
    assert math.comb(5, 2) == len(counts)


# ----------------------------------------------------------------- sampling-scheme variants (shapiq's scheme)

from papers.svarm import VARIANTS, rank_among, stratified_svarm_scheme, stratum_variance_ratio  # noqa: E402
from papers.svarm.approximators import _border_sizes, _shapley_kernel_sizes  # noqa: E402

SCHEMES = [dict(), dict(sizes="kernel"), dict(warm_up=False), dict(distinct=True), dict(border=True),
           dict(sizes="kernel", border=True, warm_up=False, distinct=True)]


@pytest.mark.parametrize("options", SCHEMES)
@pytest.mark.parametrize("budget", [300, 1000])
def test_scheme_variants_respect_the_budget_and_seed(options, budget):
    game = CountingGame(SOUG(12, random_state=1))
    a = stratified_svarm_scheme(game, budget, np.random.default_rng(3), **options)
    assert game.calls <= budget
    b = stratified_svarm_scheme(SOUG(12, random_state=1), budget, np.random.default_rng(3), **options)
    assert np.array_equal(a, b)


def test_distinct_scheme_spends_the_whole_budget_on_distinct_coalitions():
    seen = []

    class Recording(Game):
        n = 10

        def _values(self, coalitions):
            seen.extend(bytes(row) for row in np.packbits(coalitions, axis=1))
            return coalitions.sum(axis=1).astype(float)

    game = CountingGame(Recording())
    stratified_svarm_scheme(game, 400, np.random.default_rng(0), sizes="kernel", warm_up=False, distinct=True)
    assert game.calls == 400
    assert len(seen) == len(set(seen))  # no coalition was evaluated twice


def test_every_scheme_is_exact_on_a_game_that_depends_only_on_size():
    class Symmetric(Game):
        n = 8

        def _values(self, coalitions):
            return coalitions.sum(axis=1).astype(float) ** 2

    for options in SCHEMES:
        phi = stratified_svarm_scheme(Symmetric(), 600, np.random.default_rng(0), **options)
        assert np.allclose(phi, 64 / 8), options


def test_border_trick_matches_shapiq_at_n20_and_enumerates_more_at_n13():
    # n = 20, budget 1000, kernel weights: nothing beyond the sizes 0, 1, 19, 20 (as shapiq's sampler)
    w = _shapley_kernel_sizes(20)
    w[[0, 1, 19, 20]] = 0
    assert sorted(_border_sizes(20, 1000, w, [0, 1, 19, 20])) == [0, 1, 19, 20]
    w = _shapley_kernel_sizes(13)
    w[[0, 1, 12, 13]] = 0
    assert {2, 11} <= set(_border_sizes(13, 1000, w, [0, 1, 12, 13]))


def test_scheme_variant_is_unbiased_in_the_mean_and_close_to_shapiq():
    pytest.importorskip("shapiq")
    from papers.svarm import shapiq_estimate

    game = SOUG(10, random_state=5)
    exact = game.shapley_values()
    ours = np.mean([VARIANTS["stratified_svarm_shapiq_scheme"](game, 200, np.random.default_rng(r))
                    for r in range(200)], axis=0)
    assert np.max(np.abs(ours - exact)) < 0.5
    # shapiq's SVARM on a budget that enumerates everything is exact, and so is our variant
    full = 2**10 - 1
    np.testing.assert_allclose(shapiq_estimate("shapiq_svarm", game, full, np.random.default_rng(0)), exact, atol=1e-8)
    np.testing.assert_allclose(VARIANTS["stratified_svarm_shapiq_scheme"](game, full, np.random.default_rng(0)),
                               exact, atol=1e-8)


def test_rank_among_and_top2_z():
    import pandas as pd

    summary = pd.DataFrame({"estimator": ["a", "b", "c", "d"], "budget": [10] * 4,
                            "mean": [1.0, 2.0, 3.0, 10.0], "sem": [0.1, 0.1, 0.1, 0.1]})
    r = rank_among(summary, "c", 10, ["a", "b", "c", "d"])
    assert r["rank"] == 3 and r["versus"] == "b" and r["top_z"] == pytest.approx(1.0 / np.hypot(0.1, 0.1))
    r = rank_among(summary, "a", 10, ["a", "b", "c"])
    assert r["rank"] == 1 and r["versus"] == "c" and r["top_z"] < 0


def test_stratum_variance_ratio_is_large_for_near_additive_games():
    class Additive(Game):
        n = 6

        def _values(self, coalitions):
            return coalitions @ np.arange(1.0, 7.0) + 0.1 * (coalitions[:, 0] & coalitions[:, 1])

    assert stratum_variance_ratio(Additive()) > 100
    assert stratum_variance_ratio(SOUG(8, random_state=0)) < stratum_variance_ratio(Additive())


# --------------------------------------------- the paper's other baselines: Owen, Structured, Stratified SVARM⁺

from papers.svarm import owen_sampling, stratified_svarm_plus, structured_sampling  # noqa: E402
from papers.svarm.approximators import _distinct_coalitions, _update_plus_probabilities  # noqa: E402


class Additive(Game):
    """v(S) = Σ_{i∈S} w_i: every marginal contribution of i is w_i, so φ = w."""

    def __init__(self, n):
        self.n, self.w = n, np.linspace(-1.0, 2.0, n)

    def _values(self, coalitions):
        return coalitions @ self.w


def _max_abs_z(runs: np.ndarray, target: np.ndarray) -> float:
    errors = runs - target
    return float(np.max(np.abs(errors.mean(axis=0) / (errors.std(axis=0, ddof=1) / np.sqrt(len(runs))))))


def _bonferroni(n: int) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - 0.01 / (2 * n)))


@pytest.mark.parametrize("estimator", [owen_sampling, structured_sampling])
def test_marginal_contribution_baselines_are_exact_on_additive_games(estimator):
    game = Additive(9)
    np.testing.assert_allclose(estimator(game, 150, np.random.default_rng(0)), game.w, atol=1e-12)


def test_structured_sampling_is_unbiased_once_every_position_is_sampled():
    # one round over the positions costs n(2n-1) = 66 evaluations at n = 6; 100 fills every stratum
    game = SOUG(6, random_state=11)
    runs = np.array([structured_sampling(game, 100, np.random.default_rng(r)) for r in range(3000)])
    assert _max_abs_z(runs, game.shapley_values()) < _bonferroni(6)


def test_structured_sampling_places_each_player_once_per_position():
    # with a recording game: the pairs of one permutation block are (S ∪ {i}, S) with |S| = ℓ and i ∉ S
    seen = []

    class Recording(Game):
        n = 5

        def _values(self, coalitions):
            seen.append(coalitions.copy())
            return coalitions.sum(axis=1).astype(float)

    structured_sampling(Recording(), 45, np.random.default_rng(1))   # one round: 5 + 4·10 = 45
    rows = seen[0]                                   # the 25 S ∪ {i}, then the 20 non-empty S (v(∅) is free)
    assert len(rows) == 45
    with_i, without = rows[:25], np.concatenate([np.zeros((5, 5), dtype=bool), rows[25:]])
    assert np.all(with_i.sum(axis=1) == without.sum(axis=1) + 1)
    assert np.all((with_i & ~without).sum(axis=1) == 1) and not np.any(without & ~with_i)
    players = np.argmax(with_i & ~without, axis=1)
    assert np.array_equal(players, np.tile(np.arange(5), 5))
    assert np.array_equal(without.sum(axis=1), np.repeat(np.arange(5), 5))


def test_owen_sampling_is_unbiased_for_its_quadrature_target():
    # E[φ̂_i] = mean over q = k/Q of Σ_S q^|S| (1-q)^(n-1-|S|) [v(S ∪ i) - v(S)]: by enumeration at n = 6
    n, budget = 6, 120                                 # Q = 5, two passes over the grid
    game = SOUG(n, random_state=12)
    Q = budget // (4 * n)
    target = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(Q + 1):
            q = k / Q
            for size in range(n):
                for S in itertools.combinations(others, size):
                    row = np.zeros((2, n), dtype=bool)
                    row[:, list(S)] = True
                    row[0, i] = True
                    delta = game.value(row) @ np.array([1.0, -1.0])
                    target[i] += q**size * (1 - q) ** (n - 1 - size) * delta / (Q + 1)
    runs = np.array([owen_sampling(game, budget, np.random.default_rng(r)) for r in range(3000)])
    assert _max_abs_z(runs, target) < _bonferroni(n)
    assert np.max(np.abs(target - game.shapley_values())) > 1e-3   # the quadrature bias is real


@pytest.mark.parametrize("n", [6, 7])
def test_stratified_svarm_plus_is_exact_when_the_budget_covers_every_coalition(n):
    game = CountingGame(SOUG(n, random_state=n))
    phi = stratified_svarm_plus(game, 2**n - 1, np.random.default_rng(0))
    assert game.calls == 2**n - 1
    np.testing.assert_allclose(phi, game.inner.shapley_values(), atol=1e-9)


def test_stratified_svarm_plus_never_evaluates_a_coalition_twice():
    seen = []

    class Recording(Game):
        n = 8

        def _values(self, coalitions):
            seen.extend(bytes(row) for row in np.packbits(coalitions, axis=1))
            return coalitions.sum(axis=1).astype(float)

    stratified_svarm_plus(Recording(), 200, np.random.default_rng(0))
    assert len(seen) == 200 and len(seen) == len(set(seen))


def test_stratified_svarm_plus_is_unbiased_when_every_stratum_is_filled():
    # n = 8, budget 200: 183 of the 238 coalitions of sizes 2..6 are drawn, every stratum has samples
    game = SOUG(8, random_state=13)
    runs = np.array([stratified_svarm_plus(game, 200, np.random.default_rng(r)) for r in range(2000)])
    assert _max_abs_z(runs, game.shapley_values()) < _bonferroni(8)


def test_plus_probabilities_follow_the_official_update():
    original = paper_size_distribution(6)          # sizes 2, 3, 4 (C = 15, 20, 15)
    probs = original.copy()
    _update_plus_probabilities(probs, original, 3, 5, 20)
    assert probs[3] == pytest.approx(original[3] * 0.75) and probs.sum() == pytest.approx(1.0)
    assert probs[2] / probs[4] == pytest.approx(original[2] / original[4])
    _update_plus_probabilities(probs, original, 2, 15, 15)   # size 2 exhausted: dropped, renormalised
    assert probs[2] == 0 and probs.sum() == pytest.approx(1.0)
    alone = np.zeros(7)
    alone[4] = 0.3
    _update_plus_probabilities(alone, original, 4, 3, 15)    # the only size left keeps all the mass
    assert alone[4] == 1.0


def test_distinct_coalitions_are_distinct_uniform_and_of_the_right_size():
    rng = np.random.default_rng(0)
    for k in (3, 8, 10):                          # 10 of C(5, 2) = 10: every one, through enumeration
        rows = _distinct_coalitions(rng, 5, 2, k)
        assert rows.shape == (k, 5) and np.all(rows.sum(axis=1) == 2)
        assert len({bytes(r) for r in np.packbits(rows, axis=1)}) == k
    counts = np.zeros(10)
    index = {c: j for j, c in enumerate(itertools.combinations(range(5), 2))}
    for _ in range(4000):
        for row in _distinct_coalitions(rng, 5, 2, 3):
            counts[index[tuple(np.flatnonzero(row))]] += 1
    assert counts.max() / counts.min() < 1.15
