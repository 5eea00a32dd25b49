"""Deciding comparisons across seeds: paired differences, ratios, sign tests and rates, with intervals.

One seed decides nothing. A comparative claim ("A beats B", "A is within 2 % of B", "the error falls
like 1/T") is decided on per-seed values and an interval, never on one seed's point estimate. The
pattern (see CONTRIBUTING.md, "Comparisons across seeds"):

1. run both methods on the same data, seeds and budget; keep one value per seed for each method;
2. record the per-seed arrays (``record("fd.steps10.ddim", list_of_values)``) so a reader sees them;
3. compute the interval here and record it with :func:`record_interval` (``<name>.mean``, ``.lo``,
   ``.hi``, ``.n``);
4. the claim checks the interval's bound (``fd.steps10.gap.lo > 0``), and its ``decisive:`` says
   whether the experiment can decide at all (enough seeds, an effect above its noise).

Every function is pure (NumPy/SciPy), takes explicit ``confidence`` and, where it resamples, a
``random_state``, and returns an :class:`Interval`.

- :func:`paired_difference`: mean of ``a - b`` over paired seeds, Student-t or percentile bootstrap.
- :func:`ratio_of_means`: ``mean(a) / mean(b)`` over paired seeds, delta-method interval on the log scale
  (or a paired percentile bootstrap, which under-covers with few seeds).
- :func:`sign_test`: two-sided exact binomial test of ``a > b`` against ``a < b`` (ties dropped).
- :func:`loglog_slope`: least-squares slope of ``log y`` on ``log x`` with a t interval (convergence
  orders, rates in the budget).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Interval", "paired_difference", "ratio_of_means", "sign_test", "loglog_slope", "mean_interval",
           "record_interval"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``confidence`` interval ``[lo, hi]`` from ``n`` observations."""

    estimate: float
    lo: float
    hi: float
    n: int
    confidence: float
    method: str

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval (the effect is decided at this confidence)."""
        return value < self.lo or value > self.hi

    def to_dict(self) -> dict:
        return asdict(self)


def _as_array(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per seed), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values: {array.tolist()}")
    return array


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need one value per seed for both methods, got {a.size} and {b.size}")
    return a, b


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _t_interval(values: np.ndarray, confidence: float, method: str = "t") -> Interval:
    from scipy import stats

    n = values.size
    mean = float(values.mean())
    if n < 2:
        raise ValueError("a t interval needs at least 2 observations (one seed decides nothing)")
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, confidence, method)


def mean_interval(values, *, confidence: float = 0.95) -> Interval:
    """Mean of per-seed ``values`` with a Student-t interval."""
    _check_confidence(confidence)
    return _t_interval(_as_array(values, "values"), confidence)


def _bootstrap_indices(n: int, n_resamples: int, random_state) -> np.ndarray:
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
    rng = np.random.default_rng(random_state)
    return rng.integers(0, n, size=(n_resamples, n))


def paired_difference(a, b, *, confidence: float = 0.95, method: str = "t", n_resamples: int = 10_000,
                      random_state: int = 0) -> Interval:
    """Mean of the paired differences ``d_s = a_s - b_s`` over seeds ``s``, with an interval.

    ``method="t"``: ``d̄ ± t_{n-1, (1+c)/2} · sd(d) / √n`` (exact for normal differences, the default);
    ``method="bootstrap"``: percentile interval of the mean over ``n_resamples`` resamples of the seeds
    (it under-covers with few seeds and warns below 10).
    Pairing removes what both methods share (the data, the noise draw), so the interval is about the
    methods, not the seeds.
    """
    _check_confidence(confidence)
    a, b = _paired(a, b)
    d = a - b
    if method == "t":
        return _t_interval(d, confidence)
    if method == "bootstrap":
        if d.size < 2:
            raise ValueError("a bootstrap interval needs at least 2 seeds (one seed decides nothing)")
        _warn_small_bootstrap(d.size)
        means = d[_bootstrap_indices(d.size, n_resamples, random_state)].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
        return Interval(float(d.mean()), float(lo), float(hi), d.size, confidence, "bootstrap")
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")


def ratio_of_means(a, b, *, confidence: float = 0.95, method: str = "delta", n_resamples: int = 10_000,
                   random_state: int = 0) -> Interval:
    """``R = mean(a) / mean(b)`` over paired seeds, with an interval.

    ``method="delta"`` (default): the delta method on the paired linearisation
    ``z_s = (a_s - R b_s) / mean(b)`` (``se(R) = sd(z) / √n``), with a Student-t quantile on the log scale,
    ``R · exp(± t_{n-1} se(R) / R)`` (when ``mean(a) > 0``; otherwise on the linear scale). Its coverage
    is close to nominal from 3 seeds on. ``method="bootstrap"``: percentile bootstrap with the seeds
    resampled jointly; it under-covers badly with few seeds (about 80 % for a nominal 95 % at n = 5), so
    it warns below 10 seeds. Use it for "A's error is k times B's"; ``b`` must have a positive mean.
    """
    _check_confidence(confidence)
    a, b = _paired(a, b)
    if a.size < 2:
        raise ValueError("a ratio interval needs at least 2 seeds (one seed decides nothing)")
    if b.mean() <= 0:
        raise ValueError(f"ratio_of_means needs mean(b) > 0, got {b.mean()!r}")
    ratio = float(a.mean() / b.mean())
    if method == "delta":
        from scipy import stats

        z = (a - ratio * b) / b.mean()
        se = float(z.std(ddof=1) / math.sqrt(a.size))
        t = float(stats.t.ppf(0.5 + confidence / 2, a.size - 1))
        if ratio > 0:
            factor = math.exp(t * se / ratio)
            return Interval(ratio, ratio / factor, ratio * factor, a.size, confidence, "delta (log scale)")
        return Interval(ratio, ratio - t * se, ratio + t * se, a.size, confidence, "delta")
    if method != "bootstrap":
        raise ValueError(f"method must be 'delta' or 'bootstrap', got {method!r}")
    _warn_small_bootstrap(a.size)
    index = _bootstrap_indices(a.size, n_resamples, random_state)
    num, den = a[index].mean(axis=1), b[index].mean(axis=1)
    ratios = np.divide(num, den, out=np.full_like(num, np.inf), where=den > 0)
    lo, hi = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(ratio, float(lo), float(hi), a.size, confidence, "bootstrap")


def _warn_small_bootstrap(n: int) -> None:
    if n < 10:
        warnings.warn(f"a percentile bootstrap over {n} seeds under-covers (a nominal 95 % interval covers about "
                      f"{ {2: 55, 3: 72, 4: 80}.get(n, 85) } %); prefer the t (or delta) interval below 10 seeds",
                      stacklevel=3)


def sign_test(a, b) -> float:
    """Two-sided exact binomial p-value for ``P(a_s > b_s) = 1/2`` over paired seeds (ties are dropped).

    With n = 5 seeds the smallest possible p-value is 0.0625: five seeds can show a direction but not
    decide it at 5 %. Returns 1.0 when every pair is tied.
    """
    from scipy import stats

    a, b = _paired(a, b)
    wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
    if wins + losses == 0:
        return 1.0
    return float(stats.binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue)


def loglog_slope(x, y, *, confidence: float = 0.95) -> Interval:
    """Least-squares slope of ``log y`` against ``log x`` with a Student-t interval (``n - 2`` dof).

    A convergence order (error ∝ h^p: slope p against the step size) or a rate in the budget (MSE ∝ T^-1:
    slope -1). Needs at least 3 positive points.
    """
    _check_confidence(confidence)
    x, y = _paired(x, y)
    if x.size < 3:
        raise ValueError("a slope interval needs at least 3 points")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("loglog_slope needs positive x and y")
    from scipy import stats

    fit = stats.linregress(np.log(x), np.log(y))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 2) * fit.stderr)
    return Interval(float(fit.slope), float(fit.slope - half), float(fit.slope + half), x.size, confidence, "t")


def record_interval(name: str, interval: Interval, *, volatile: bool = False) -> Interval:
    """Record ``<name>.mean``, ``<name>.lo``, ``<name>.hi`` and ``<name>.n`` (claims check the bounds).

    ``volatile`` marks the estimate and bounds as machine-dependent (not compared with goldens), as for
    timings; ``n`` is always compared.
    """
    from common.harness import record

    record(f"{name}.mean", interval.estimate, volatile=volatile)
    record(f"{name}.lo", interval.lo, volatile=volatile)
    record(f"{name}.hi", interval.hi, volatile=volatile)
    record(f"{name}.n", interval.n)
    return interval
