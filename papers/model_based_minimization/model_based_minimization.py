"""Stochastic model-based minimization of weakly convex functions (Davis & Drusvyatskiy, SIOPT 2019).

The paper studies ``min_x φ(x) = f(x) + r(x)`` where ``f(x) = E_ξ f(x, ξ)`` is ρ-weakly convex and the only
access to ``f`` is through *stochastic one-sided models* ``f_x(·, ξ)``. Algorithm 4.1 (stochastic model-based
minimization) samples ``ξ_t`` and sets

    x_{t+1} = argmin_y { f_{x_t}(y, ξ_t) + r(y) + (β_t/2) ‖y − x_t‖² }.                      (Alg. 4.1)

Assumption B asks for (B2) one-sided accuracy ``E_ξ[f_x(y, ξ) − f(y)] ≤ (τ/2)‖y − x‖²`` with
``E_ξ f_x(x, ξ) = f(x)``, (B3) η-weak convexity of each model, (B4) ``f_x(x, ξ) − f_x(y, ξ) ≤ L(ξ)‖x − y‖`` with
``E L(ξ)² ≤ L²``. Theorem 4.3 then bounds the stationarity measure, the gradient of the Moreau envelope

    φ_{1/ρ̄}(x) = min_y φ(y) + (ρ̄/2)‖y − x‖²,      ∇φ_{1/ρ̄}(x) = ρ̄ (x − prox_{φ/ρ̄}(x)),

at an iterate ``x_{t*}`` drawn with ``P(t* = t) ∝ (ρ̄ − τ − η)/(β_t − η)``:

    E‖∇φ_{1/ρ̄}(x_{t*})‖² ≤ [ρ̄(φ_{1/ρ̄}(x_0) − φ*) + 2ρ̄²L² Σ_t 1/((β_t − η)(β_t − ρ̄))]
                            / Σ_t (ρ̄ − τ − η)/(2(β_t − η)),                               (4.15)

and for the constant choice ``β_t = ρ̄ + γ⁻¹√(T+1)`` (with η ≤ ρ̄)

    E‖∇φ_{1/ρ̄}(x_{t*})‖² ≤ 2(ρ̄Δ + 2ρ̄²L²γ²)/(ρ̄ − τ − η) · ((ρ̄ − η)/(T+1) + 1/(γ√(T+1))),   (4.16)

an O(T^-1/2) rate for the squared norm (O(k^-1/4) for the norm).

This module instantiates the three models of the paper's Section 2/4 examples on **robust phase retrieval**

    f(x) = (1/m) Σ_i |⟨a_i, x⟩² − b_i|,        f(x, i) = |c_i(x)|,  c_i(x) = ⟨a_i, x⟩² − b_i,

with ``ξ = i`` uniform on ``{1..m}`` (so ``f = E_ξ f(·, ξ)`` exactly, and the Moreau envelope is that of the
full empirical objective):

- stochastic subgradient: ``f_x(y, i) = f(x, i) + ⟨v, y − x⟩``, ``v ∈ ∂f(x, i)`` (τ = ρ, η = 0);
- stochastic prox-linear: ``f_x(y, i) = |c_i(x) + ⟨∇c_i(x), y − x⟩|`` (τ = 2λ_max(AᵀA/m), η = 0);
- stochastic proximal point: ``f_x(y, i) = f(y, i)`` (τ = 0, η = 2 max_i ‖a_i‖²).

Each sample subproblem has a closed form (prox-linear) or a one-dimensional one (proximal point: the step is
along ``a_i``). The stationarity measure needs ``prox_{f/ρ̄}(x)`` of the *full* objective: with ρ̄ > ρ the
subproblem is (ρ̄ − ρ)-strongly convex, and :func:`moreau_prox` solves it by damped Newton on Huber
smoothings with continuation, with an a-posteriori error bound (see its docstring).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

__all__ = [
    "PhaseRetrieval",
    "make_phase_retrieval",
    "objective",
    "subgradient",
    "weak_convexity",
    "subgradient_step",
    "prox_linear_step",
    "prox_point_step",
    "METHODS",
    "model_constants",
    "run_method",
    "theorem_beta",
    "moreau_prox",
    "moreau_gradient_sq",
    "moreau_envelope",
    "theorem_bound_415",
    "stratified_times",
    "distance_to_solution",
    "initial_point",
    "stationarity_at_tstar",
    "method_rho_bar",
    "rate_experiment",
    "step_size_sweep",
    "outlier_kink_fraction",
]


class PhaseRetrieval:
    """A robust phase retrieval instance: measurement matrix ``A`` (m × d), outcomes ``b``, signal ``x_star``.

    ``corrupted`` is the boolean mask of outcomes replaced by outliers.
    """

    def __init__(self, A: np.ndarray, b: np.ndarray, x_star: np.ndarray, corrupted: np.ndarray):
        A = np.asarray(A, dtype=float)
        b = np.asarray(b, dtype=float)
        if A.ndim != 2 or b.shape != (A.shape[0],):
            raise ValueError(f"A must be m x d and b of length m, got {A.shape} and {b.shape}")
        self.A, self.b = A, b
        self.x_star = np.asarray(x_star, dtype=float)
        self.corrupted = np.asarray(corrupted, dtype=bool)
        self.m, self.d = A.shape
        self.row_norms_sq = np.einsum("ij,ij->i", A, A)


def make_phase_retrieval(d: int, m: int, p_fail: float = 0.0, *, rng: np.random.Generator) -> PhaseRetrieval:
    """Synthetic robust phase retrieval: ``a_i`` uniform on the sphere of radius √d (so E[aaᵀ] = I and
    ‖a_i‖² = d), ``x*`` uniform on the unit sphere, ``b_i = ⟨a_i, x*⟩²``; a fraction ``p_fail`` of the
    outcomes (a random subset of ``round(p_fail·m)`` indices) is replaced by ``|N(0, 1)|·median(b)``.
    """
    if d < 1 or m < 1:
        raise ValueError(f"d and m must be positive, got d={d}, m={m}")
    if not 0.0 <= p_fail < 0.5:
        raise ValueError(f"p_fail must be in [0, 0.5), got {p_fail}")
    A = rng.standard_normal((m, d))
    A *= np.sqrt(d) / np.linalg.norm(A, axis=1, keepdims=True)
    x_star = rng.standard_normal(d)
    x_star /= np.linalg.norm(x_star)
    b = (A @ x_star) ** 2
    corrupted = np.zeros(m, dtype=bool)
    n_bad = int(round(p_fail * m))
    if n_bad:
        idx = rng.choice(m, size=n_bad, replace=False)
        b[idx] = np.abs(rng.standard_normal(n_bad)) * np.median(b)
        corrupted[idx] = True
    return PhaseRetrieval(A, b, x_star, corrupted)


def objective(problem: PhaseRetrieval, x: np.ndarray) -> float:
    """``f(x) = (1/m) Σ_i |⟨a_i, x⟩² − b_i|``."""
    return float(np.mean(np.abs((problem.A @ x) ** 2 - problem.b)))


def subgradient(problem: PhaseRetrieval, x: np.ndarray) -> np.ndarray:
    """A subgradient of ``f`` (the Clarke subgradient with sign(0) = 0): (1/m) Σ 2 sign(c_i) ⟨a_i,x⟩ a_i."""
    u = problem.A @ x
    return problem.A.T @ (2.0 * np.sign(u * u - problem.b) * u) / problem.m


def weak_convexity(problem: PhaseRetrieval) -> float:
    """ρ = 2 λ_max(AᵀA/m): f(y) ≥ f(x) + ⟨v, y − x⟩ − (y − x)ᵀ(AᵀA/m)(y − x) for v ∈ ∂f(x).

    (From |c(y)| ≥ s·c(y) = |c(x)| + s⟨∇c(x), y − x⟩ + s⟨a, y − x⟩² with s ∈ ∂|·|(c(x)), |s| ≤ 1.)
    """
    return float(2.0 * np.linalg.eigvalsh(problem.A.T @ problem.A / problem.m)[-1])


# ----------------------------------------------------------------------------------------------------
# One step of Algorithm 4.1 for each model (sample i, parameter β)
# ----------------------------------------------------------------------------------------------------

def subgradient_step(x: np.ndarray, a: np.ndarray, b: float, beta: float) -> np.ndarray:
    """Stochastic subgradient: minimise ``f(x,i) + ⟨v, y − x⟩ + (β/2)‖y − x‖²``, i.e. ``y = x − v/β`` with
    ``v = 2 sign(⟨a,x⟩² − b) ⟨a,x⟩ a``."""
    u = float(a @ x)
    return x - (2.0 * np.sign(u * u - b) * u / beta) * a


def prox_linear_step(x: np.ndarray, a: np.ndarray, b: float, beta: float) -> np.ndarray:
    """Stochastic prox-linear: minimise ``|c + ⟨g, y − x⟩| + (β/2)‖y − x‖²`` with ``c = ⟨a,x⟩² − b``,
    ``g = 2⟨a,x⟩a``. The minimiser is ``y = x − sign(c) min(1/β, |c|/‖g‖²) g`` (the step stops at the kink
    ``c + ⟨g, y − x⟩ = 0`` when it would overshoot); ``g = 0`` leaves ``x`` unchanged.
    """
    u = float(a @ x)
    c = u * u - b
    g_sq = 4.0 * u * u * float(a @ a)
    if g_sq == 0.0 or c == 0.0:
        return x.copy()
    t = min(1.0 / beta, abs(c) / g_sq)
    return x - (np.sign(c) * t * 2.0 * u) * a


def _prox_point_scalar(u0: float, b: float, kappa: float) -> float:
    """argmin_u |u² − b| + (κ/2)(u − u0)² for b ≥ 0, by enumeration of the candidates: the stationary points
    of the two smooth pieces (u = κu0/(κ+2) where u² ≥ b; u = κu0/(κ−2) where u² ≤ b) and the kinks ±√b."""
    root = np.sqrt(max(b, 0.0))
    candidates = [root, -root]
    u_out = kappa * u0 / (kappa + 2.0)
    if u_out * u_out >= b:
        candidates.append(u_out)
    if kappa != 2.0:
        u_in = kappa * u0 / (kappa - 2.0)
        if u_in * u_in <= b:
            candidates.append(u_in)
    values = [abs(u * u - b) + 0.5 * kappa * (u - u0) ** 2 for u in candidates]
    return float(candidates[int(np.argmin(values))])


def prox_point_step(x: np.ndarray, a: np.ndarray, b: float, beta: float) -> np.ndarray:
    """Stochastic proximal point: minimise ``|⟨a,y⟩² − b| + (β/2)‖y − x‖²``.

    A component of ``y − x`` orthogonal to ``a`` only adds to the quadratic, so ``y = x + s a``; with
    ``u = ⟨a, y⟩ = ⟨a,x⟩ + s‖a‖²`` the problem is ``|u² − b| + (β/(2‖a‖²))(u − ⟨a,x⟩)²`` (one dimension,
    solved exactly by :func:`_prox_point_scalar`, also when β < 2‖a‖² makes it non-convex).
    """
    na = float(a @ a)
    u0 = float(a @ x)
    u = _prox_point_scalar(u0, b, beta / na)
    return x + ((u - u0) / na) * a


METHODS = {"subgradient": subgradient_step, "prox_linear": prox_linear_step, "prox_point": prox_point_step}


def model_constants(problem: PhaseRetrieval, method: str) -> tuple[float, float]:
    """(τ, η) of Assumption B for each model on phase retrieval.

    subgradient: τ = ρ (weak convexity of f), η = 0; prox-linear: τ = 2λ_max(AᵀA/m) = ρ
    (|f_x(y,i) − f(y,i)| ≤ ⟨a_i, y − x⟩²), η = 0; proximal point: τ = 0 (the model is the sample function),
    η = 2 max_i ‖a_i‖² (each |⟨a_i,·⟩² − b_i| is 2‖a_i‖²-weakly convex).
    """
    rho = weak_convexity(problem)
    if method in ("subgradient", "prox_linear"):
        return rho, 0.0
    if method == "prox_point":
        return 0.0, float(2.0 * problem.row_norms_sq.max())
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")


def theorem_beta(T: int, rho_bar: float, gamma: float) -> float:
    """The constant parameter of (4.16): ``β_t = ρ̄ + γ⁻¹ √(T + 1)`` for t = 0..T."""
    if T < 0 or gamma <= 0 or rho_bar <= 0:
        raise ValueError(f"need T >= 0, gamma > 0, rho_bar > 0; got {T}, {gamma}, {rho_bar}")
    return float(rho_bar + np.sqrt(T + 1.0) / gamma)


def run_method(problem: PhaseRetrieval, method: str, x0: np.ndarray, T: int, beta: float, *,
               rng: np.random.Generator, record_at=None):
    """Algorithm 4.1 with constant β for T steps (samples i_t uniform on {0..m−1}, drawn from ``rng``).

    Returns ``(x_T, snapshots, mean_sq_step_lipschitz)``: ``snapshots`` maps each t in ``record_at`` (subset
    of 0..T) to x_t, and the last entry is the mean of ‖v_t‖² over the run (v_t a subgradient of the sampled
    f(·, i_t) at x_t), an estimate of L² of (B4) along the trajectory.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    if T < 0:
        raise ValueError(f"T must be >= 0, got {T}")
    step = METHODS[method]
    A, b = problem.A, problem.b
    wanted = set() if record_at is None else {int(t) for t in record_at}
    if any(t < 0 or t > T for t in wanted):
        raise ValueError("record_at must lie in 0..T")
    samples = rng.integers(problem.m, size=T)
    x = np.array(x0, dtype=float)
    snapshots = {}
    lip_sq = 0.0
    for t in range(T + 1):
        if t in wanted:
            snapshots[t] = x.copy()
        if t == T:
            break
        i = samples[t]
        a = A[i]
        u = float(a @ x)
        lip_sq += 4.0 * u * u * problem.row_norms_sq[i] * (u * u != b[i])
        x = step(x, a, b[i], beta)
    return x, snapshots, lip_sq / max(T, 1)


