"""ℓp sensitivities, Lewis weights and row sampling for ℓp regression (Woodruff & Yasuda, ICML 2023).

**Sensitivities** (Definition 1.1 of the paper). For ``A ∈ ℝ^{n×d}`` and ``p ≥ 1`` the ℓp sensitivity of
row ``i`` is

    σ_i = sup_{x: Ax ≠ 0} |a_iᵀx|^p / ‖Ax‖_p^p,           𝔖 = Σ_i σ_i   (total sensitivity).

The ratio is scale-invariant in ``x``, so fixing ``a_iᵀx = 1`` gives one convex program per row,

    σ_i = 1 / min{ ‖Ax‖_p^p : a_iᵀx = 1 },

which :func:`lp_sensitivities` solves with one parametrised cvxpy problem (``a_i`` is the parameter;
the problem is compiled once and re-solved for every row) through :func:`common.convex.solve`. Known
facts (Section 4 of the paper and [CD21]): ``σ_i ≤ 1``; at ``p = 2`` the sensitivities are the leverage
scores and ``𝔖 = rank A``; for ``p < 2``, ``d^{p/2} ≤ 𝔖 ≤ d``; for ``p > 2``, ``𝔖 ≤ d^{p/2}``.
For ``p > 2`` also ``σ_i ≥ w_i`` (the Lewis weight below), hence ``𝔖 ≥ Σ w_i = d``: with
``M = AᵀW^{1−2/p}A`` and ``x = M^{-1}a_i``, ``a_iᵀx = w_i^{2/p}``, and Cauchy–Schwarz in the ``M^{-1}`` inner
product gives ``|a_jᵀx| ≤ (w_i w_j)^{1/p}``, so ``‖Ax‖_p^p ≤ w_i^{1−2/p} Σ_j w_j^{1−2/p}(a_jᵀx)² =
w_i^{1−2/p} a_iᵀM^{-1}a_i = w_i`` and ``σ_i ≥ w_i²/w_i``. The solver is Clarabel only (:data:`SOLVERS`):
a silent fallback to a first-order solver (SCS, ~1e-4 accurate) would bias σ.

**Lewis weights** (Cohen & Peng 2015). The ℓp Lewis weights are the unique ``w > 0`` with
``w_i = τ_i(W^{1/2 − 1/p} A)``, i.e. ``w_i = (a_iᵀ (Aᵀ W^{1 − 2/p} A)^{-1} a_i)^{p/2}``; for ``p < 4``
the map on the right is a contraction and the fixed-point iteration :func:`lewis_weights` converges.
They sum to ``rank A`` and equal the leverage scores at ``p = 2``.

**Sampling** (Section 1 and 7). Given importance scores ``s_i`` (sensitivities, Lewis weights, leverage
scores to the power ``p/2`` — "root leverage" sampling for ``p < 2`` — or uniform), we draw ``m`` rows
i.i.d. with probability ``q_i = s_i / Σ s`` and rescale a drawn row by ``(m q_i)^{-1/p}``, so that
``E ‖SAx‖_p^p = ‖Ax‖_p^p`` for every ``x``. Every sampler is fed the same uniform variates (inverse-CDF
draws: common random numbers), so per-seed comparisons are paired.

**ℓp regression proxy.** For ``Ā = [A  b]`` the subsampled problem ``x̂ = argmin ‖S(Ax − b)‖_p`` is solved
exactly (a convex program) and judged by the relative excess cost

    err = ‖Ax̂ − b‖_p^p / min_x ‖Ax − b‖_p^p − 1 ≥ 0.

An ε subspace embedding of ``Ā`` guarantees ``err ≤ (1+ε)/(1−ε) − 1``; the converse does not hold, so err is
a weaker (easier) proxy of the paper's subspace-embedding distortion. The sample size a sampler needs,
``m*(η)``, is where the 90th percentile of err over seeds crosses ``η`` (log-log interpolation on a grid
of ``m``; :func:`required_sample_size`).

**Instances with controlled 𝔖 at fixed d** (:func:`spiky_instance`): Gaussian rows, of which ``k`` are
replaced by "spikes" ``λ e_j`` (``j`` round robin over the ``d`` coordinates) whose mass ``λ^p = c·n``
dominates their column; each spike has a sensitivity near 1, so 𝔖 rises from the Gaussian value
(about ``d^{p/2}`` up to a constant) with ``k``. Uniform sampling misses spikes; sensitivity and Lewis
sampling do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from common.convex import solve

SAMPLERS = ("uniform", "sensitivity", "lewis", "root_leverage")
SOLVERS = ("CLARABEL",)  # interior point, ~1e-8; no fallback to SCS (a ~1e-4 optimum would bias σ and err)
ERR_FLOOR = 1e-6  # relative excess costs below this are solver round-off (Clarabel tolerances ~1e-8)


def _check_matrix(A) -> np.ndarray:
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
        raise ValueError(f"A must be a non-empty 2-D array, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError("A must be finite")
    return A


def _check_p(p: float) -> float:
    p = float(p)
    if not p >= 1:
        raise ValueError(f"p must be at least 1, got {p}")
    return p


def _lp_objective(expr, p: float):
    """‖expr‖_p as a DCP atom (its minimiser is that of ‖expr‖_p^p)."""
    return cp.norm1(expr) if p == 1 else cp.pnorm(expr, p)


def _solve(problem: cp.Problem):
    """Solve with Clarabel only; raise (never fall back) when it cannot certify an optimum."""
    result = solve(problem, SOLVERS)
    if result.solver != "CLARABEL":  # solve() tries only SOLVERS; kept as an explicit guard
        raise RuntimeError(f"expected Clarabel, the optimum came from {result.solver}")
    return result


def lp_sensitivities(A, p: float) -> np.ndarray:
    """σ_i = 1 / min{‖Ax‖_p^p : a_iᵀx = 1} for every row (0 for a zero row), by convex programs.

    One parametrised problem (``a_i`` a cvxpy Parameter) is compiled once and re-solved for each row.
    """
    A, p = _check_matrix(A), _check_p(p)
    n, d = A.shape
    x, a = cp.Variable(d), cp.Parameter(d)
    problem = cp.Problem(cp.Minimize(_lp_objective(A @ x, p)), [a @ x == 1])
    sigma = np.zeros(n)
    for i in range(n):
        if not np.any(A[i]):
            continue
        a.value = A[i]
        norm = _solve(problem).value  # min ‖Ax‖_p subject to a_iᵀx = 1
        sigma[i] = 1.0 / norm**p
    return sigma


def l1_sensitivities_linprog(A) -> np.ndarray:
    """ℓ1 sensitivities by scipy's HiGHS LP solver (a cross-check of :func:`lp_sensitivities` at p = 1).

    min Σ t_j  s.t.  −t ≤ Ax ≤ t,  a_iᵀx = 1, with variables (x, t).
    """
    from scipy.optimize import linprog

    A = _check_matrix(A)
    n, d = A.shape
    c = np.concatenate([np.zeros(d), np.ones(n)])
    A_ub = np.block([[A, -np.eye(n)], [-A, -np.eye(n)]])
    b_ub = np.zeros(2 * n)
    bounds = [(None, None)] * d + [(0, None)] * n
    sigma = np.zeros(n)
    for i in range(n):
        if not np.any(A[i]):
            continue
        A_eq = np.concatenate([A[i], np.zeros(n)])[None, :]
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"linprog failed on row {i}: {res.message}")
        sigma[i] = 1.0 / res.fun
    return sigma


def leverage_scores(A) -> np.ndarray:
    """τ_i = a_iᵀ(AᵀA)^+ a_i = ‖Q_i‖² for a thin QR (or SVD) basis Q of the column space."""
    A = _check_matrix(A)
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    rank = int(np.sum(s > s[0] * max(A.shape) * np.finfo(float).eps)) if s[0] > 0 else 0
    return np.sum(U[:, :rank] ** 2, axis=1)


def lewis_weights(A, p: float, *, max_iter: int = 500, tol: float = 1e-10) -> np.ndarray:
    """ℓp Lewis weights by the Cohen–Peng fixed point w_i ← (a_iᵀ(AᵀW^{1−2/p}A)^{-1}a_i)^{p/2} (p < 4).

    Starts from w = 1; stops when max_i |w_i^{new} − w_i| / w_i < tol. Raises if it does not converge.
    """
    A, p = _check_matrix(A), _check_p(p)
    if p >= 4:
        raise ValueError(f"the fixed-point iteration is a contraction only for p < 4, got p = {p}")
    w = np.ones(A.shape[0])
    for _ in range(max_iter):
        scaled = A * (w ** (0.5 - 1.0 / p))[:, None]  # W^{1/2−1/p} A
        new = np.maximum(leverage_scores(scaled), 0.0) ** (p / 2)  # τ_i(W^{1/2−1/p}A) = w_i^{1−2/p} a_iᵀ(·)^{-1} a_i
        new = new * w ** ((1 - 2.0 / p) * (-p / 2))  # remove the row scaling: (a_iᵀ M^{-1} a_i)^{p/2}
        if np.max(np.abs(new - w) / np.maximum(w, 1e-300)) < tol:
            return new
        w = new
    raise RuntimeError(f"Lewis weights did not converge in {max_iter} iterations (p = {p})")


def sampling_scores(A, p: float, sampler: str, *, sensitivities=None) -> np.ndarray:
    """Unnormalised importance scores of a sampler: uniform, sensitivity, lewis, root_leverage (τ^{p/2})."""
    A, p = _check_matrix(A), _check_p(p)
    if sampler == "uniform":
        return np.ones(A.shape[0])
    if sampler == "sensitivity":
        return lp_sensitivities(A, p) if sensitivities is None else np.asarray(sensitivities, dtype=float)
    if sampler == "lewis":
        return lewis_weights(A, p)
    if sampler == "root_leverage":
        return leverage_scores(A) ** (p / 2)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def total_variation(scores_a, scores_b) -> float:
    """Total-variation distance ½ Σ |q_a − q_b| between the sampling distributions of two score vectors."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two score vectors of the same length, got shapes {a.shape} and {b.shape}")
    if np.any(a < 0) or np.any(b < 0) or not (a.sum() > 0 and b.sum() > 0):
        raise ValueError("scores must be non-negative with a positive sum")
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def draw_rows(scores, m: int, uniforms) -> tuple[np.ndarray, np.ndarray]:
    """m i.i.d. rows with q = scores / Σ scores by inverse CDF of ``uniforms`` (length m).

    Returns (indices, row scale factors (m q_i)^{-1}); a row is multiplied by the factor to the power 1/p.
    """
    scores = np.asarray(scores, dtype=float)
    if np.any(scores < 0) or not np.sum(scores) > 0:
        raise ValueError("scores must be non-negative with a positive sum")
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    uniforms = np.asarray(uniforms, dtype=float)
    if uniforms.shape != (int(m),):
        raise ValueError(f"need exactly m = {m} uniforms, got shape {uniforms.shape}")
    q = scores / scores.sum()
    cdf = np.cumsum(q)
    idx = np.minimum(np.searchsorted(cdf, uniforms * cdf[-1], side="right"), len(q) - 1)
    while np.any(q[idx] == 0):  # a zero-probability row is never drawn (float ties at the CDF's flats)
        bad = q[idx] == 0
        idx[bad] = np.minimum(idx[bad] + 1, len(q) - 1)
    return idx, 1.0 / (m * q[idx])


