"""Sequential Monte Carlo utilities: log-space weights, ESS, resampling, Brownian-bridge path integrals.

Importance weights are carried as **log weights** and normalised with a log-sum-exp, so that products
of many small factors (a product over sub-posteriors, a path functional) never underflow.

- :func:`normalise_log_weights`: ``log W_i = log w_i - log Σ_j w_j``.
- :func:`ess`: the effective sample size ``(Σ w_i)² / Σ w_i²`` (Kong 1992), between 1 and N.
- :func:`cess`: the conditional ESS of an incremental weight ``v_i`` given the previous normalised
  weights ``W_i`` (Zhou, Johansen and Aston 2016): ``N (Σ W_i v_i)² / Σ W_i v_i²``; equal to
  :func:`ess` of ``v`` when ``W`` is uniform.
- Resampling (Douc, Cappé and Moulines 2005): :func:`multinomial_resample`, :func:`stratified_resample`,
  :func:`systematic_resample`, :func:`residual_resample`, each returning N ancestor indices whose counts
  ``N_i`` satisfy ``E[N_i] = N W_i`` (unbiased); :func:`resample` dispatches by name.
- Brownian bridges: :func:`sample_brownian_bridge` draws a bridge with covariance rate ``Λ`` from ``x0``
  at time 0 to ``y`` at time ``T`` on a grid; :func:`bridge_path_integral` integrates a function along
  it (trapezoid rule); :func:`bridge_quadratic_log_expectation` gives the exact
  ``log E[exp(-½ ∫₀ᵀ (X_t - μ)ᵀ A (X_t - μ) dt)]`` over the bridge, the closed form that makes the
  Fusion path weight of a Gaussian target exact.

The closed form: for a standard Brownian bridge ``W`` from ``a`` to ``b`` on ``[0, T]`` and ``k ≥ 0``,

    E[exp(-(k²/2) ∫₀ᵀ W_t² dt)] = sqrt(kT / sinh kT) · exp(-k((a² + b²) cosh kT - 2ab) / (2 sinh kT)
                                                        + (a - b)² / (2T)),

the ratio of the Mehler kernel (the Feynman-Kac kernel of ``-½Δ + ½k²x²``) to the heat kernel. In
``d`` dimensions, ``X = μ + Λ^{1/2} W`` and ``Λ^{1/2} A Λ^{1/2} = Q diag(k_j²) Qᵀ`` split the functional
into ``d`` independent one-dimensional ones.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = ["normalise_log_weights", "ess", "cess", "multinomial_resample", "stratified_resample",
           "systematic_resample", "residual_resample", "resample", "RESAMPLERS", "sample_brownian_bridge",
           "bridge_path_integral", "bridge_quadratic_log_expectation", "bridge_quadratic_log_expectation_1d"]


def _log_weights(log_weights) -> np.ndarray:
    lw = np.asarray(log_weights, dtype=float)
    if lw.ndim != 1 or lw.size == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D array, got shape {lw.shape}")
    if np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise ValueError("log_weights contain NaN or +inf")
    if np.all(lw == -np.inf):
        raise ValueError("every weight is zero: the particle set has collapsed")
    return lw


def normalise_log_weights(log_weights) -> np.ndarray:
    """``log W_i = log w_i - logsumexp(log w)``: normalised weights in log space (they sum to 1)."""
    lw = _log_weights(log_weights)
    return lw - logsumexp(lw)


def ess(log_weights) -> float:
    """Effective sample size ``(Σ w_i)² / Σ w_i² = 1 / Σ W_i²`` from unnormalised log weights."""
    lw = normalise_log_weights(log_weights)
    return float(np.exp(-logsumexp(2.0 * lw)))


def cess(log_previous, log_incremental) -> float:
    """Conditional ESS ``N (Σ W_i v_i)² / Σ W_i v_i²`` (Zhou, Johansen and Aston 2016, eq. 2.3).

    ``log_previous``: log weights before the step (normalised here); ``log_incremental``: log of the
    incremental weights ``v_i``. Lies in ``[1, N]``; equals :func:`ess` of ``v`` when the previous
    weights are uniform.
    """
    lW = normalise_log_weights(log_previous)
    lv = _log_weights(log_incremental)
    if lv.shape != lW.shape:
        raise ValueError(f"log_previous and log_incremental differ in shape: {lW.shape} vs {lv.shape}")
    lv = lv - lv.max()
    return float(lW.size * np.exp(2.0 * logsumexp(lW + lv) - logsumexp(lW + 2.0 * lv)))


def _weights_and_n(log_weights, n):
    weights = np.exp(normalise_log_weights(log_weights))
    n = weights.size if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of draws must be a positive integer, got {n!r}")
    return weights, int(n)


def _inverse_cdf(weights: np.ndarray, sorted_uniforms: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0  # guard against round-off: every uniform in [0, 1) finds an index
    return np.searchsorted(cumulative, sorted_uniforms, side="right")


def multinomial_resample(log_weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """``n`` i.i.d. draws from the categorical distribution ``W`` (counts ~ Multinomial(n, W))."""
    weights, n = _weights_and_n(log_weights, n)
    return _inverse_cdf(weights, np.sort(rng.random(n)))


def stratified_resample(log_weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """One uniform per stratum: ``u_i = (i + U_i) / n`` with independent ``U_i ~ U[0, 1)``."""
    weights, n = _weights_and_n(log_weights, n)
    return _inverse_cdf(weights, (np.arange(n) + rng.random(n)) / n)


def systematic_resample(log_weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """One shared uniform: ``u_i = (i + U) / n``; each count is ``floor(n W_i)`` or ``ceil(n W_i)``."""
    weights, n = _weights_and_n(log_weights, n)
    return _inverse_cdf(weights, (np.arange(n) + rng.random()) / n)


def residual_resample(log_weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """``floor(n W_i)`` copies of each particle, the remaining ``R`` by multinomial draws on the residuals.

    The residual weights are ``(n W_i - floor(n W_i)) / R`` (Liu and Chen 1998).
    """
    weights, n = _weights_and_n(log_weights, n)
    expected = n * weights
    counts = np.floor(expected).astype(np.int64)
    remaining = n - int(counts.sum())
    if remaining > 0:
        residual = np.clip(expected - counts, 0.0, None)
        residual /= residual.sum()
        counts += rng.multinomial(remaining, residual)
    return np.repeat(np.arange(weights.size), counts)


RESAMPLERS = {"multinomial": multinomial_resample, "stratified": stratified_resample,
              "systematic": systematic_resample, "residual": residual_resample}


def resample(log_weights, rng: np.random.Generator, scheme: str = "residual", n: int | None = None) -> np.ndarray:
    """Ancestor indices by ``scheme`` (one of :data:`RESAMPLERS`)."""
    if scheme not in RESAMPLERS:
        raise ValueError(f"unknown resampling scheme {scheme!r}; use one of {sorted(RESAMPLERS)}")
    return RESAMPLERS[scheme](log_weights, rng, n)


def _as_points(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d) or (n,), got {x.shape}")
    return x


def _check_T(T: float) -> float:
    if not np.isfinite(T) or T <= 0:
        raise ValueError(f"the bridge time T must be positive, got {T!r}")
    return float(T)


def sample_brownian_bridge(x0, y, T: float, times, rng: np.random.Generator, cov=None) -> np.ndarray:
    """Brownian bridges with covariance rate ``Λ = cov`` from ``x0`` (time 0) to ``y`` (time ``T``).

    ``x0``, ``y``: (n, d) (or (n,)); ``times``: increasing, within ``[0, T]``. Returns (n, len(times), d).
    Sequentially, ``X_{s} | X_{t} ~ N(X_t + (s-t)/(T-t) (y - X_t), (s-t)(T-s)/(T-t) Λ)`` for ``t < s``.
    """
    T = _check_T(T)
    x0, y = _as_points(x0, "x0"), _as_points(y, "y")
    if x0.shape != y.shape:
        raise ValueError(f"x0 and y differ in shape: {x0.shape} vs {y.shape}")
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or np.any(np.diff(times) < 0) or times[0] < 0 or times[-1] > T:
        raise ValueError("times must be a non-decreasing 1-D grid within [0, T]")
    n, d = x0.shape
    root = np.eye(d) if cov is None else np.linalg.cholesky(np.atleast_2d(np.asarray(cov, dtype=float)))
    path = np.empty((n, times.size, d))
    current, t = x0.copy(), 0.0
    for j, s in enumerate(times):
        if s >= T:
            current = y.copy()
        elif s > t:
            mean = current + (s - t) / (T - t) * (y - current)
            sd = np.sqrt((s - t) * (T - s) / (T - t))
            current = mean + sd * rng.standard_normal((n, d)) @ root.T
        path[:, j] = current
        t = s
    return path


def bridge_path_integral(func, x0, y, T: float, n_steps: int, rng: np.random.Generator, cov=None) -> np.ndarray:
    """``∫₀ᵀ func(X_t) dt`` along one sampled bridge per row, by the trapezoid rule on ``n_steps`` intervals.

    ``func`` maps (n, d) points to (n,) values. A discretisation of the path functional: its
    expectation over bridges converges to the exact one as ``n_steps`` grows (bias O(T/n_steps)).
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    times = np.linspace(0.0, _check_T(T), n_steps + 1)
    path = sample_brownian_bridge(x0, y, T, times, rng, cov)
    values = np.stack([np.asarray(func(path[:, j]), dtype=float) for j in range(times.size)], axis=1)
    return np.trapezoid(values, times, axis=1)