# ----------------------------------------------------------------------------------------------------
# The stationarity measure: prox of the full objective
# ----------------------------------------------------------------------------------------------------

def moreau_prox(problem: PhaseRetrieval, x: np.ndarray, rho_bar: float, *, eps_final: float = 1e-10,
                eps_factor: float = 0.01, grad_tol: float = 1e-10, max_newton: int = 100):
    """``prox_{f/ρ̄}(x) = argmin_y F(y)``, ``F(y) = f(y) + (ρ̄/2)‖y − x‖²`` (ρ̄ > ρ: (ρ̄ − ρ)-strongly convex).

    Method: damped Newton (Armijo backtracking) on the Huber-smoothed ``F_ε(y) = (1/m)Σ H_ε(c_i(y)) +
    (ρ̄/2)‖y − x‖²`` — still (ρ̄ − ρ)-strongly convex, since H_ε is convex and 1-Lipschitz — with continuation
    ε = 1, 10⁻², ..., ``eps_final`` (times the scale max(mean|c_i(x)|, mean|b_i|)), each level warm-started from the last.

    Error bound (returned as ``err_bound``, a certified bound on ‖y − prox(x)‖): since F − ε/2 ≤ F_ε ≤ F,
    ``F(y) − min F ≤ ε/2 + (F_ε(y) − min F_ε) ≤ ε/2 + ‖∇F_ε(y)‖²/(2μ)`` with μ = ρ̄ − ρ, and strong convexity
    gives ``‖y − prox(x)‖² ≤ 2(F(y) − min F)/μ``.

    The bound is evaluated at the end of every smoothing level and the best certified iterate is returned
    (at the smallest ε Newton can stall in floating point before its gradient is small).

    Returns ``(y, err_bound)``.
    """
    rho = weak_convexity(problem)
    if rho_bar <= rho:
        raise ValueError(f"rho_bar = {rho_bar} must exceed the weak convexity rho = {rho}")
    A, b, m = problem.A, problem.b, problem.m
    mu = rho_bar - rho
    x = np.asarray(x, dtype=float)
    y = x.copy()
    # smoothing scale: the residual size at x, floored by the outcome size (an iterate that is already an
    # exact solution has residuals ~1e-16, and smoothing at that scale would drown Newton in rounding)
    scale = max(float(np.mean(np.abs((A @ x) ** 2 - b))), float(np.mean(np.abs(b))), 1e-300)

    def value(y, eps):
        a = np.abs((A @ y) ** 2 - b)
        h = np.minimum(a, eps)                     # H_eps(r) = |r| - eps/2 outside, r^2/(2 eps) inside
        diff = y - x
        return float((a - h + h * h / (2 * eps)).sum() / m + 0.5 * rho_bar * (diff @ diff))

    def smoothed(y, eps):
        u = A @ y
        r = u * u - b
        inside = np.abs(r) <= eps
        d1 = np.where(inside, r / eps, np.sign(r))
        grad = A.T @ (d1 * 2 * u) / m + rho_bar * (y - x)
        weights = inside * (4 * u * u / eps) + d1 * 2
        hess = (A.T * weights) @ A / m
        hess.flat[:: problem.d + 1] += rho_bar
        return grad, hess

    eps = scale
    g_norm = np.inf
    best_y, best_err = y.copy(), np.inf
    while True:
        # stop when the gradient term of the error bound is below the smoothing term: ‖∇F_ε‖²/(2μ) ≤ ε/8
        tol = max(0.5 * np.sqrt(eps * mu), grad_tol * rho_bar * scale)
        F = value(y, eps)
        step = 1.0
        for _ in range(max_newton):
            grad, hess = smoothed(y, eps)
            g_norm = float(np.linalg.norm(grad))
            if g_norm <= tol:
                break
            direction = -np.linalg.solve(hess, grad)   # Hessian >= mu I where it exists (strong convexity)
            slope = float(grad @ direction)
            if not slope < 0:
                direction, slope = -grad, -g_norm ** 2
            step = min(1.0, 4.0 * step)   # start near the last accepted damping
            while True:
                F_new = value(y + step * direction, eps)
                if F_new <= F + 1e-4 * step * slope or step <= 1e-10:
                    break
                step *= 0.5
            if step <= 1e-10:          # no more progress in floating point at this level
                break
            y = y + step * direction
            F = F_new
        # certificate of this level's iterate, from the gradient *at y* (if the Newton loop ran out of
        # iterations, the last g_norm belongs to the iterate before the last step); keep the best one
        # (deep levels can stall in rounding)
        g_norm = float(np.linalg.norm(smoothed(y, eps)[0]))
        err = float(np.sqrt(2.0 / mu * (eps / 2.0 + g_norm ** 2 / (2.0 * mu))))
        if err < best_err:
            best_y, best_err = y.copy(), err
        if eps <= eps_final * scale:
            break
        eps = max(eps * eps_factor, eps_final * scale)
    return best_y, best_err


