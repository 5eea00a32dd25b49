"""Convex training of two-layer ReLU networks with ADMM (Bai, Gautam and Sojoudi, arXiv 2201.01965).

A two-layer ReLU network ``f(X) = sum_j (X u_j)_+ alpha_j`` trained with squared loss and weight decay,

    min_{u, alpha}  1/2 || sum_j (X u_j)_+ alpha_j - y ||^2 + beta/2 sum_j (||u_j||^2 + alpha_j^2),

is non-convex, but (Pilanci and Ergen 2020) it has the same optimum as the convex program, one pair of
weight vectors ``(v_i, w_i)`` per activation pattern ``D_i = diag(1[X h >= 0])`` of the data,

    min_{v, w}  1/2 || sum_i D_i X (v_i - w_i) - y ||^2 + beta sum_i (||v_i||_2 + ||w_i||_2)      (2.3)
    s.t.        (2 D_i - I) X v_i >= 0,   (2 D_i - I) X w_i >= 0,

as soon as every pattern is included and the width is large enough. Enumerating all patterns is
exponential in the rank of X, so the paper (like Pilanci and Ergen) *samples* ``P_s`` patterns from
random Gaussian directions ``h``: the sampled program (the "approximate formulation") is an upper bound
on the exact one and its solution is still a ReLU network (neuron recovery, :func:`recover_network`).

**ADMM (Algorithm 3.1).** Stack ``u = (v_1..v_P, w_1..w_P)``; write ``F u = sum_i D_i X (v_i - w_i)``
and ``G u = ((2D_i - I) X v_i, (2D_i - I) X w_i)_i``. With a copy ``v`` of ``u`` (which carries the group
norm) and a slack ``s = G u >= 0``, scaled duals ``lambda, nu`` and penalty ``rho``, one iteration is

    u   <- (I + F^T F / rho + G^T G)^{-1} (F^T y / rho + v - lambda + G^T (s - nu))       (u-update)
    v_i <- (1 - beta / (rho ||u_i + lambda_i||))_+ (u_i + lambda_i)                      (group shrinkage)
    s   <- (G u + nu)_+                                                                   (projection)
    lambda <- lambda + gamma_a / rho (u - v),   nu <- nu + gamma_a / rho (G u - s)         (dual ascent)

Because ``(2D_i - I)^2 = I``, ``G^T G = I_{2P} (x) X^T X`` is block diagonal, so the system matrix does not
depend on the iterate: it is factorised once (Cholesky) and each iteration costs two triangular solves
and ``O(n d P)`` products: the per-iteration cost is quadratic in the problem size, not cubic.

Everything here is NumPy/SciPy (ADMM, patterns, recovery, the non-convex Adam baseline) and cvxpy
through :mod:`common.convex` (the reference optimum).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg
from scipy import stats as sps

from common.stats import Interval

__all__ = [
    "BinaryData", "load_binary", "sample_patterns", "convex_objective", "convex_predict_train",
    "network_predict", "recover_network", "reference_optimum", "ADMMResult", "admm", "semilog_slope",
    "nonconvex_objective", "train_nonconvex", "network_patterns", "accuracy", "enumerate_patterns",
    "arrangement_patterns_2d", "rate_diagnostics", "first_stop",
]


# ----------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class BinaryData:
    """Standardised features with a bias column appended (last column = 1) and labels in {-1, +1}."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_binary(name: str, *, n_train: int | None = None, n_components: int | None = 20,
                test_fraction: float = 0.25, random_state: int | None = 0) -> BinaryData:
    """A binary task from scikit-learn's bundled data (offline), as whitened features plus a bias column.

    ``breast_cancer``: malignant (+1) against benign (-1), 30 features. ``digits``: even (+1) against odd
    (-1) digits, 64 pixel features. The training split (subsampled to ``n_train``) is centred and
    projected on its top ``n_components`` principal directions, each divided by its singular value, so
    the feature columns are orthonormal on the training set (``X^T X = I``); the bias column is
    ``1/sqrt(n)`` (unit norm too). Test data get the same map. ``n_components=None`` keeps the
    standardised features (z-scores divided by ``sqrt(n)``) instead. Whitening is not a rescaling: it is a
    linear change of coordinates that changes the group-norm regulariser (``||v_i||_2`` is measured in the
    whitened coordinates, a different penalty on the original features), and keeping ``n_components`` <
    the rank truncates the data (breast_cancer 30 -> 20 directions, digits 64 -> 20 at the default). Only
    a common scalar factor on X could be absorbed into beta.
    """
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    if name == "breast_cancer":
        data = load_breast_cancer()
        X, y = data.data, np.where(data.target == 0, 1.0, -1.0)
    elif name == "digits":
        data = load_digits()
        X, y = data.data, np.where(data.target % 2 == 0, 1.0, -1.0)
    else:
        raise ValueError(f"unknown dataset {name!r}: use 'breast_cancer' or 'digits'")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=random_state,
                                              stratify=y)
    if n_train is not None:
        if not 0 < n_train <= len(y_tr):
            raise ValueError(f"n_train must be in [1, {len(y_tr)}], got {n_train}")
        X_tr, y_tr = X_tr[:n_train], y_tr[:n_train]
    n = len(y_tr)
    mean = X_tr.mean(0)
    if n_components is None:
        std = X_tr.std(0)
        std[std == 0] = 1.0
        T = np.diag(1.0 / (std * math.sqrt(n)))
    else:
        _, sv, Vt = np.linalg.svd(X_tr - mean, full_matrices=False)
        rank = int(np.sum(sv > 1e-8 * sv[0]))
        if not 0 < n_components <= rank:
            raise ValueError(f"n_components must be in [1, {rank}] (the rank), got {n_components}")
        T = Vt[:n_components].T / sv[:n_components]

    def prep(A):
        return np.hstack([(A - mean) @ T, np.full((len(A), 1), 1.0 / math.sqrt(n))])

    return BinaryData(name, prep(X_tr), y_tr, prep(X_te), y_te)