class LpRegression:
    """min_x ‖M x − c‖_p for M of a fixed shape (m, d): compiled once, re-solved with new data."""

    def __init__(self, m: int, d: int, p: float):
        self.p = _check_p(p)
        self.M, self.c, self.x = cp.Parameter((m, d)), cp.Parameter(m), cp.Variable(d)
        self.problem = cp.Problem(cp.Minimize(_lp_objective(self.M @ self.x - self.c, self.p)))

    def __call__(self, M, c) -> np.ndarray:
        self.M.value, self.c.value = np.asarray(M, float), np.asarray(c, float)
        _solve(self.problem)
        return np.array(self.x.value)


def lp_cost(A, b, x, p: float) -> float:
    """‖Ax − b‖_p^p."""
    return float(np.sum(np.abs(np.asarray(A) @ x - b) ** p))


def lp_regression(A, b, p: float) -> np.ndarray:
    """The full-data optimum argmin_x ‖Ax − b‖_p (a convex program)."""
    A = _check_matrix(A)
    return LpRegression(A.shape[0], A.shape[1], p)(A, b)


@dataclass(frozen=True)
class Instance:
    A: np.ndarray  # n × d design
    b: np.ndarray  # n targets
    p: float
    k: int  # number of planted spike rows

    @property
    def augmented(self) -> np.ndarray:
        """Ā = [A b]: the subspace whose embedding makes every regression cost (1 ± ε)-accurate."""
        return np.column_stack([self.A, self.b])