def moreau_gradient_sq(problem: PhaseRetrieval, x: np.ndarray, rho_bar: float, **kwargs):
    """‖∇φ_{1/ρ̄}(x)‖² = ρ̄²‖x − prox_{f/ρ̄}(x)‖² (Lemma 2.2 of the paper), with its certified relative error.

    Returns ``(value, rel_err)`` where ``rel_err`` bounds |‖x − ŷ‖ − ‖x − y‖| / ‖x − y‖ (∞ when x = y).
    """
    y, err = moreau_prox(problem, x, rho_bar, **kwargs)
    dist = float(np.linalg.norm(x - y))
    rel = err / dist if dist > 0 else np.inf
    return rho_bar ** 2 * dist ** 2, rel


def moreau_envelope(problem: PhaseRetrieval, x: np.ndarray, rho_bar: float) -> float:
    """φ_{1/ρ̄}(x) = f(ŷ) + (ρ̄/2)‖ŷ − x‖² at ŷ = prox_{f/ρ̄}(x)."""
    y, _ = moreau_prox(problem, x, rho_bar)
    return objective(problem, y) + 0.5 * rho_bar * float((y - x) @ (y - x))


def theorem_bound_415(delta: float, lipschitz_sq: float, rho_bar: float, tau: float, eta: float,
                      betas) -> float:
    """Right-hand side of (4.15): [ρ̄Δ + 2ρ̄²L² Σ 1/((β_t−η)(β_t−ρ̄))] / Σ (ρ̄−τ−η)/(2(β_t−η)), t = 0..T.

    Requires ρ̄ > τ + η and β_t > max(ρ̄, η).
    """
    betas = np.asarray(betas, dtype=float)
    if rho_bar <= tau + eta:
        raise ValueError(f"Theorem 4.3 needs rho_bar > tau + eta, got {rho_bar} <= {tau + eta}")
    if np.any(betas <= max(rho_bar, eta)):
        raise ValueError("Theorem 4.3 needs beta_t > max(rho_bar, eta)")
    numerator = rho_bar * delta + 2 * rho_bar ** 2 * lipschitz_sq * np.sum(1.0 / ((betas - eta) * (betas - rho_bar)))
    denominator = np.sum((rho_bar - tau - eta) / (2.0 * (betas - eta)))
    return float(numerator / denominator)