# ------------------------------------------------------------------------------------- the program
def sample_patterns(X: np.ndarray, n_patterns: int, random_state=None, max_draws: int | None = None) -> np.ndarray:
    """``P_s`` distinct activation patterns ``D_i = 1[X h_i >= 0]``, ``h_i ~ N(0, I)``: an (n, P) bool array.

    Duplicates are redrawn (at most ``max_draws`` draws in all, default ``50 P``), so exactly ``P_s``
    distinct patterns come back; the author code instead draws ``P_s`` directions and de-duplicates (fewer
    than ``P_s`` patterns when two draws coincide). The all-zero pattern is dropped (it contributes nothing
    to the fit).
    """
    if n_patterns < 1:
        raise ValueError(f"n_patterns must be >= 1, got {n_patterns}")
    rng = np.random.default_rng(random_state)
    max_draws = 50 * n_patterns if max_draws is None else max_draws
    seen, patterns = set(), []
    for _ in range(max_draws):
        d = X @ rng.standard_normal(X.shape[1]) >= 0
        key = d.tobytes()
        if key in seen or not d.any():
            continue
        seen.add(key)
        patterns.append(d)
        if len(patterns) == n_patterns:
            break
    if len(patterns) < n_patterns:
        raise ValueError(f"only {len(patterns)} distinct patterns in {max_draws} draws")
    return np.stack(patterns, axis=1)


def _unique_columns(P: np.ndarray) -> np.ndarray:
    """The distinct columns of a bool (n, N) array, in a deterministic (byte) order."""
    packed = np.ascontiguousarray(np.packbits(P, axis=0).T)  # (N, ceil(n/8)) bytes per column
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)  # first occurrence of every distinct key, in key order
    return P[:, first]


def enumerate_patterns(X: np.ndarray, n_directions: int, random_state=None, batch: int = 50_000) -> np.ndarray:
    """The distinct non-zero patterns ``1[X h >= 0]`` over ``n_directions`` Gaussian directions, (n, P) bool.

    With enough directions this finds every pattern of the arrangement (the exact program's ``D_i``); a
    pattern whose cone of directions is narrow can be missed, so completeness must be checked (the count
    stable when the directions double, or against :func:`arrangement_patterns_2d` at rank 2).
    """
    if n_directions < 1:
        raise ValueError(f"n_directions must be >= 1, got {n_directions}")
    rng = np.random.default_rng(random_state)
    found = np.zeros((X.shape[0], 0), dtype=bool)
    left = n_directions
    while left > 0:
        m = min(batch, left)
        left -= m
        found = _unique_columns(np.hstack([found, X @ rng.standard_normal((X.shape[1], m)) >= 0]))
    return found[:, found.any(0)]