def spiky_instance(n: int, d: int, k: int, p: float, *, spike_mass: float = 10.0, noise: float = 1.0,
                   random_state=None) -> Instance:
    """Gaussian design with k rows replaced by spikes λ e_{i mod d}, λ^p = spike_mass · n.

    b = A x₀ + noise·g with x₀, g standard normal. k = 0 is the plain Gaussian design (small 𝔖).
    """
    p = _check_p(p)
    if not (n >= 1 and d >= 1 and 0 <= k <= n):
        raise ValueError(f"need n, d >= 1 and 0 <= k <= n, got n={n}, d={d}, k={k}")
    rng = np.random.default_rng(random_state)
    A = rng.standard_normal((n, d))
    lam = (spike_mass * n) ** (1.0 / p)
    for i in range(k):
        A[i] = 0.0
        A[i, i % d] = lam
    x0 = rng.standard_normal(d)
    b = A @ x0 + noise * rng.standard_normal(n)
    return Instance(A, b, p, k)


def relative_errors(instance: Instance, scores, ms, uniforms) -> np.ndarray:
    """err[s, j] of the subsampled solution with m = ms[j] draws from ``scores`` and variates uniforms[s].

    ``uniforms`` has shape (n_seeds, max(ms)); the first m variates of a seed are used at size m.
    """
    A, b, p = instance.A, instance.b, instance.p
    opt = lp_cost(A, b, lp_regression(A, b, p), p)
    uniforms = np.asarray(uniforms, dtype=float)
    errs = np.empty((uniforms.shape[0], len(ms)))
    for j, m in enumerate(ms):
        reg = LpRegression(int(m), A.shape[1], p)
        for s in range(uniforms.shape[0]):
            idx, scale = draw_rows(scores, int(m), uniforms[s, : int(m)])
            r = scale ** (1.0 / p)
            x = reg(A[idx] * r[:, None], b[idx] * r)
            err = lp_cost(A, b, x, p) / opt - 1.0
            errs[s, j] = err if err > ERR_FLOOR else 0.0  # below the solvers' accuracy: exact
    return errs