def stratified_times(T: int, n_eval: int, *, rng: np.random.Generator):
    """Geometric strata of {0..T} for estimating the mean over t* ~ Uniform{0..T} (constant β) of a quantity
    g(x_t) by ``Σ_j w_j g(x_{t_j})``: cell edges 0, (T+1)/2^(n_eval−1), ..., (T+1)/2, T+1 (rounded up,
    empty cells dropped), one uniform draw t_j per cell, weight w_j = |cell_j|/(T+1). The estimate is unbiased
    for the average over t, and the early transient (where g is largest) gets its own small cells.

    Returns ``(times, weights)``.
    """
    if n_eval < 1 or T < 0:
        raise ValueError(f"need n_eval >= 1 and T >= 0, got {n_eval}, {T}")
    n = T + 1
    inner = [int(np.ceil(n / 2.0 ** k)) for k in range(n_eval - 1, 0, -1)]
    edges = np.unique(np.clip([0] + inner + [n], 0, n))
    times = np.array([rng.integers(lo, hi) for lo, hi in pairwise(edges)])
    weights = np.diff(edges) / n
    return times, weights


def distance_to_solution(problem: PhaseRetrieval, x: np.ndarray) -> float:
    """dist(x, {±x*}) / ‖x*‖ (phase retrieval recovers x* up to sign)."""
    xs = problem.x_star
    return float(min(np.linalg.norm(x - xs), np.linalg.norm(x + xs)) / np.linalg.norm(xs))


