"""Cooperative games with known Shapley values, evaluated in batches.

A game on players ``N = {0, ..., n-1}`` is a value function ``v: 2^N -> R`` with ``v(∅) = 0``.
Every game here takes a boolean matrix of coalitions (one row per coalition) and returns one
value per row, so estimators can evaluate thousands of coalitions in one call and peers such
as shapiq can call the game directly.

The Shapley value of player ``i`` (the quantity every estimator approximates) is

    φ_i = Σ_{S ⊆ N \\ {i}}  |S|! (n - |S| - 1)! / n!  · [v(S ∪ {i}) - v(S)].

Ground truth: closed forms (SOUG, Shoe, Airport) or enumeration of all ``2^n`` coalitions
(:func:`exact_shapley_by_enumeration`, used for the explainability game and in the tests).
"""

from __future__ import annotations

import math

import numpy as np


class Game:
    """Base class: ``value(coalitions)`` with coalitions a bool array of shape (k, n) or (n,)."""

    n: int

    def _values(self, coalitions: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def value(self, coalitions) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool)
        single = coalitions.ndim == 1
        coalitions = np.atleast_2d(coalitions)
        if coalitions.shape[1] != self.n:
            raise ValueError(f"coalitions must have {self.n} columns, got shape {coalitions.shape}")
        values = np.asarray(self._values(coalitions), dtype=float)
        return values[:1] if single else values

    __call__ = value

    def shapley_values(self) -> np.ndarray:
        """The exact Shapley values (closed form where one exists, else enumeration)."""
        return exact_shapley_by_enumeration(self)

    @property
    def grand_value(self) -> float:
        return float(self.value(np.ones(self.n, dtype=bool))[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"


class SOUG(Game):
    """Sum of unanimity games, as in the paper's experiments (official ``Games/SOUG.py``).

    ``v(S) = Σ_k c_k · [T_k ⊆ S]`` with ``n_unanimity`` sets ``T_k`` whose sizes are uniform on
    ``{1, ..., n}``, members uniform without replacement, and weights ``c_k ~ U[0, 1]``
    rescaled so that ``Σ c_k = 100 = v(N)``. Exact Shapley value: ``φ_i = Σ_{k: i ∈ T_k} c_k / |T_k|``.
    """

    def __init__(self, n: int, n_unanimity: int = 50, random_state=None):
        if n < 1 or n_unanimity < 1:
            raise ValueError("SOUG needs n >= 1 and n_unanimity >= 1")
        rng = np.random.default_rng(random_state)
        self.n = n
        self.sets = np.zeros((n_unanimity, n), dtype=bool)
        for k in range(n_unanimity):
            size = rng.integers(1, n + 1)
            self.sets[k, rng.choice(n, size, replace=False)] = True
        weights = rng.random(n_unanimity)
        self.coefficients = 100.0 * weights / weights.sum()
        self._sizes = self.sets.sum(axis=1)

    def _values(self, coalitions):
        contained = coalitions.astype(np.int32) @ self.sets.T.astype(np.int32) == self._sizes
        return contained @ self.coefficients

    def shapley_values(self):
        return (self.sets * (self.coefficients / self._sizes)[:, None]).sum(axis=0)

    def __repr__(self):
        return f"SOUG(n={self.n}, unanimity sets={len(self.sets)}, v(N)={self.grand_value:.1f})"


class ShoeGame(Game):
    """The shoe game: players ``0..n/2-1`` own right shoes, the others left shoes; a coalition is
    worth its number of pairs, ``v(S) = min(|S ∩ L|, |S ∩ R|)``. By symmetry and efficiency every
    player gets ``φ_i = 1/2``. It is hard for estimators because most marginal contributions are 0."""

    def __init__(self, n: int):
        if n < 2 or n % 2:
            raise ValueError(f"the shoe game needs an even number of players >= 2, got {n}")
        self.n = n

    def _values(self, coalitions):
        half = self.n // 2
        return np.minimum(coalitions[:, half:].sum(axis=1), coalitions[:, :half].sum(axis=1)).astype(float)

    def shapley_values(self):
        return np.full(self.n, 0.5)


AIRPORT_COSTS = np.repeat(np.arange(1, 11), [8, 12, 6, 14, 8, 9, 13, 10, 10, 10]).astype(float)


class AirportGame(Game):
    """The airport game (Littlechild and Owen, 1973): player ``i`` needs a runway of cost ``c_i``;
    a coalition pays for the longest runway it needs, ``v(S) = max_{i ∈ S} c_i``.

    With costs sorted ascending ``c_(1) ≤ ... ≤ c_(n)`` and ``c_(0) = 0`` the Shapley value is the
    closed form ``φ_(j) = Σ_{k ≤ j} (c_(k) - c_(k-1)) / (n - k + 1)``: every runway segment is shared
    equally by the players who need it. The default costs are the paper's 100 players.
    """

    def __init__(self, costs=None):
        self.costs = np.asarray(AIRPORT_COSTS if costs is None else costs, dtype=float)
        if self.costs.ndim != 1 or np.any(self.costs < 0):
            raise ValueError("costs must be a 1-D array of non-negative numbers")
        self.n = len(self.costs)

    def _values(self, coalitions):
        return np.where(coalitions, self.costs, 0.0).max(axis=1)

    def shapley_values(self):
        order = np.argsort(self.costs, kind="stable")
        sorted_costs = self.costs[order]
        increments = np.diff(sorted_costs, prepend=0.0) / (self.n - np.arange(self.n))
        phi = np.empty(self.n)
        phi[order] = np.cumsum(increments)
        return phi


class ModelGame(Game):
    """An explainability game: the prediction of a scikit-learn model for one instance, with the
    features outside the coalition replaced by their training mean (mean imputation):

        v(S) = f(x_S, x̄_{N∖S}) - f(x̄),

    where ``f`` is the predicted probability of the class the model assigns to ``x``. It stands in
    for the paper's lookup-table games (Adult, image, NLP), which are not shipped. All ``2^n``
    values are computed once (n ≤ 14), so exact Shapley values come from enumeration.
    """

    def __init__(self, dataset: str = "wine", instance: int = 0, random_state=0):
        from sklearn.datasets import load_breast_cancer, load_wine
        from sklearn.ensemble import RandomForestClassifier

        loaders = {"wine": load_wine, "breast_cancer": load_breast_cancer}
        if dataset not in loaders:
            raise ValueError(f"dataset must be one of {sorted(loaders)}")
        X, y = loaders[dataset](return_X_y=True)
        X = X[:, :14]
        self.n = X.shape[1]
        self.dataset = dataset
        model = RandomForestClassifier(n_estimators=100, max_depth=4, random_state=random_state).fit(X, y)
        x, mean = X[instance], X.mean(axis=0)
        target = int(model.predict(x[None])[0])
        masks = _all_coalitions(self.n)
        inputs = np.where(masks, x, mean)
        probabilities = model.predict_proba(inputs)[:, list(model.classes_).index(target)]
        self._table = probabilities - probabilities[0]
        self._powers = 1 << np.arange(self.n)

    def _values(self, coalitions):
        return self._table[coalitions.astype(np.int64) @ self._powers]

    def __repr__(self):
        return f"ModelGame({self.dataset}, n={self.n})"


def _all_coalitions(n: int) -> np.ndarray:
    """Row ``m`` is the coalition whose bitmask is ``m`` (player ``i`` is bit ``i``)."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_shapley_by_enumeration(game: Game, max_players: int = 20) -> np.ndarray:
    """Shapley values from all ``2^n`` coalition values (the definition above, vectorized)."""
    n = game.n
    if n > max_players:
        raise ValueError(f"enumeration over 2^{n} coalitions is too large (max_players={max_players})")
    masks = np.arange(2**n)
    values = np.concatenate([game.value(_all_coalitions_chunk(n, start, min(start + 2**16, 2**n)))
                             for start in range(0, 2**n, 2**16)])
    sizes = np.bitwise_count(masks) if hasattr(np, "bitwise_count") else np.array([bin(m).count("1") for m in masks])
    weights = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    phi = np.empty(n)
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        phi[i] = np.sum(weights[sizes[without]] * (values[without | (1 << i)] - values[without]))
    return phi


def _all_coalitions_chunk(n: int, start: int, stop: int) -> np.ndarray:
    return ((np.arange(start, stop)[:, None] >> np.arange(n)) & 1).astype(bool)