def required_sample_size(ms, errs, eta: float, *, quantile: float = 0.9) -> float:
    """m*(η): where the ``quantile`` of err over seeds first falls to η (log-log interpolation on ms).

    ``errs`` has shape (n_seeds, len(ms)). Returns ms[0] if already met at the smallest m, and inf if never
    met on the grid. When the quantile at the first passing grid point ms[j] is below :data:`ERR_FLOOR`
    (the errors there are exactly 0, common at p = 1 where sub-problems recover the optimum), log err has
    no finite value to interpolate to, and m* is the grid bound ms[j] (conservative: the crossing lies in
    (ms[j−1], ms[j]]). Interpolating towards log(0) would instead put m* at ms[j−1], where the quantile
    still fails.
    """
    ms = np.asarray(ms, dtype=float)
    if ms.ndim != 1 or ms.size < 1 or np.any(np.diff(ms) <= 0):
        raise ValueError("ms must be increasing")
    if not eta > 0:
        raise ValueError("eta must be positive")
    qs = np.quantile(np.asarray(errs, dtype=float), quantile, axis=0)
    ok = qs <= eta
    if not np.any(ok):
        return float("inf")
    j = int(np.argmax(ok))
    if j == 0:
        return float(ms[0])
    if qs[j] < ERR_FLOOR:
        return float(ms[j])
    lo_e, hi_e = np.log(qs[j - 1]), np.log(qs[j])
    t = (lo_e - np.log(eta)) / (lo_e - hi_e) if lo_e != hi_e else 1.0
    return float(np.exp(np.log(ms[j - 1]) + t * (np.log(ms[j]) - np.log(ms[j - 1]))))