# ----------------------------------------------------------------------------------------------------
# Experiment drivers (used by the notebooks)
# ----------------------------------------------------------------------------------------------------

def initial_point(problem: PhaseRetrieval, *, rng: np.random.Generator) -> np.ndarray:
    """x₀ uniform on the sphere of radius ‖x*‖ (an uninformed start, independent of x*)."""
    x0 = rng.standard_normal(problem.d)
    return x0 * np.linalg.norm(problem.x_star) / np.linalg.norm(x0)


def stationarity_at_tstar(problem: PhaseRetrieval, method: str, x0: np.ndarray, T: int, beta: float,
                          rho_bar: float, n_eval: int, *, rng: np.random.Generator) -> dict:
    """Run Algorithm 4.1 for T steps with constant β and estimate E‖∇φ_{1/ρ̄}(x_{t*})‖², t* ~ U{0..T}.

    The expectation over t* is estimated from ``n_eval`` stratified draws of t* (geometric strata, see
    :func:`stratified_times`), each evaluated with :func:`moreau_gradient_sq`. Returns a dict with ``mean_sq`` (the
    estimate), ``min_sq`` (the minimum over the evaluated iterates), ``abs_err_mean`` (certified bound on the
    absolute error of ``mean_sq`` from the inner solver), ``dist_final`` (dist(x_T, ±x*)/‖x*‖),
    ``lipschitz_sq`` (mean ‖v_t‖² along the run) and ``diverged``.
    """
    times, weights = stratified_times(T, n_eval, rng=rng)
    x_T, snapshots, lip_sq = run_method(problem, method, x0, T, beta, rng=rng, record_at=times)
    values, errors = [], []
    diverged = not np.all(np.isfinite(x_T)) or np.linalg.norm(x_T) > 1e6
    for t in times:
        x = snapshots[int(t)]
        if diverged or not np.all(np.isfinite(x)) or np.linalg.norm(x) > 1e6:
            diverged = True
            break
        y, err = moreau_prox(problem, x, rho_bar)
        dist = float(np.linalg.norm(x - y))
        values.append(rho_bar ** 2 * dist ** 2)
        errors.append(rho_bar ** 2 * err * (2 * dist + err))
    if diverged:
        return {"mean_sq": np.inf, "min_sq": np.inf, "abs_err_mean": np.inf, "dist_final": np.inf,
                "lipschitz_sq": np.inf, "diverged": True}
    return {"mean_sq": float(weights @ np.asarray(values)), "min_sq": float(np.min(values)),
            "abs_err_mean": float(weights @ np.asarray(errors)), "dist_final": distance_to_solution(problem, x_T),
            "lipschitz_sq": float(lip_sq), "diverged": False}


