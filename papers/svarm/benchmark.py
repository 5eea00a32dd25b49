"""Experiments of the notebooks: MSE against budget, unbiasedness, and the shapiq cross-check.

Seeds: run ``r`` of estimator ``e`` on game ``g`` at budget ``T`` draws from
``SeedSequence([random_state, g, r, T, crc32(e)])``, so every (game, run, budget) cell is
reproducible on its own and independent of which other estimators run.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .approximators import ESTIMATORS, VARIANTS


def shapiq_available() -> bool:
    try:
        import shapiq  # noqa: F401
    except ImportError:
        return False
    return True


def shapiq_estimate(name: str, game, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Run a shapiq approximator through our interface (peer cross-check, not the method under test).

    shapiq charges ``v(∅)`` like any other coalition, our rule does not, so it gets ``budget + 1``:
    both then see the same number of non-empty evaluations. ``shapiq_svarm`` is shapiq's ``SVARM``,
    which is the *stratified* variant (SVARM-IQ at order 1) with shapiq's own size sampler and no
    warm-up; ``shapiq_permutation`` is its ``PermutationSamplingSV`` (ApproShapley).
    """
    from shapiq.approximator import SVARM, PermutationSamplingSV

    classes = {"shapiq_svarm": SVARM, "shapiq_permutation": PermutationSamplingSV}
    if name not in classes:
        raise ValueError(f"unknown shapiq estimator {name!r}; known: {sorted(classes)}")
    seed = int(rng.integers(2**31 - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Not all budget is required due to the border-trick."
        values = classes[name](game.n, random_state=seed).approximate(budget + 1, game)
    return np.array([values[(i,)] for i in range(game.n)])


def run_estimator(name: str, game, budget: int, rng: np.random.Generator) -> np.ndarray:
    if name in ESTIMATORS:
        return ESTIMATORS[name](game, budget, rng)
    if name in VARIANTS:
        return VARIANTS[name](game, budget, rng)
    if name.startswith("shapiq_"):
        return shapiq_estimate(name, game, budget, rng)
    raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}, {sorted(VARIANTS)} "
                     "and shapiq_svarm, shapiq_permutation")


def _rng(random_state: int, game_index: int, run: int, budget: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([random_state, game_index, run, budget, zlib.crc32(name.encode())]))


def mse_table(games, estimators, budgets, n_runs: int = 1, random_state: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per (game, estimator, budget, run): the MSE over players against the exact values."""
    rows = []
    exact = [g.shapley_values() for g in games]
    cells = [(g, e, b, r) for g in range(len(games)) for e in estimators for b in budgets for r in range(n_runs)]
    for g, name, budget, run in tqdm(cells, desc="estimates", disable=not progress, mininterval=1.0):
        phi = run_estimator(name, games[g], budget, _rng(random_state, g, run, budget, name))
        rows.append({"game": g, "estimator": name, "budget": budget, "run": run,
                     "mse": float(np.mean((phi - exact[g]) ** 2))})
    return pd.DataFrame(rows)


def bias_check(game, name: str, budget: int, n_runs: int, random_state: int = 0) -> dict:
    """Mean error per player over ``n_runs`` independent runs and its standard error.

    For an unbiased estimator each ``z_i = mean error / SE`` is approximately standard normal;
    ``max_abs_z`` is compared with the Bonferroni bound for a 1% family-wise level over n players.
    """
    from scipy.stats import norm

    exact = game.shapley_values()
    errors = np.array([run_estimator(name, game, budget, _rng(random_state, 0, r, budget, name)) - exact
                       for r in range(n_runs)])
    mean = errors.mean(axis=0)
    se = errors.std(axis=0, ddof=1) / np.sqrt(n_runs)
    z = np.divide(mean, se, out=np.zeros_like(mean), where=se > 0)
    return {"mean_error": mean, "se": se, "z": z, "max_abs_z": float(np.max(np.abs(z))),
            "z_threshold": float(norm.ppf(1 - 0.01 / (2 * game.n)))}


def additive_r2(game) -> float:
    """Share of the variance of ``v`` over all ``2^n`` coalitions explained by an additive game
    ``v(S) ≈ b + Σ_{i∈S} w_i`` (1 means no interactions, where regression-based KernelSHAP is exact)."""
    from .cooperative_games import _all_coalitions

    if game.n > 16:
        raise ValueError("additive_r2 enumerates all coalitions; use n <= 16")
    Z = _all_coalitions(game.n)
    values = game.value(Z)
    X = np.column_stack([np.ones(len(Z)), Z.astype(float)])
    coef, *_ = np.linalg.lstsq(X, values, rcond=None)
    return float(1 - np.var(values - X @ coef) / np.var(values))


def per_game_mse(table: pd.DataFrame, name: str, budget: int) -> np.ndarray:
    """MSE of estimator ``name`` at ``budget``, one value per game (mean over runs), ordered by game."""
    rows = table[(table["estimator"] == name) & (table["budget"] == budget)]
    return rows.groupby("game")["mse"].mean().sort_index().to_numpy()


def rank_among(summary: pd.DataFrame, name: str, budget: int, candidates, top: int = 2) -> dict:
    """Rank of ``name`` by mean MSE at ``budget`` among ``candidates`` (1 = best), and how clearly the
    top-``top`` question is decided: ``z = (mse − mse_other) / sqrt(se² + se_other²)`` against the
    ``top``-th best of the other candidates (z < 0: inside the top; |z| >= 2: decided at about 95 %)."""
    at = summary[(summary["budget"] == budget) & summary["estimator"].isin(list(candidates))].set_index("estimator")
    if name not in at.index:
        raise ValueError(f"{name!r} is not among the candidates at budget {budget}")
    others = at.drop(index=name).sort_values("mean")
    if len(others) < top:
        raise ValueError(f"need at least {top} other candidates, got {len(others)}")
    other = others.iloc[top - 1]
    se = float(np.hypot(at.loc[name, "sem"], other["sem"]))
    gap = float(at.loc[name, "mean"] - other["mean"])
    return {"rank": int(at["mean"].rank(method="min")[name]), "top_z": gap / se if se > 0 else float(np.sign(gap)) * np.inf,
            "versus": str(other.name)}


def stratum_variance_ratio(game) -> float:
    """What a stratified coalition-value estimator pays against a marginal-contribution one, by enumeration.

    For every player ``i`` and size ``ℓ``: ``Var v(S ∪ {i}) + Var v(S)`` (the variance SVARM's two strata
    means carry) against ``Var [v(S ∪ {i}) − v(S)]`` (what sampling marginal contributions carries),
    over the coalitions ``S ∌ i`` of size ``ℓ``; returned as the ratio of their means over ``(i, ℓ)``.
    Large when the coalition values vary much more than the contributions (nearly additive games).
    """
    from .cooperative_games import _all_coalitions

    n = game.n
    if n > 16:
        raise ValueError("stratum_variance_ratio enumerates all coalitions; use n <= 16")
    coalitions = _all_coalitions(n)
    values, sizes, masks = game.value(coalitions), coalitions.sum(axis=1), np.arange(2**n)
    coalition_var, contribution_var = [], []
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        for size in range(n):
            S = without[sizes[without] == size]
            coalition_var.append(values[S | (1 << i)].var() + values[S].var())
            contribution_var.append((values[S | (1 << i)] - values[S]).var())
    return float(np.mean(coalition_var) / np.mean(contribution_var))