def samplers_for(p: float) -> tuple[str, ...]:
    """The samplers compared at ``p``: root leverage is the paper's p < 2 algorithm only."""
    return SAMPLERS if p < 2 else tuple(s for s in SAMPLERS if s != "root_leverage")


def run_family(n: int, d: int, k: int, p: float, ms, n_seeds: int, *, spike_mass: float = 10.0,
               random_state=None) -> dict:
    """One instance of the spiky family: its sensitivities, 𝔖, Lewis weights and every sampler's errors.

    The instance is drawn from ``random_state``; the sampling variates (shared by all samplers, shape
    (n_seeds, max ms)) from a child stream. Returns a dict with ``total_sensitivity``, ``lewis_total``,
    ``sigma_max``, ``sensitivities`` and ``lewis_weights`` (per row), ``tv_sens_lewis`` (total variation
    between the two sampling distributions), ``errors[sampler]`` (n_seeds × len(ms)) and
    ``log_ratio[sampler]``: per seed, the mean over the m-grid of log(1 + err) (the log approximation ratio
    of the cost).
    """
    rng = np.random.default_rng(random_state)
    instance = spiky_instance(n, d, k, p, spike_mass=spike_mass, random_state=rng)
    Ab = instance.augmented
    sigma = lp_sensitivities(Ab, p)
    uniforms = rng.random((n_seeds, int(max(ms))))
    w = lewis_weights(Ab, p)
    out = {"k": k, "p": p, "total_sensitivity": float(sigma.sum()), "sigma_max": float(sigma.max()),
           "lewis_total": float(w.sum()), "dim": Ab.shape[1], "sensitivities": sigma, "lewis_weights": w,
           "tv_sens_lewis": total_variation(sigma, w), "errors": {}, "log_ratio": {}}
    for sampler in samplers_for(p):
        scores = sampling_scores(Ab, p, sampler, sensitivities=sigma)
        errs = relative_errors(instance, scores, ms, uniforms)
        out["errors"][sampler] = errs
        out["log_ratio"][sampler] = np.log1p(errs).mean(axis=1)
    return out


def required_sample_size_interval(ms, errs, eta: float, *, quantile: float = 0.9, confidence: float = 0.95,
                                  n_resamples: int = 1000, random_state=None) -> tuple[float, float]:
    """Percentile bootstrap over seeds (rows of ``errs``) of :func:`required_sample_size`.

    Returns (lo, hi); inf where the resampled quantile never reaches η. Uses the empirical order
    statistics ("lower"/"higher"), never interpolating between infinite values. With few seeds a
    percentile bootstrap under-covers: read it as a rough interval.
    """
    errs = np.asarray(errs, dtype=float)
    if errs.ndim != 2 or errs.shape[0] < 2:
        raise ValueError("errs must have shape (n_seeds >= 2, len(ms))")
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, errs.shape[0], size=(n_resamples, errs.shape[0]))
    boot = np.array([required_sample_size(ms, errs[i], eta, quantile=quantile) for i in idx])
    alpha = (1 - confidence) / 2
    return float(np.quantile(boot, alpha, method="lower")), float(np.quantile(boot, 1 - alpha, method="higher"))


def slope_over_reached(total_sensitivities, mstars) -> tuple[object, int]:
    """Log-log slope of m* against 𝔖 over the families whose m* was reached on the grid.

    A family whose quantile never reaches η (m* = inf, right-censored at the grid's top) is excluded, not
    entered at a sentinel value; returns (``common.stats.Interval`` or None when fewer than 3 families
    remain, the number of censored families excluded).
    """
    from common.stats import loglog_slope

    x = np.asarray(total_sensitivities, dtype=float)
    y = np.asarray(mstars, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("need one m* per total sensitivity")
    reached = np.isfinite(y)
    n_censored = int(np.sum(~reached))
    if np.sum(reached) < 3:
        return None, n_censored
    return loglog_slope(x[reached], y[reached]), n_censored