def _log_sinh(x: np.ndarray) -> np.ndarray:
    return x + np.log1p(-np.exp(-2.0 * x)) - np.log(2.0)


def bridge_quadratic_log_expectation_1d(a, b, k, T: float) -> np.ndarray:
    """``log E[exp(-(k²/2) ∫₀ᵀ W_t² dt)]`` for a standard Brownian bridge ``W`` from ``a`` to ``b``.

    Exact (module docstring); ``k = 0`` gives 0. Broadcasts over ``a``, ``b``, ``k``.
    """
    T = _check_T(T)
    a, b, k = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, k)))
    if np.any(k < 0):
        raise ValueError("k must be non-negative")
    small = k * T < 1e-6
    x = np.where(small, 1.0, k * T)  # placeholder where the k -> 0 limits are used
    # k coth(kT) and k / sinh(kT), with their k -> 0 limits 1/T
    k_coth = np.where(small, 1.0 / T, k / np.tanh(x))
    k_csch = np.where(small, 1.0 / T, k * np.exp(-_log_sinh(x)))
    log_prefactor = np.where(small, 0.0, 0.5 * (np.log(x) - _log_sinh(x)))
    out = log_prefactor - 0.5 * ((a * a + b * b) * k_coth - 2.0 * a * b * k_csch) + (a - b) ** 2 / (2.0 * T)
    return out