def method_rho_bar(problem: PhaseRetrieval, method: str, factor: float = 2.0) -> float:
    """ρ̄ = ``factor``·(τ + η) for the method's model (Theorem 4.3 needs ρ̄ > τ + η, and (4.16) η ≤ ρ̄):
    2ρ for the subgradient and prox-linear models (τ = ρ, η = 0), 2η = 4 max‖a_i‖² for the proximal-point
    model (τ = 0, η = 2 max‖a_i‖²). With β = ρ̄ + γ⁻¹√(T+1) > ρ̄ ≥ η every sample subproblem is convex."""
    if factor <= 1.0:
        raise ValueError(f"factor must exceed 1 (rho_bar > tau + eta), got {factor}")
    tau, eta = model_constants(problem, method)
    return float(factor * (tau + eta))


def rate_experiment(d: int, m: int, p_fail: float, budgets, n_seeds: int, gamma: float, n_eval: int, *,
                    seed: int, rho_bar_factor: float = 2.0, progress=None) -> dict:
    """For each seed: one instance, one x₀; for each method and T: run with β = ρ̄ + γ⁻¹√(T+1), ρ̄ the
    method's own ``rho_bar_factor``·(τ + η) (:func:`method_rho_bar`: 2ρ for subgradient and prox-linear, 2η for
    proximal point), and estimate E‖∇φ_{1/ρ̄}(x_{t*})‖² at that ρ̄ (:func:`stationarity_at_tstar`).

    Also computes, per seed and T, the right-hand side of (4.15) for every method with its (τ, η, ρ̄),
    Δ = φ_{1/ρ̄}(x₀) − 0 (0 is a lower bound of f) and L² the mean ‖v_t‖² of that run.
    Returns ``{"runs": {method: {T: [dict per seed]}}, "bound": {method: {T: [per seed]}}, "instances": [...]}``.
    """
    runs = {name: {T: [] for T in budgets} for name in METHODS}
    bounds = {name: {T: [] for T in budgets} for name in METHODS}
    instances = []
    for s in range(n_seeds):
        rng = np.random.default_rng([seed, s])
        problem = make_phase_retrieval(d, m, p_fail, rng=rng)
        rho = weak_convexity(problem)
        rho_bars = {name: method_rho_bar(problem, name, rho_bar_factor) for name in METHODS}
        x0 = initial_point(problem, rng=rng)
        envelope = {rb: moreau_envelope(problem, x0, rb) for rb in set(rho_bars.values())}
        deltas = {name: envelope[rb] for name, rb in rho_bars.items()}
        rho_bar = rho_bars["prox_linear"]
        instances.append({"rho": rho, "rho_bar": rho_bar, "rho_bars": rho_bars, "deltas": deltas,
                          "delta": deltas["prox_linear"],
                          "grad_sq_at_x_star": moreau_gradient_sq(problem, problem.x_star, rho_bar)[0],
                          "kink_fraction": {T: outlier_kink_fraction(problem, theorem_beta(T, rho_bar, gamma))
                                            for T in budgets}})
        for name in METHODS:
            rb = rho_bars[name]
            tau, eta = model_constants(problem, name)
            for T in budgets:
                beta = theorem_beta(T, rb, gamma)
                result = stationarity_at_tstar(problem, name, x0, T, beta, rb, n_eval,
                                               rng=np.random.default_rng([seed, s, T, 7]))
                runs[name][T].append(result)
                bounds[name][T].append(theorem_bound_415(deltas[name], result["lipschitz_sq"], rb, tau, eta,
                                                         np.full(T + 1, beta)))
                if progress is not None:
                    progress.update(1)
    return {"runs": runs, "bound": bounds, "instances": instances}