def arrangement_patterns_2d(X: np.ndarray) -> np.ndarray:
    """All non-zero patterns ``1[X h >= 0]``, ``h`` in the plane, for an (n, 2) ``X``: exact, (n, P) bool.

    The lines ``x_i . h = 0`` cut the circle of directions into arcs on which the pattern is constant; the
    midpoint of every arc gives one pattern. A central arrangement of ``L`` distinct lines in the plane has
    ``2 L`` regions, so the result has ``2 L`` patterns, less the all-zero one when it occurs.
    """
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"need an (n, 2) array, got {X.shape}")
    rows = X[np.linalg.norm(X, axis=1) > 0]
    normal = np.arctan2(rows[:, 1], rows[:, 0])
    if normal.size == 0:
        return np.zeros((X.shape[0], 0), dtype=bool)
    cuts = np.unique(np.mod(np.concatenate([normal + np.pi / 2, normal - np.pi / 2]), 2 * np.pi))
    mids = cuts + np.diff(np.append(cuts, cuts[0] + 2 * np.pi)) / 2
    H = np.vstack([np.cos(mids), np.sin(mids)])
    found = _unique_columns(X @ H >= 0)
    return found[:, found.any(0)]


def _check(X, y, D):
    if X.ndim != 2 or y.shape != (X.shape[0],) or D.ndim != 2 or D.shape[0] != X.shape[0]:
        raise ValueError(f"shapes do not match: X {X.shape}, y {y.shape}, D {D.shape}")


def convex_predict_train(X: np.ndarray, D: np.ndarray, V: np.ndarray, W: np.ndarray) -> np.ndarray:
    """The convex model's output on the training data: ``sum_i D_i X (v_i - w_i)`` (V, W: (P, d))."""
    return np.einsum("np,np->n", D, X @ (V - W).T)


def convex_objective(X, y, D, V, W, beta: float) -> float:
    """Objective (2.3): ``1/2 ||sum_i D_i X (v_i - w_i) - y||^2 + beta sum_i (||v_i|| + ||w_i||)``."""
    _check(X, y, D)
    r = convex_predict_train(X, D, V, W) - y
    return float(0.5 * r @ r + beta * (np.linalg.norm(V, axis=1).sum() + np.linalg.norm(W, axis=1).sum()))


def network_predict(X: np.ndarray, V: np.ndarray, W: np.ndarray) -> np.ndarray:
    """The ReLU network the convex weights define: ``sum_i (X v_i)_+ - (X w_i)_+`` (on any data)."""
    return np.maximum(X @ V.T, 0).sum(1) - np.maximum(X @ W.T, 0).sum(1)