def bridge_quadratic_log_expectation(x0, y, T: float, mean, A, cov=None) -> np.ndarray:
    """``log E[exp(-½ ∫₀ᵀ (X_t - μ)ᵀ A (X_t - μ) dt)]`` over bridges with covariance rate ``Λ = cov``.

    ``x0``, ``y``: (n, d) start and end points; ``mean``: (d,); ``A``: (d, d) symmetric positive
    semi-definite. Exact: ``X = μ + Λ^{1/2} W``, ``Λ^{1/2} A Λ^{1/2} = Q diag(k²) Qᵀ``, and the rotated
    coordinates ``Qᵀ W`` are independent standard bridges. Returns (n,).
    """
    x0, y = _as_points(x0, "x0"), _as_points(y, "y")
    d = x0.shape[1]
    A = np.atleast_2d(np.asarray(A, dtype=float))
    if A.shape != (d, d):
        raise ValueError(f"A must be ({d}, {d}), got {A.shape}")
    cov = np.eye(d) if cov is None else np.atleast_2d(np.asarray(cov, dtype=float))
    evals, evecs = np.linalg.eigh(cov)
    if np.any(evals <= 0):
        raise ValueError("cov must be positive definite")
    root = evecs @ np.diag(np.sqrt(evals)) @ evecs.T
    inv_root = evecs @ np.diag(1.0 / np.sqrt(evals)) @ evecs.T
    k2, Q = np.linalg.eigh(root @ A @ root)
    k = np.sqrt(np.clip(k2, 0.0, None))
    mean = np.asarray(mean, dtype=float).reshape(1, d)
    a = (x0 - mean) @ inv_root @ Q
    b = (y - mean) @ inv_root @ Q
    return bridge_quadratic_log_expectation_1d(a, b, k[None, :], T).sum(axis=1)