def step_size_sweep(d: int, m: int, p_fail: float, T: int, gammas, n_seeds: int, *, seed: int,
                    rho_bar_factor: float = 2.0, tol: float = 1e-3) -> dict:
    """Step-size robustness over a grid of γ (β = ρ̄ + γ⁻¹√(T+1), ρ̄ = ``rho_bar_factor``·ρ for every method, so
    that all methods take the same β at each γ; T steps; same instance, x₀ and sample sequence for every
    method and γ of a seed).

    Per seed and method it returns:

    - ``stable``: the fraction of the γ grid whose final iterate is finite and has a lower objective than x₀,
      ``f(x_T) < f(x₀)`` (tolerance-free: it counts the step sizes at which the method does not diverge and
      makes progress);
    - ``fraction``: the fraction whose final iterate recovers the signal, dist(x_T, ±x*)/‖x*‖ ≤ ``tol``
      (reported only: exact recovery is reachable by the interpolating prox-linear and proximal-point steps,
      not by a constant-step subgradient method, whose iterates sit at a jitter floor ∝ 1/β);
    - ``distances`` and ``objective_ratio`` (f(x_T)/f(x₀), ∞ when diverged) for every γ.
    """
    fractions = {name: [] for name in METHODS}
    stable = {name: [] for name in METHODS}
    distances = {name: [] for name in METHODS}
    objective_ratio = {name: [] for name in METHODS}
    for s in range(n_seeds):
        rng = np.random.default_rng([seed, s, 1])
        problem = make_phase_retrieval(d, m, p_fail, rng=rng)
        rho_bar = rho_bar_factor * weak_convexity(problem)
        x0 = initial_point(problem, rng=rng)
        f0 = objective(problem, x0)
        for name in METHODS:
            dists, ratios = [], []
            for gamma in gammas:
                with np.errstate(over="ignore", invalid="ignore"):
                    x_T, _, _ = run_method(problem, name, x0, T, theorem_beta(T, rho_bar, gamma),
                                           rng=np.random.default_rng([seed, s, 2]))
                    finite = bool(np.all(np.isfinite(x_T)))
                    f_T = objective(problem, x_T) if finite else np.inf
                dists.append(distance_to_solution(problem, x_T) if finite else np.inf)
                ratios.append(f_T / f0 if np.isfinite(f_T) else np.inf)
            distances[name].append(dists)
            objective_ratio[name].append(ratios)
            fractions[name].append(float(np.mean(np.asarray(dists) <= tol)))
            stable[name].append(float(np.mean(np.asarray(ratios) < 1.0)))
    return {"fraction": fractions, "stable": stable, "distances": distances, "objective_ratio": objective_ratio}


def outlier_kink_fraction(problem: PhaseRetrieval, beta: float) -> float:
    """Fraction of the corrupted samples whose prox-linear step taken at x* stops at the sample's kink
    (|c_i(x*)|/‖∇c_i(x*)‖² < 1/β): there the displacement |c_i|/‖∇c_i‖ does not depend on β, so shrinking the
    step (larger β) does not shrink the kick an outlier gives to an iterate near x*. NaN without outliers."""
    if not problem.corrupted.any():
        return float("nan")
    u = problem.A[problem.corrupted] @ problem.x_star
    c = np.abs(u * u - problem.b[problem.corrupted])
    g_sq = 4 * u * u * problem.row_norms_sq[problem.corrupted]
    return float(np.mean(c < g_sq / beta))