def recover_network(V: np.ndarray, W: np.ndarray, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Neuron recovery: ``u = v_i / sqrt||v_i||``, ``alpha = sqrt||v_i||`` (``-sqrt||w_i||`` for the w_i).

    Returns ``U`` (m, d) and ``alpha`` (m,) of the non-zero groups. If the constraints hold,
    ``sum_j (X u_j)_+ alpha_j`` equals the convex model's output and ``beta/2 sum (||u_j||^2 + alpha_j^2)``
    equals ``beta sum (||v_i|| + ||w_i||)``: the non-convex objective equals (2.3).
    """
    U, alpha = [], []
    for M, sign in ((V, 1.0), (W, -1.0)):
        for row in M:
            r = np.linalg.norm(row)
            if r > tol:
                U.append(row / math.sqrt(r))
                alpha.append(sign * math.sqrt(r))
    d = V.shape[1]
    return (np.array(U).reshape(-1, d), np.array(alpha))


def reference_optimum(X, y, D, beta: float, solvers=("CLARABEL", "SCS")):
    """Solve (2.3) with cvxpy via :func:`common.convex.solve`: ``(ConvexResult, V, W, solver_seconds)``.

    ``solver_seconds`` is the solver's own time (cvxpy's ``solver_stats.solve_time``), without cvxpy's
    compilation, which ``ConvexResult.seconds`` includes: the fair time to compare ADMM with.
    """
    import cvxpy as cp

    from common.convex import solve

    _check(X, y, D)
    n, d = X.shape
    P = D.shape[1]
    V, W = cp.Variable((d, P)), cp.Variable((d, P))
    XV, XW = X @ V, X @ W
    S = 2.0 * D - 1.0
    pred = cp.sum(cp.multiply(D.astype(float), XV - XW), axis=1)
    objective = 0.5 * cp.sum_squares(pred - y) + beta * (cp.sum(cp.norm(V, 2, axis=0)) + cp.sum(cp.norm(W, 2, axis=0)))
    constraints = [cp.multiply(S, XV) >= 0, cp.multiply(S, XW) >= 0]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    result = solve(problem, solvers)
    solver_seconds = problem.solver_stats.solve_time
    solver_seconds = result.seconds if solver_seconds is None else float(solver_seconds)
    return result, np.asarray(V.value).T, np.asarray(W.value).T, solver_seconds


# --------------------------------------------------------------------------------------------- ADMM
@dataclass
class ADMMResult:
    """Final iterates (``V``, ``W``: the shrunk copy ``v`` split in its two halves) and per-iteration history."""

    V: np.ndarray
    W: np.ndarray
    iterations: int
    converged: bool
    history: dict = field(default_factory=dict)  # name -> np.ndarray over iterations 1..K
    setup_seconds: float = 0.0
    iter_seconds: float = 0.0
    final_objective: float = float("nan")  # (2.3) at the last shrunk iterate
    final_violation: float = float("nan")  # ||(G v)_-|| at the last shrunk iterate


def admm(X, y, D, beta: float, *, rho: float = 1.0, gamma_a: float | None = None, max_iter: int = 500,
         eps_abs: float = 0.0, eps_rel: float = 0.0, stop: bool = True, X_test=None, y_test=None,
         eval_at=None, diagnostics: bool = True) -> ADMMResult:
    """Algorithm 3.1 for (2.3) with squared loss (updates in the module docstring).

    ``gamma_a`` is the dual step (the dual variables move by ``gamma_a / rho`` times the residual); the
    default ``gamma_a = rho`` is the standard scaled ADMM step of 1. Stops after ``max_iter`` iterations
    or, when ``eps_abs`` or ``eps_rel`` is positive, at Boyd et al.'s (2011, Sec. 3.3.1) criterion
    ``||r|| <= sqrt(p) eps_abs + eps_rel max(||A x||, ||B z||)`` and ``||s|| <= sqrt(q) eps_abs + eps_rel
    rho ||A^T y||`` with ``A = [I; G]``. With ``stop=False`` the criterion is only evaluated (history
    ``tolerance_met``) and the run goes on to ``max_iter``: :func:`first_stop` then gives the iteration a
    stopping run would have ended at, and the sum of ``seconds`` up to it its time. History (per
    iteration): ``objective`` (2.3 at the shrunk iterate ``v``), ``primal_residual``, ``dual_residual``,
    ``violation`` (``||(G v)_-||``, the constraint violation of ``v``), ``seconds`` (the iteration's wall
    time: the updates, the residuals and the stopping test; the other diagnostics excluded); at the
    iterations in ``eval_at`` (default: all) the train/test accuracy of the network :func:`network_predict`
    defines with ``v`` (``accuracy_iterations`` lists them). ``diagnostics=False`` skips the per-iteration
    ``objective`` and ``violation`` (the costliest diagnostics; ``final_objective`` and ``final_violation``
    are always set).
    """
    _check(X, y, D)
    if beta < 0 or rho <= 0:
        raise ValueError(f"need beta >= 0 and rho > 0, got beta={beta}, rho={rho}")
    gamma_a = rho if gamma_a is None else gamma_a
    if gamma_a <= 0:
        raise ValueError(f"gamma_a must be positive, got {gamma_a}")
    n, d = X.shape
    P = D.shape[1]
    start = time.perf_counter()
    Df = D.astype(float)
    S = np.hstack([2.0 * Df - 1.0] * 2).T  # (2P, n): sign pattern of every block of G
    sign = np.concatenate([np.ones(P), -np.ones(P)])  # v blocks enter F with +, w blocks with -
    # F as an n x 2Pd matrix (block j = sign_j D_{j mod P} X), the system matrix and its Cholesky factor.
    F = np.hstack([sign[j] * Df[:, j % P, None] * X for j in range(2 * P)])
    A = F.T @ F / rho + np.kron(np.eye(2 * P), X.T @ X) + np.eye(2 * P * d)
    chol = linalg.cho_factor(A, lower=True)
    Fty = F.T @ y / rho

    def G(Uv):  # (2P, d) -> (2P, n)
        return S * (Uv @ X.T)

    def Gt(Z):  # (2P, n) -> (2P, d)
        return (S * Z) @ X

    u = np.zeros((2 * P, d))
    v = np.zeros_like(u)
    lam = np.zeros_like(u)
    s = np.zeros((2 * P, n))
    nu = np.zeros_like(s)
    step = gamma_a / rho
    names = ("objective", "primal_residual", "dual_residual", "violation", "train_acc", "test_acc",
             "accuracy_iterations", "seconds", "tolerance_met")
    check = eps_abs > 0 or eps_rel > 0
    eval_at = None if eval_at is None else set(int(e) for e in eval_at)
    hist = {k: [] for k in names}
    setup = time.perf_counter() - start
    iter_time = 0.0
    converged = False
    k = 0
    for k in range(1, max_iter + 1):
        t0 = time.perf_counter()
        rhs = Fty + (v - lam + Gt(s - nu)).ravel()
        u = linalg.cho_solve(chol, rhs, check_finite=False).reshape(2 * P, d)
        z = u + lam
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        v_old, s_old = v, s
        v = np.maximum(1.0 - beta / (rho * np.maximum(norms, 1e-300)), 0.0) * z
        Gu = G(u)
        s = np.maximum(Gu + nu, 0.0)
        r_u, r_s = u - v, Gu - s
        lam = lam + step * r_u
        nu = nu + step * r_s
        primal = math.sqrt(np.sum(r_u**2) + np.sum(r_s**2))
        dual = rho * np.linalg.norm((v - v_old) + Gt(s - s_old))
        met = False
        if check:
            p_dim, q_dim = u.size + s.size, u.size
            eps_pri = math.sqrt(p_dim) * eps_abs + eps_rel * max(
                math.sqrt(np.sum(u**2) + np.sum(Gu**2)), math.sqrt(np.sum(v**2) + np.sum(s**2)))
            eps_dual = math.sqrt(q_dim) * eps_abs + eps_rel * rho * np.linalg.norm(lam + Gt(nu))
            met = primal <= eps_pri and dual <= eps_dual
        hist["seconds"].append(time.perf_counter() - t0)
        iter_time += hist["seconds"][-1]
        # diagnostics (not timed)
        if check:
            hist["tolerance_met"].append(met)
        Vk, Wk = v[:P], v[P:]
        hist["primal_residual"].append(primal)
        hist["dual_residual"].append(dual)
        if diagnostics:
            hist["objective"].append(convex_objective(X, y, D, Vk, Wk, beta))
            hist["violation"].append(float(np.linalg.norm(np.minimum(G(v), 0.0))))
        if eval_at is None or k in eval_at:
            hist["accuracy_iterations"].append(k)
            hist["train_acc"].append(accuracy(network_predict(X, Vk, Wk), y))
            if X_test is not None:
                hist["test_acc"].append(accuracy(network_predict(X_test, Vk, Wk), y_test))
        if met:
            converged = True
            if stop:
                break
    history = {k_: np.asarray(v_) for k_, v_ in hist.items() if len(v_)}
    return ADMMResult(v[:P].copy(), v[P:].copy(), k, converged, history, setup, iter_time,
                      convex_objective(X, y, D, v[:P], v[P:], beta), float(np.linalg.norm(np.minimum(G(v), 0.0))))


def first_stop(result: ADMMResult) -> int | None:
    """The first iteration (1-based) at which Boyd's criterion held, or ``None`` (needs ``eps_*`` > 0)."""
    met = result.history.get("tolerance_met")
    if met is None:
        raise ValueError("the run did not evaluate a stopping criterion (eps_abs = eps_rel = 0)")
    hit = np.flatnonzero(met)
    return int(hit[0]) + 1 if hit.size else None


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``sign(scores)`` equal to ``y`` (a zero score counts as +1)."""
    return float(np.mean(np.where(scores >= 0, 1.0, -1.0) == y))


def semilog_slope(k, values, *, confidence: float = 0.95) -> tuple[Interval, float]:
    """Slope of ``log(values)`` against the iteration ``k`` (a linear rate is a negative constant slope).

    Returns the slope with a Student-t interval (``n - 2`` dof) and the fit's ``r^2``. The per-iteration
    contraction factor is ``exp(slope)``.
    """
    k, values = np.asarray(k, float), np.asarray(values, float)
    if k.shape != values.shape or k.size < 3:
        raise ValueError("need at least 3 paired points")
    if np.any(values <= 0):
        raise ValueError("values must be positive")
    fit = sps.linregress(k, np.log(values))
    half = float(sps.t.ppf(0.5 + confidence / 2, k.size - 2) * fit.stderr)
    return Interval(float(fit.slope), float(fit.slope - half), float(fit.slope + half), k.size, confidence, "t"), float(fit.rvalue**2)


def rate_diagnostics(k, values) -> dict:
    """Tell a linear rate (``log values`` linear in ``k``) from a power law (``log values`` linear in ``log k``).

    Returns ``semilog_r2`` and ``loglog_r2`` (the r^2 of the two least-squares fits; a linear rate fits the
    first better, a power law the second, so ``semilog_minus_loglog_r2 > 0`` has no free parameter) and
    ``half_slope_ratio``: the semilog slope over the second half of the window over the slope over the
    first half (about 1 for a linear rate; for ``k^-p`` on a window ``[a, b]`` it is about the ratio of the
    halves' mean ``1/k``, e.g. 0.54 on ``[376, 1500]``).
    """
    k, values = np.asarray(k, float), np.asarray(values, float)
    if k.shape != values.shape or k.size < 6:
        raise ValueError("need at least 6 paired points")
    if np.any(values <= 0) or np.any(k <= 0):
        raise ValueError("k and values must be positive")
    logv = np.log(values)
    semi = sps.linregress(k, logv)
    loglog = sps.linregress(np.log(k), logv)
    h = k.size // 2
    first, second = sps.linregress(k[:h], logv[:h]).slope, sps.linregress(k[h:], logv[h:]).slope
    return {"semilog_r2": float(semi.rvalue**2), "loglog_r2": float(loglog.rvalue**2),
            "semilog_minus_loglog_r2": float(semi.rvalue**2 - loglog.rvalue**2),
            "half_slope_ratio": float(second / first)}


# ------------------------------------------------------------------------------- non-convex baseline
def nonconvex_objective(X, y, U, alpha, beta: float) -> float:
    """``1/2 ||sum_j (X u_j)_+ alpha_j - y||^2 + beta/2 sum_j (||u_j||^2 + alpha_j^2)`` (the network's loss)."""
    r = np.maximum(X @ U.T, 0) @ alpha - y
    return float(0.5 * r @ r + 0.5 * beta * (np.sum(U**2) + np.sum(alpha**2)))


def network_patterns(X, U) -> np.ndarray:
    """The activation patterns ``1[X u_j >= 0]`` of a trained network's hidden units, (n, m) bool."""
    return X @ U.T >= 0


def train_nonconvex(X, y, width: int, beta: float, *, steps: int = 2000, lr: float = 1e-2,
                    random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-batch Adam (Kingma and Ba; beta1 = 0.9, beta2 = 0.999) on :func:`nonconvex_objective`.

    Initialisation as PyTorch's ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) for both layers. NumPy with
    hand-written gradients (the net is tiny; torch's per-step overhead would dominate):
    ``r = (X U^T)_+ alpha - y``, ``grad_alpha = (X U^T)_+^T r + beta alpha``,
    ``grad_U = ((r alpha^T) * 1[X U^T > 0])^T X + beta U``. Returns ``(U, alpha, objective per step)``.
    """
    if width < 1 or steps < 1 or lr <= 0:
        raise ValueError("width, steps and lr must be positive")
    rng = np.random.default_rng(random_state)
    d = X.shape[1]
    U = rng.uniform(-1, 1, (width, d)) / math.sqrt(d)
    a = rng.uniform(-1, 1, width) / math.sqrt(width)
    m_U, v_U, m_a, v_a = np.zeros_like(U), np.zeros_like(U), np.zeros_like(a), np.zeros_like(a)
    b1, b2, eps = 0.9, 0.999, 1e-8
    trace = np.empty(steps)
    for t in range(1, steps + 1):
        Z = X @ U.T
        H = np.maximum(Z, 0.0)
        r = H @ a - y
        trace[t - 1] = 0.5 * r @ r + 0.5 * beta * (np.sum(U**2) + a @ a)
        g_a = H.T @ r + beta * a
        g_U = ((r[:, None] * a[None, :]) * (Z > 0)).T @ X + beta * U
        m_U = b1 * m_U + (1 - b1) * g_U
        v_U = b2 * v_U + (1 - b2) * g_U**2
        m_a = b1 * m_a + (1 - b1) * g_a
        v_a = b2 * v_a + (1 - b2) * g_a**2
        c1, c2 = 1 - b1**t, 1 - b2**t
        U = U - lr * (m_U / c1) / (np.sqrt(v_U / c2) + eps)
        a = a - lr * (m_a / c1) / (np.sqrt(v_a / c2) + eps)
    return U, a, trace
