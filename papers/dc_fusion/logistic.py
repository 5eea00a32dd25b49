"""Bayesian logistic regression for Section 5.1: data, sub-posteriors, a reference sampler and baselines.

**Data** (official ``SD*.R``): ``n = 1000`` rows, intercept ``-3`` and coefficients ``(1.2, -0.5, 0.8, 3)``
on binary covariates ``x_j ~ Bernoulli(q_j)`` with ``q = (0.2, 0.3, 0.5, 0.01)`` (the official generator
lives in the ``HMCBLR`` package, which we did not read; binary covariates with these frequencies are the
paper's description). The last covariate is rare: about 10 rows have it, so with ``C = 32`` shards most
sub-posteriors know nothing about its coefficient beyond the prior.

**Posterior.** Prior ``β ~ N(0, I)``; the sub-posterior of shard ``c`` is its likelihood times the prior to
the power ``1/C`` (``N(0, C·I)``), so that ``∏_c f_c`` is the full posterior. Binary covariates take at most
``2⁴`` patterns, so the likelihood is evaluated on unique rows with counts (the official
``unique_row_count``), exactly.

**Fusion path weight.** ``log f(β) = Σ_r [s_r η_r - n_r log(1 + e^{η_r})] - |β|²/(2σ²)`` with ``η = Xβ``,
``s_r`` the successes and ``n_r`` the count of row pattern ``r``;
``φ(β) = ½ (∇ᵀ Λ ∇ + tr(Λ ∇²))``. ``ρ₁`` is estimated by ``exp(-∫₀ᵀ φ(X_t) dt)`` along one sampled
Λ-bridge per particle with the trapezoid rule on a grid (``Φ`` cancels in the normalised weights) - a
discretisation, not the paper's unbiased Poisson estimator on layered Brownian bridges.

**Reference sampler.** Random-walk Metropolis with the Laplace covariance (scaled by ``2.38²/d``) run as
many parallel chains from the Laplace approximation; tested against a Gaussian target with a closed form.

**Baselines.** Consensus Monte Carlo (Scott et al. 2016): ``θ = (Σ_c W_c)⁻¹ Σ_c W_c θ_c`` with ``W_c`` the
inverse sample covariance of sub-posterior ``c`` (``consensusMCcov``). KDE-MC (Neiswanger, Wang and Xing
2014): the product of Gaussian KDEs is a mixture over index tuples ``t = (t_1..t_C)``, sampled by an
independent Metropolis-within-Gibbs sampler over ``t`` with bandwidth ``h_i = i^{-1/(4+d)}`` (annealed).
*Nonparametric* (:func:`kde_monte_carlo`): weight ``w_t ∝ ∏_c N(θ_{c,t_c} | θ̄_t, h² I)``, draw
``θ ~ N(θ̄_t, h²/C · I)``. *Semiparametric* (:func:`semiparametric_kde_monte_carlo`, the paper's baseline:
the official ``neiswanger()`` calls ``parallelMCMCcombine::semiparamDPE``): each sub-posterior is its
Gaussian fit ``N(μ̂_c, Σ̂_c)`` times a nonparametric correction, so the weight becomes
``W_t = w_t · N(θ̄_t | μ̂, Σ̂ + h²/C · I) / ∏_c N(θ_{c,t_c} | μ̂_c, Σ̂_c)`` with ``Σ̂⁻¹ = Σ_c Σ̂_c⁻¹`` and
``μ̂ = Σ̂ Σ_c Σ̂_c⁻¹ μ̂_c``, and the draw ``θ ~ N(μ_t, Σ_t)``, ``Σ_t = (C/h² I + Σ̂⁻¹)⁻¹``,
``μ_t = Σ_t (C/h² θ̄_t + Σ̂⁻¹ μ̂)`` (Neiswanger et al. 2014, Section 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

TRUE_BETA = np.array([-3.0, 1.2, -0.5, 0.8, 3.0])
FREQUENCIES = np.array([0.2, 0.3, 0.5, 0.01])


def simulate_data(n: int, rng: np.random.Generator, beta=TRUE_BETA, frequencies=FREQUENCIES):
    """``X`` (n, d) with an intercept column and binary covariates, ``y`` (n,) Bernoulli(σ(Xβ))."""
    beta, frequencies = np.asarray(beta, float), np.asarray(frequencies, float)
    if beta.size != frequencies.size + 1:
        raise ValueError("beta needs one entry more than frequencies (the intercept)")
    X = np.column_stack([np.ones(n), (rng.random((n, frequencies.size)) < frequencies).astype(float)])
    y = (rng.random(n) < expit(X @ beta)).astype(float)
    return X, y


@dataclass(frozen=True)
class LogisticTarget:
    """``∏ likelihood(rows) × N(0, prior_var I)`` on unique row patterns with counts."""

    X: np.ndarray          # (R, d) unique patterns
    successes: np.ndarray  # (R,)
    counts: np.ndarray     # (R,)
    prior_var: float

    @classmethod
    def from_data(cls, X, y, prior_var: float) -> LogisticTarget:
        if prior_var <= 0:
            raise ValueError(f"prior_var must be positive, got {prior_var}")
        patterns, inverse = np.unique(X, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        return cls(patterns, np.bincount(inverse, weights=y, minlength=len(patterns)),
                   np.bincount(inverse, minlength=len(patterns)).astype(float), float(prior_var))

    @staticmethod
    def product(targets) -> LogisticTarget:
        """Data pooled, prior precisions added (``1/σ² = Σ_c 1/σ_c²``)."""
        X = np.concatenate([t.X for t in targets])
        patterns, inverse = np.unique(X, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        s = np.bincount(inverse, weights=np.concatenate([t.successes for t in targets]), minlength=len(patterns))
        n = np.bincount(inverse, weights=np.concatenate([t.counts for t in targets]), minlength=len(patterns))
        return LogisticTarget(patterns, s, n, 1.0 / sum(1.0 / t.prior_var for t in targets))

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def log_density(self, beta: np.ndarray) -> np.ndarray:
        eta = beta @ self.X.T                                                 # (n, R)
        softplus = np.logaddexp(0.0, eta)
        return (eta * self.successes - softplus * self.counts).sum(1) - (beta**2).sum(1) / (2 * self.prior_var)

    def grad_and_hessian(self, beta: np.ndarray):
        p = expit(beta @ self.X.T)                                            # (n, R)
        grad = (self.successes - self.counts * p) @ self.X - beta / self.prior_var
        curv = self.counts * p * (1 - p)                                      # (n, R)
        hess = -np.einsum("nr,ri,rj->nij", curv, self.X, self.X) - np.eye(self.dim) / self.prior_var
        return grad, hess

    def phi(self, beta: np.ndarray, precond: np.ndarray) -> np.ndarray:
        """``φ(β) = ½ (∇ᵀ Λ ∇ + tr(Λ ∇²))`` at each row of ``beta``."""
        grad, hess = self.grad_and_hessian(beta)
        return 0.5 * (np.einsum("ni,ij,nj->n", grad, precond, grad) + np.einsum("ij,nji->n", precond, hess))

    def log_rho1(self, x0, y, T: float, precond, rng: np.random.Generator, n_steps: int = 20) -> np.ndarray:
        """``-∫₀ᵀ φ(X_t) dt`` along one sampled Λ-bridge per particle (trapezoid, ``n_steps`` intervals)."""
        from common.smc import bridge_path_integral

        return -bridge_path_integral(lambda b: self.phi(b, precond), x0, y, T, n_steps, rng, precond)

    def laplace(self, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Mode by Newton's method and the inverse negative Hessian there."""
        beta = np.zeros((1, self.dim))
        for _ in range(iterations):
            grad, hess = self.grad_and_hessian(beta)
            step = np.linalg.solve(hess[0], grad[0])
            beta = beta - step
            if np.max(np.abs(step)) < 1e-10:
                break
        _, hess = self.grad_and_hessian(beta)
        return beta[0], np.linalg.inv(-hess[0])


