"""The paper's Gaussian experiments (Sections 4.1 and 4.2) as functions of a seed: same leaves for every tree.

Every run draws its leaves from ``numpy.random.default_rng(seed)`` and its fusion randomness from a
second stream, so the trees (or the two preconditioning choices) compared at one seed see the same
sub-posterior samples.
"""

from __future__ import annotations

import numpy as np

from common import smc
from papers.dc_fusion.fusion import (
    GaussianTarget,
    correlated_gaussian_leaves,
    final_samples,
    integrated_absolute_distance,
    log_mean_exp,
    run_tree,
    tempered_gaussian_leaves,
)


def tempered_run(C: int, tree: str, n: int, T: float, seed: int, bandwidth: float = 0.1) -> dict:
    """Fuse ``C`` tempered N(0,1)^{1/C} sub-posteriors over ``tree`` (preconditioned, Section 4.2).

    Returns ``min_ess`` (the smallest ESS/N over every fusion step, ρ₀ and ρ₁ alike), ``min_cess``,
    ``final_ess`` (ESS/N of the root's last step), ``iad`` (against N(0, 1)), ``levels`` (number of
    levels) and the per-step diagnostics.
    """
    leaves, targets = tempered_gaussian_leaves(C, n, np.random.default_rng([seed, C]))
    rng = np.random.default_rng([seed, C, 1])
    fused, diagnostics = run_tree(leaves, targets, tree, T, rng, precondition=True)
    samples = final_samples(fused, rng)
    return {"min_ess": min(d.min_ess for d in diagnostics),
            "min_cess": min(min(d.cess_rho0, d.cess_rho1) for d in diagnostics),
            "final_ess": diagnostics[-1].ess_rho1,
            "iad": integrated_absolute_distance(samples, 0.0, 1.0, bandwidth),
            "levels": max(d.level for d in diagnostics),
            "diagnostics": diagnostics}


def bivariate_run(rho: float, precondition: bool, n: int, T: float, seed: int, bandwidth: float = 0.1) -> dict:
    """Fuse two N(0, Σ_ρ) sub-posteriors with ``Λ_c = I`` or the sample covariance (Section 4.1).

    No resampling inside the step (the official script's ``ESS_threshold = 0``): ``ess_rho0`` is the ESS/N
    of ρ₀ alone, ``ess`` the ESS/N of ρ₀ρ₁ (the reported one); ``iad`` against N(0, Σ_ρ/2)'s marginals.
    """
    leaves, targets = correlated_gaussian_leaves(rho, n, np.random.default_rng([seed, 2]))
    rng = np.random.default_rng([seed, 2, 1])
    fused, (diag,) = run_tree(leaves, targets, "fork_and_join", T, rng, precondition=precondition,
                              ess_threshold=0.0)
    samples = final_samples(fused, rng)
    return {"ess_rho0": diag.ess_rho0, "ess": diag.ess_rho1, "cess_rho1": diag.cess_rho1,
            "iad": integrated_absolute_distance(samples, [0.0, 0.0], [np.sqrt(0.5)] * 2, bandwidth)}


def rho0_ess_theory(d: int, m: int, T: float) -> float:
    """Large-N ESS/N of ρ₀ alone when ``Λ_c = Σ_c`` for ``m`` identical Gaussian children in ``d`` dimensions.

    ``Σ_c |x_c - x̃|²_{Λ⁻¹} ~ χ²_{d(m-1)}``, and ``E[e^{-aχ²_k}] = (1 + 2a)^{-k/2}``, so
    ``E[ρ₀]² / E[ρ₀²] = ((1 + 2/T) / (1 + 1/T)²)^{d(m-1)/2}`` ((3/4)^{d(m-1)/2} at T = 1).
    """
    return ((1 + 2 / T) / (1 + 1 / T) ** 2) ** (d * (m - 1) / 2)


def closed_form_vs_bridges(n_pairs: int, n_paths: int, n_steps: int, seed: int, rho: float = 0.9,
                           T: float = 1.0, precondition: bool = True) -> float:
    """Largest |closed-form log ρ₁ - Monte Carlo log ρ₁| over ``n_pairs`` endpoint pairs of N(0, Σ_ρ).

    The Monte Carlo estimate averages ``exp(-∫(φ - Φ))`` over ``n_paths`` sampled bridges with covariance
    rate ``Λ = Σ_ρ`` (``precondition``) or ``I``, the integral by the trapezoid rule on ``n_steps`` intervals.
    """
    rng = np.random.default_rng([seed, 3])
    target = GaussianTarget(np.zeros(2), np.array([[1.0, rho], [rho, 1.0]]))
    precond = target.cov if precondition else np.eye(2)
    P = target.precision
    A = P @ precond @ P
    x0, y = target.sample(n_pairs, rng), target.sample(n_pairs, rng)
    exact = target.log_rho1(x0, y, T, precond)
    worst = 0.0
    for i in range(n_pairs):
        integral = smc.bridge_path_integral(lambda x: 0.5 * np.einsum("ni,ij,nj->n", x, A, x),
                                            np.repeat(x0[i:i + 1], n_paths, 0), np.repeat(y[i:i + 1], n_paths, 0),
                                            T, n_steps, rng, precond)
        worst = max(worst, abs(log_mean_exp(-integral) - exact[i]))
    return worst
