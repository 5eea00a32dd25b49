"""Divide-and-Conquer Monte Carlo Fusion (Chan, Pollock, Johansen and Roberts, JMLR 2023).

**Fusion problem.** Given sub-posteriors ``f_1, ..., f_C`` (each known up to a constant, each with a
sample), sample the fusion density ``f(y) ∝ ∏_c f_c(y)``.

**Generalised Monte Carlo Fusion step** (Section 2, preconditioned). Each sub-posterior ``f_c`` gets a
preconditioning matrix ``Λ_c`` (the official code uses the sample covariance of its particles) and the
Langevin diffusion ``dX = ½ Λ_c ∇log f_c(X) dt + Λ_c^{1/2} dW``, whose invariant law is ``f_c``. The
extended target on ``(x_1..x_m, y)`` has ``y``-marginal ``∏_c f_c``; it is reached by importance
sampling from

    x_c ~ f_c (the children's particles),    y ~ N(x̃, V_T),
    x̃ = (Σ_c Λ_c⁻¹)⁻¹ Σ_c Λ_c⁻¹ x_c,        V_T = T (Σ_c Λ_c⁻¹)⁻¹,

with the weight ``ρ₀ · ρ₁`` where

    ρ₀ = exp(-Σ_c (x_c - x̃)ᵀ Λ_c⁻¹ (x_c - x̃) / (2T)),
    ρ₁ = ∏_c E_{bridge c}[exp(-∫₀ᵀ (φ_c(X_t) - Φ_c) dt)],
    φ_c(x) = ½ (∇log f_c(x)ᵀ Λ_c ∇log f_c(x) + tr(Λ_c ∇²log f_c(x))),  Φ_c ≤ inf φ_c,

the expectation being over a Brownian bridge with covariance rate ``Λ_c`` from ``x_c`` (time 0) to
``y`` (time ``T``). The fused node's preconditioner is ``(Σ_c Λ_c⁻¹)⁻¹``.

**SMC implementation** (Section 3; the official ``parallel_fusion_SMC_*``): the children's weighted
particle sets are combined index by index (children are independent), the log weights add
``log ρ₀``; if ``ESS < N/2`` the particles are resampled (residual resampling); ``y`` is proposed; the
log weights add ``log ρ₁``; again resample if ``ESS < N/2``. ESS and the conditional ESS (CESS) of each
of the two steps are recorded.

**Trees** (Section 3, Figure 2). Fork-and-join: one fusion of all ``C`` sub-posteriors (the original
Monte Carlo Fusion). Balanced binary: fuse pairs, then pairs of pairs, ``log₂ C`` levels. Progressive:
fuse 1 and 2, then (12) and 3, and so on, ``C - 1`` levels. Each fusion step sees ``m`` children.

**Gaussian sub-posteriors.** For ``f_c = N(μ_c, Σ_c)``, ``φ_c(x) - Φ_c = ½ (x - μ_c)ᵀ Σ_c⁻¹ Λ_c Σ_c⁻¹
(x - μ_c)`` with ``Φ_c = -½ tr(Λ_c Σ_c⁻¹)``, a quadratic path functional whose bridge expectation has a
closed form (:func:`common.smc.bridge_quadratic_log_expectation`). We use it: ``ρ₁`` is then the
conditional expectation of the paper's unbiased Poisson/negative-binomial estimators given the
endpoints (a Rao-Blackwellisation), so our weights are exact and less variable than theirs.

**Tempered Gaussians** (Section 4.2): ``f_c = N(0, 1)^{1/C} ∝ N(0, C)``, so ``∏_c f_c = N(0, 1)``.
**Bivariate Gaussians** (Section 4.1): two sub-posteriors ``N(0, Σ_ρ)`` with unit variances and
correlation ``ρ``, fused into ``N(0, Σ_ρ / 2)``, with ``Λ_c = I`` (standard) or the sample covariance.

**IAD** (the official ``integrated_abs_distance_*``): ``(1 / 2d) Σ_j ∫ |f̂_j - f_j|``, the average over
coordinates of the total variation between a Gaussian KDE (bandwidth 0.1) of the resampled fused
particles and the exact marginal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from common import smc

TREES = ("fork_and_join", "balanced", "progressive")


@dataclass
class ParticleSet:
    """``N`` particles ``y`` (N, d) with normalised log weights ``log_w`` (N,)."""

    y: np.ndarray
    log_w: np.ndarray

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @classmethod
    def unweighted(cls, samples) -> ParticleSet:
        y = np.asarray(samples, dtype=float)
        y = y[:, None] if y.ndim == 1 else y
        return cls(y, np.full(y.shape[0], -np.log(y.shape[0])))


@dataclass(frozen=True)
class GaussianTarget:
    """A (sub-)posterior ``N(mean, cov)``; the product of Gaussians is Gaussian (:meth:`product`)."""

    mean: np.ndarray
    cov: np.ndarray

    def __post_init__(self):
        mean = np.atleast_1d(np.asarray(self.mean, dtype=float))
        cov = np.atleast_2d(np.asarray(self.cov, dtype=float))
        if cov.shape != (mean.size, mean.size):
            raise ValueError(f"cov must be ({mean.size}, {mean.size}), got {cov.shape}")
        if np.any(np.linalg.eigvalsh(cov) <= 0):
            raise ValueError("cov must be positive definite")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)

    @property
    def precision(self) -> np.ndarray:
        return np.linalg.inv(self.cov)

    @staticmethod
    def product(targets) -> GaussianTarget:
        """``∏_c N(μ_c, Σ_c) ∝ N(μ, Σ)`` with ``Σ⁻¹ = Σ_c Σ_c⁻¹`` and ``Σ⁻¹ μ = Σ_c Σ_c⁻¹ μ_c``."""
        precision = sum(t.precision for t in targets)
        cov = np.linalg.inv(precision)
        return GaussianTarget(cov @ sum(t.precision @ t.mean for t in targets), cov)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.multivariate_normal(self.mean, self.cov, size=n, method="cholesky")

    def log_rho1(self, x0: np.ndarray, y: np.ndarray, T: float, precond: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """``log E[exp(-∫₀ᵀ (φ(X_t) - Φ) dt)]`` over the Λ-bridge from ``x0`` to ``y``: exact (closed form).

        ``φ - Φ = ½ (x - μ)ᵀ Σ⁻¹ Λ Σ⁻¹ (x - μ)``.
        """
        P = self.precision
        return smc.bridge_quadratic_log_expectation(x0, y, T, self.mean, P @ precond @ P, precond)


@dataclass
class FusionDiagnostics:
    """ESS/N and CESS/N of the ρ₀ step and the ρ₁ step of one fusion, and whether each resampled."""

    level: int
    m: int
    ess_rho0: float
    cess_rho0: float
    ess_rho1: float
    cess_rho1: float
    resampled: tuple = field(default=(False, False))

    @property
    def min_ess(self) -> float:
        return min(self.ess_rho0, self.ess_rho1)


def fusion_step(children: list[ParticleSet], targets: list, preconds: list[np.ndarray], T: float,
                rng: np.random.Generator, *, resampling: str = "residual", ess_threshold: float = 0.5,
                level: int = 0) -> tuple[ParticleSet, np.ndarray, FusionDiagnostics]:
    """One generalised Monte Carlo Fusion step by SMC (module docstring): children -> fused particles.

    ``targets[c]`` provides ``log_rho1(x0, y, T, Λ, rng)``; ``preconds[c]`` is ``Λ_c``. Returns the fused
    particle set, the fused preconditioner ``(Σ_c Λ_c⁻¹)⁻¹`` and the diagnostics.
    """
    m = len(children)
    if m < 2 or len(targets) != m or len(preconds) != m:
        raise ValueError(f"need m >= 2 children with one target and one preconditioner each, got "
                         f"{m}, {len(targets)}, {len(preconds)}")
    if not np.isfinite(T) or T <= 0:
        raise ValueError(f"the fusion time T must be positive, got {T!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold!r}")
    n = children[0].n
    if any(c.n != n for c in children):
        raise ValueError("every child must carry the same number of particles N")
    x = np.stack([c.y for c in children])                                   # (m, N, d)
    inv = [np.linalg.inv(np.atleast_2d(L)) for L in preconds]
    fused_precond = np.linalg.inv(sum(inv))
    # ρ₀ step: weighted average x̃ and log ρ₀ = -Σ_c |x_c - x̃|²_{Λ_c⁻¹} / 2T
    x_tilde = sum(x[c] @ inv[c] for c in range(m)) @ fused_precond           # Λ's symmetric
    log_rho0 = -sum(np.einsum("ni,ij,nj->n", x[c] - x_tilde, inv[c], x[c] - x_tilde) for c in range(m)) / (2 * T)
    log_prev = sum(c.log_w for c in children)
    log_w = smc.normalise_log_weights(log_prev + log_rho0)
    ess0, cess0 = smc.ess(log_w) / n, smc.cess(log_prev, log_rho0) / n
    resampled0 = ess0 < ess_threshold
    if resampled0:
        idx = smc.resample(log_w, rng, resampling)
        x, x_tilde, log_w = x[:, idx], x_tilde[idx], np.full(n, -np.log(n))
    # ρ₁ step: y ~ N(x̃, T (Σ Λ_c⁻¹)⁻¹), log ρ₁ = Σ_c log E_bridge[exp(-∫(φ_c - Φ_c))]
    y = x_tilde + rng.standard_normal(x_tilde.shape) @ np.linalg.cholesky(T * fused_precond).T
    log_rho1 = sum(targets[c].log_rho1(x[c], y, T, preconds[c], rng) for c in range(m))
    log_prev = log_w
    log_w = smc.normalise_log_weights(log_prev + log_rho1)
    ess1, cess1 = smc.ess(log_w) / n, smc.cess(log_prev, log_rho1) / n
    resampled1 = ess1 < ess_threshold
    if resampled1:
        idx = smc.resample(log_w, rng, resampling)
        y, log_w = y[idx], np.full(n, -np.log(n))
    diag = FusionDiagnostics(level, m, ess0, cess0, ess1, cess1, (bool(resampled0), bool(resampled1)))
    return ParticleSet(y, log_w), fused_precond, diag


def tree_schedule(n_leaves: int, tree: str) -> list[list[list[int]]]:
    """The fusion tree as levels of groups of node indices (indices into the previous level's nodes).

    Fork-and-join: one level ``[[0..C-1]]``. Balanced binary: pairs at every level (an odd node out is
    carried up unchanged as a group of one). Progressive: ``[[0, 1]], [[0, 2]], ...`` where node 0 is the
    running fusion and the others are carried leaves; we express it as levels of the balanced form.
    """
    if n_leaves < 2:
        raise ValueError(f"need at least 2 sub-posteriors, got {n_leaves}")
    if tree == "fork_and_join":
        return [[list(range(n_leaves))]]
    if tree == "balanced":
        levels, width = [], n_leaves
        while width > 1:
            groups = [[i, i + 1] for i in range(0, width - 1, 2)]
            if width % 2:
                groups.append([width - 1])
            levels.append(groups)
            width = len(groups)
        return levels
    if tree == "progressive":
        # level l fuses the running node (index 0) with the next leaf (index 1); the rest carry over
        return [[[0, 1]] + [[i] for i in range(2, n_leaves - level)] for level in range(n_leaves - 1)]
    raise ValueError(f"unknown tree {tree!r}; use one of {TREES}")


def run_tree(leaves: list[ParticleSet], targets: list, tree: str, T: float, rng: np.random.Generator, *,
             precondition: bool = True, resampling: str = "residual",
             ess_threshold: float = 0.5) -> tuple[ParticleSet, list[FusionDiagnostics]]:
    """Divide-and-conquer SMC Fusion of ``C`` leaves over ``tree`` (fork_and_join, balanced, progressive).

    ``targets[c]`` is the sub-posterior of leaf ``c`` (a :class:`GaussianTarget` or anything with
    ``log_rho1`` and a static ``product``). With ``precondition`` the leaf preconditioner is the sample
    covariance of its particles (as in the official code), otherwise ``I``.
    """
    if len(leaves) != len(targets):
        raise ValueError(f"{len(leaves)} leaves but {len(targets)} targets")
    d = leaves[0].y.shape[1]
    nodes = list(leaves)
    node_targets = list(targets)
    preconds = [np.atleast_2d(np.cov(p.y, rowvar=False)) if precondition else np.eye(d) for p in leaves]
    diagnostics = []
    for level, groups in enumerate(tree_schedule(len(leaves), tree), start=1):
        new_nodes, new_targets, new_preconds = [], [], []
        for group in groups:
            if len(group) == 1:
                i = group[0]
                new_nodes.append(nodes[i]), new_targets.append(node_targets[i]), new_preconds.append(preconds[i])
                continue
            fused, precond, diag = fusion_step([nodes[i] for i in group], [node_targets[i] for i in group],
                                               [preconds[i] for i in group], T, rng, resampling=resampling,
                                               ess_threshold=ess_threshold, level=level)
            new_nodes.append(fused)
            new_targets.append(type(node_targets[group[0]]).product([node_targets[i] for i in group]))
            new_preconds.append(precond)
            diagnostics.append(diag)
        nodes, node_targets, preconds = new_nodes, new_targets, new_preconds
    return nodes[0], diagnostics


def final_samples(particles: ParticleSet, rng: np.random.Generator, resampling: str = "residual") -> np.ndarray:
    """Resample the fused set to ``N`` equally weighted samples (as before the official IAD)."""
    return particles.y[smc.resample(particles.log_w, rng, resampling)]


def tempered_gaussian_leaves(C: int, n: int, rng: np.random.Generator) -> tuple[list[ParticleSet], list[GaussianTarget]]:
    """``C`` sub-posteriors ``N(0, 1)^{1/C} ∝ N(0, C)`` (Section 4.2), ``n`` exact samples each."""
    if C < 2 or n < 2:
        raise ValueError(f"need C >= 2 and n >= 2, got C={C}, n={n}")
    target = GaussianTarget(np.zeros(1), np.array([[float(C)]]))
    return [ParticleSet.unweighted(target.sample(n, rng)) for _ in range(C)], [target] * C


def correlated_gaussian_leaves(rho: float, n: int, rng: np.random.Generator,
                               C: int = 2) -> tuple[list[ParticleSet], list[GaussianTarget]]:
    """``C`` sub-posteriors ``N(0, Σ_ρ)`` (unit variances, correlation ``ρ``; Section 4.1)."""
    if not -1 < rho < 1:
        raise ValueError(f"rho must be in (-1, 1), got {rho}")
    target = GaussianTarget(np.zeros(2), np.array([[1.0, rho], [rho, 1.0]]))
    return [ParticleSet.unweighted(target.sample(n, rng)) for _ in range(C)], [target] * C


def gaussian_kde_on_grid(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian KDE on an equally spaced ``grid``: histogram on the grid, then a discrete convolution.

    (R's ``density`` bins linearly and convolves by FFT; with a spacing far below the bandwidth the two
    agree to the spacing's order.)
    """
    step = grid[1] - grid[0]
    if bandwidth <= 0 or step <= 0 or step > bandwidth / 4:
        raise ValueError(f"need 0 < grid step <= bandwidth / 4, got step {step}, bandwidth {bandwidth}")
    edges = np.concatenate([grid - step / 2, [grid[-1] + step / 2]])
    counts, _ = np.histogram(samples, bins=edges)
    half = int(np.ceil(6 * bandwidth / step))
    offsets = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (np.sqrt(2 * np.pi) * bandwidth)
    return np.convolve(counts, kernel, mode="same") / samples.size


def integrated_absolute_distance(samples, means, sds, bandwidth: float = 0.1, n_grid: int = 4096) -> float:
    """IAD ``(1/2d) Σ_j ∫ |f̂_j - N(μ_j, σ_j²)|`` over the ``d`` coordinates (official IAD, exact marginals).

    The grid spans the samples and ``μ_j ± 4σ_j`` (as the official code), plus ``6 × bandwidth``.
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[:, None] if samples.ndim == 1 else samples
    means, sds = np.atleast_1d(means), np.atleast_1d(sds)
    if means.size != samples.shape[1] or sds.size != samples.shape[1]:
        raise ValueError("one mean and one sd per coordinate")
    total = 0.0
    for j in range(samples.shape[1]):
        lo = min(samples[:, j].min(), means[j] - 4 * sds[j]) - 6 * bandwidth
        hi = max(samples[:, j].max(), means[j] + 4 * sds[j]) + 6 * bandwidth
        step = min((hi - lo) / (n_grid - 1), bandwidth / 4)
        grid = np.arange(lo, hi + step, step)
        kde = gaussian_kde_on_grid(samples[:, j], grid, bandwidth)
        truth = np.exp(-0.5 * ((grid - means[j]) / sds[j]) ** 2) / (np.sqrt(2 * np.pi) * sds[j])
        total += 0.5 * np.trapezoid(np.abs(kde - truth), grid)
    return float(total / samples.shape[1])


def log_mean_exp(values) -> float:
    """``log mean exp(values)``, stably."""
    values = np.asarray(values, dtype=float)
    return float(logsumexp(values) - np.log(values.size))