def random_walk_metropolis(log_density, initial: np.ndarray, proposal_cov: np.ndarray, n_steps: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Parallel random-walk Metropolis chains (one per row of ``initial``); returns the final states and
    the mean acceptance rate. ``log_density`` maps (n, d) to (n,)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    state = np.array(initial, dtype=float)
    root = np.linalg.cholesky(proposal_cov)
    current = log_density(state)
    accepted = 0.0
    for _ in range(n_steps):
        proposal = state + rng.standard_normal(state.shape) @ root.T
        value = log_density(proposal)
        accept = np.log(rng.random(state.shape[0])) < value - current
        state[accept], current[accept] = proposal[accept], value[accept]
        accepted += accept.mean()
    return state, accepted / n_steps


def sample_posterior(target: LogisticTarget, n: int, n_steps: int, rng: np.random.Generator,
                     overdispersion: float = 2.0) -> tuple[np.ndarray, float]:
    """``n`` draws: ``n`` RWM chains of ``n_steps`` from an overdispersed Laplace start, final states kept."""
    mode, cov = target.laplace()
    start = rng.multivariate_normal(mode, overdispersion**2 * cov, size=n)
    return random_walk_metropolis(target.log_density, start, (2.38**2 / target.dim) * cov, n_steps, rng)


def split_targets(X, y, C: int, prior_var: float = 1.0) -> list[LogisticTarget]:
    """``C`` equal contiguous shards (the official ``split_data``), each with the prior to the power 1/C."""
    if C < 1 or C > len(y):
        raise ValueError(f"C must be in [1, n], got {C}")
    return [LogisticTarget.from_data(Xc, yc, C * prior_var)
            for Xc, yc in zip(np.array_split(X, C), np.array_split(y, C), strict=True)]


def consensus_monte_carlo(sub_samples: list[np.ndarray]) -> np.ndarray:
    """Scott et al. (2016): ``θ_i = (Σ_c W_c)⁻¹ Σ_c W_c θ_{c,i}``, ``W_c`` = inverse sample covariance."""
    W = [np.linalg.inv(np.cov(s, rowvar=False)) for s in sub_samples]
    return sum(s @ w for s, w in zip(sub_samples, W, strict=True)) @ np.linalg.inv(sum(W))


def kde_monte_carlo(sub_samples: list[np.ndarray], n: int, rng: np.random.Generator, bandwidth: float = 1.0,
                    anneal: bool = True) -> np.ndarray:
    """Neiswanger et al. (2014), nonparametric density product by Metropolis-within-Gibbs over indices.

    Step ``i`` uses ``h = bandwidth · i^{-1/(4+d)}`` (annealed) or ``bandwidth``; for each ``c`` in turn a
    uniformly drawn index replaces ``t_c`` with probability ``min(1, w_{t'} / w_t)``,
    ``log w_t = -Σ_c |θ_{c,t_c} - θ̄_t|² / (2h²)``; then ``θ ~ N(θ̄_t, h²/C · I)`` is the ``i``-th draw.
    """
    C = len(sub_samples)
    stack = np.stack(sub_samples)                                       # (C, M, d)
    M, d = stack.shape[1:]
    t = rng.integers(0, M, size=C)
    chosen = stack[np.arange(C), t]                                     # (C, d)
    out = np.empty((n, d))
    proposals = rng.integers(0, M, size=(n, C))
    uniforms = np.log(rng.random((n, C)))
    noise = rng.standard_normal((n, d))
    for i in range(n):
        h = bandwidth * (i + 1) ** (-1.0 / (4 + d)) if anneal else bandwidth
        total = chosen.sum(0)
        sq = (chosen**2).sum()
        for c in range(C):
            new = stack[c, proposals[i, c]]
            new_total = total - chosen[c] + new
            new_sq = sq - chosen[c] @ chosen[c] + new @ new
            # Σ_c |θ_c - θ̄|² = Σ |θ_c|² - |Σ θ_c|² / C
            log_ratio = -((new_sq - new_total @ new_total / C) - (sq - total @ total / C)) / (2 * h * h)
            if uniforms[i, c] < log_ratio:
                chosen[c], total, sq = new, new_total, new_sq
        out[i] = total / C + h / np.sqrt(C) * noise[i]
    return out


def semiparametric_kde_monte_carlo(sub_samples: list[np.ndarray], n: int, rng: np.random.Generator,
                                   bandwidth: float = 1.0, anneal: bool = True) -> np.ndarray:
    """Neiswanger et al. (2014), semiparametric density product (module docstring), by
    Metropolis-within-Gibbs over index tuples, one draw per sweep.

    Works in the eigenbasis ``U`` of ``Σ̂ = U diag(s) Uᵀ`` (the spread ``Σ_c |θ_c - θ̄|²`` is rotation
    invariant), so every per-step matrix is diagonal. Step ``i`` uses ``h = bandwidth · i^{-1/(4+d)}``
    (annealed) or ``bandwidth``; for each ``c`` in turn a uniformly drawn index replaces ``t_c`` with
    probability ``min(1, W_{t'} / W_t)``; then ``θ ~ N(μ_t, Σ_t)`` is the ``i``-th draw.
    """
    C = len(sub_samples)
    if C < 2:
        raise ValueError(f"need at least 2 sub-posteriors, got {C}")
    stack = np.stack([np.asarray(s, dtype=float) for s in sub_samples])   # (C, M, d)
    M, d = stack.shape[1:]
    means = stack.mean(1)                                                  # (C, d)
    precisions = [np.linalg.inv(np.atleast_2d(np.cov(s, rowvar=False))) for s in stack]
    prec = sum(precisions)
    cov = np.linalg.inv(prec)
    mean = cov @ sum(P @ m for P, m in zip(precisions, means, strict=True))
    # log N(θ_{c,j} | μ̂_c, Σ̂_c) up to a constant per c (constants cancel in the ratio W_t'/W_t)
    log_fit = np.stack([-0.5 * np.einsum("mi,ij,mj->m", s - m, P, s - m)
                        for s, m, P in zip(stack, means, precisions, strict=True)])        # (C, M)
    s_eig, U = np.linalg.eigh(cov)
    z = stack @ U                                                          # (C, M, d) rotated samples
    z_mean = mean @ U
    t = rng.integers(0, M, size=C)
    chosen = z[np.arange(C), t]                                            # (C, d)
    fit = log_fit[np.arange(C), t].sum()
    out = np.empty((n, d))
    proposals = rng.integers(0, M, size=(n, C))
    uniforms = np.log(rng.random((n, C)))
    noise = rng.standard_normal((n, d))
    for i in range(n):
        h = bandwidth * (i + 1) ** (-1.0 / (4 + d)) if anneal else bandwidth
        shrink = h * h / C
        total = chosen.sum(0)
        sq = (chosen**2).sum()
        # log W_t = -spread/(2h²) - ½ |θ̄ - μ̂|²_{(Σ̂ + h²/C I)⁻¹} - Σ_c log N(θ_{c,t_c} | μ̂_c, Σ̂_c) + const
        diff = total / C - z_mean
        log_w = -(sq - total @ total / C) / (2 * h * h) - 0.5 * (diff * diff / (s_eig + shrink)).sum() - fit
        for c in range(C):
            j = proposals[i, c]
            new = z[c, j]
            new_total = total - chosen[c] + new
            new_sq = sq - chosen[c] @ chosen[c] + new @ new
            new_fit = fit - log_fit[c, t[c]] + log_fit[c, j]
            new_diff = new_total / C - z_mean
            new_log_w = (-(new_sq - new_total @ new_total / C) / (2 * h * h)
                         - 0.5 * (new_diff * new_diff / (s_eig + shrink)).sum() - new_fit)
            if uniforms[i, c] < new_log_w - log_w:
                chosen[c], total, sq, fit, log_w, t[c] = new, new_total, new_sq, new_fit, new_log_w, j
        # θ ~ N(μ_t, Σ_t), diagonal in the eigenbasis: precision C/h² + 1/s
        precision = C / (h * h) + 1.0 / s_eig
        mu = (C / (h * h) * total / C + z_mean / s_eig) / precision
        out[i] = (mu + noise[i] / np.sqrt(precision)) @ U.T
    return out


def iad_samples(reference: np.ndarray, samples: np.ndarray, bandwidths=None, n_grid: int = 2048) -> float:
    """Official ``integrated_abs_distance``: ``(1/2d) Σ_j ∫|KDE_j(samples) - KDE_j(reference)|``.

    Gaussian KDEs on a common grid over both samples' range; bandwidth per coordinate from Silverman's
    rule of thumb on the reference (R's ``bw.nrd0``) unless given.
    """
    from papers.dc_fusion.fusion import gaussian_kde_on_grid

    reference, samples = np.atleast_2d(reference), np.atleast_2d(samples)
    d = reference.shape[1]
    total = 0.0
    for j in range(d):
        r = reference[:, j]
        if bandwidths is None:
            iqr = np.subtract(*np.percentile(r, [75, 25]))
            h = 0.9 * min(r.std(ddof=1), iqr / 1.34) * r.size ** (-0.2)
        else:
            h = bandwidths[j]
        lo = min(r.min(), samples[:, j].min()) - 4 * h
        hi = max(r.max(), samples[:, j].max()) + 4 * h
        step = min((hi - lo) / (n_grid - 1), h / 4)
        grid = np.arange(lo, hi + step, step)
        diff = np.abs(gaussian_kde_on_grid(samples[:, j], grid, h) - gaussian_kde_on_grid(r, grid, h))
        total += 0.5 * np.trapezoid(diff, grid)
    return float(total / d)



def section51_run(C: int, n_particles: int, reference: np.ndarray, data, seed: int, *, T: float = 0.5,
                  sub_steps: int = 300, tree: str = "balanced", n_bridge_steps: int = 20) -> dict:
    """One replicate of Section 5.1 at ``C`` shards: sub-posterior samples (RWM), then DC-Fusion over
    ``tree``, consensus Monte Carlo and KDE-MC (nonparametric and semiparametric) on the same sub-posterior
    samples; IAD of each against the ``reference`` sample of the full posterior, and the IAD of
    ``n_particles`` draws of the full posterior itself by the same sampler (``iad.oracle``, the floor)."""
    from papers.dc_fusion.fusion import ParticleSet, final_samples, run_tree

    X, y = data
    rng = np.random.default_rng([seed, C, 5])
    targets = split_targets(X, y, C)
    subs = [sample_posterior(t, n_particles, sub_steps, rng)[0] for t in targets]
    bridged = [_BridgeSteps(t, n_bridge_steps) for t in targets]
    fused, diagnostics = run_tree([ParticleSet.unweighted(s) for s in subs], bridged, tree, T, rng)
    out = {"iad.dcf": iad_samples(reference, final_samples(fused, rng)),
           "iad.cmc": iad_samples(reference, consensus_monte_carlo(subs)),
           "iad.kdemc_nonparam": iad_samples(reference, kde_monte_carlo(subs, n_particles, rng)),
           "min_ess": min(d.min_ess for d in diagnostics)}
    out["iad.kdemc_semi"] = iad_samples(reference, semiparametric_kde_monte_carlo(
        subs, n_particles, np.random.default_rng([seed, C, 6])))
    # the floor: n_particles draws of the full posterior by the sub-posteriors' own sampler and budget
    oracle, _ = sample_posterior(LogisticTarget.from_data(X, y, 1.0), n_particles, sub_steps,
                                 np.random.default_rng([seed, C, 7]))
    out["iad.oracle"] = iad_samples(reference, oracle)
    return out


@dataclass(frozen=True)
class _BridgeSteps:
    """A :class:`LogisticTarget` whose path weight uses ``n_steps`` trapezoid intervals."""

    target: LogisticTarget
    n_steps: int

    @staticmethod
    def product(items) -> _BridgeSteps:
        return _BridgeSteps(LogisticTarget.product([i.target for i in items]), items[0].n_steps)

    def log_rho1(self, x0, y, T, precond, rng):
        return self.target.log_rho1(x0, y, T, precond, rng, self.n_steps)
