"""Error metrics, bias over seeds, and memory and FLOP counters for attention approximations.

- :func:`relative_frobenius_error`: ‖Â − A‖_F / ‖A‖_F (of the attention matrix, or of its
  product with V when given outputs).
- :func:`max_log_ratio`: max |log(Â_ij / A_ij)|, the quantity RITA's guarantee bounds.
- :class:`SeedMoments` and :func:`bias_report`: mean of an estimator over independent random
  draws, its relative bias ‖mean − A‖_F/‖A‖_F, the Monte Carlo noise floor of that number,
  and a debiased bias estimate (E‖mean − A‖² = ‖bias‖² + tr Cov / S).
- :func:`attention_memory` and :func:`attention_flops`: what each method stores and computes.

The memory ``budget`` of a method is the number of attention entries it keeps per query
row times n_q: m features for low rank (φ(q_i) has m entries; φ(K)ᵀV is m × d_v whatever n
is), ``n_hashes · bucket_size`` scores for LSH, their sum for Scatterbrain, N group scores
for group attention, and n_k for exact attention. ``total`` also counts the key-side
features and summaries. Equal ``budget`` is the equal-memory comparison of the Scatterbrain paper.
"""

from __future__ import annotations

import math

import torch


def relative_frobenius_error(approx: torch.Tensor, exact: torch.Tensor, *, dims=None) -> torch.Tensor:
    """‖approx − exact‖_F / ‖exact‖_F over ``dims`` (default: all dimensions, a scalar)."""
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {tuple(approx.shape)} vs {tuple(exact.shape)}")
    diff = (approx - exact).to(torch.float64)
    exact = exact.to(torch.float64)
    if dims is None:
        return diff.norm() / exact.norm()
    return diff.square().sum(dims).sqrt() / exact.square().sum(dims).sqrt()


def attention_errors(approx_attn: torch.Tensor, exact_attn: torch.Tensor, v: torch.Tensor) -> dict:
    """Relative Frobenius errors of the attention matrix (``attn``) and of its product with V (``out``)."""
    v = v.to(torch.float64)
    return {
        "attn": float(relative_frobenius_error(approx_attn, exact_attn)),
        "out": float(relative_frobenius_error(approx_attn.to(torch.float64) @ v, exact_attn.to(torch.float64) @ v)),
    }


def max_log_ratio(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """max over entries with exact > 0 of |log(approx / exact)| (inf if such an approx entry is 0)."""
    approx, exact = approx.to(torch.float64), exact.to(torch.float64)
    positive = exact > 0
    ratio = torch.where(positive, approx / torch.where(positive, exact, torch.ones_like(exact)), torch.ones_like(exact))
    return torch.log(ratio).abs().amax()


class SeedMoments:
    """Running sum and sum of squares of an estimate over independent draws (float64)."""

    def __init__(self):
        self.count = 0
        self.total = None
        self.total_sq = 0.0

    def add(self, estimate: torch.Tensor) -> None:
        estimate = estimate.detach().to(torch.float64)
        self.total = estimate.clone() if self.total is None else self.total + estimate
        self.total_sq = self.total_sq + float(estimate.square().sum())
        self.count += 1

    @property
    def mean(self) -> torch.Tensor:
        if not self.count:
            raise ValueError("no estimates added")
        return self.total / self.count

    @property
    def variance_sum(self) -> float:
        """Unbiased estimate of E‖X − E X‖_F² (total variance over entries)."""
        if self.count < 2:
            raise ValueError("need at least two estimates for a variance")
        mean = self.mean
        return (self.total_sq - self.count * float(mean.square().sum())) / (self.count - 1)


def bias_report(moments: SeedMoments, exact: torch.Tensor) -> dict:
    """Relative bias of an estimator from its draws, with the Monte Carlo noise floor.

    - ``raw``: ‖mean − A‖_F/‖A‖_F; for an unbiased estimator it shrinks like 1/sqrt(S);
    - ``noise_floor``: sqrt(tr Cov / S)/‖A‖_F, what ``raw`` would be without bias;
    - ``debiased``: sqrt(max(0, ‖mean − A‖² − tr Cov / S))/‖A‖_F, an estimate of ‖bias‖/‖A‖;
    - ``per_draw``: the typical relative error of one draw, sqrt(E‖X − A‖²)/‖A‖ (approx).
    """
    exact = exact.to(torch.float64)
    norm_sq = float(exact.square().sum())
    err_sq = float((moments.mean - exact).square().sum())
    noise_sq = moments.variance_sum / moments.count
    return {
        "raw": math.sqrt(err_sq / norm_sq),
        "noise_floor": math.sqrt(noise_sq / norm_sq),
        "debiased": math.sqrt(max(0.0, err_sq - noise_sq) / norm_sq),
        "per_draw": math.sqrt((moments.variance_sum + err_sq) / norm_sq),
        "draws": moments.count,
    }


METHODS = ("exact", "performer", "lsh", "scatterbrain", "group")


def attention_memory(method: str, n_q: int, n_k: int, d: int, d_v: int, *, num_features: int = 0,
                     bucket_size: int = 0, n_hashes: int = 1, n_groups: int = 0) -> dict:
    """``{"budget", "total"}`` floats an attention method keeps (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    m, b, g = num_features, bucket_size * n_hashes, n_groups
    if method == "exact":
        budget, total = n_q * n_k, n_q * n_k
    elif method == "performer":
        budget, total = n_q * m, (n_q + n_k) * m + m * (d_v + 1)
    elif method == "lsh":
        budget, total = n_q * b, n_q * b + (n_q + n_k) * n_hashes
    elif method == "scatterbrain":
        budget = n_q * (m + b)
        total = (n_q + n_k) * m + m * (d_v + 1) + n_q * b + (n_q + n_k) * n_hashes
    else:
        budget, total = n_q * g, n_q * g + g * (d + d_v + 1) + n_k
    return {"budget": budget, "total": total}


def attention_flops(method: str, n_q: int, n_k: int, d: int, d_v: int, *, num_features: int = 0,
                    bucket_size: int = 0, n_hashes: int = 1, n_groups: int = 0, n_iter: int = 3) -> int:
    """Multiply-adds counted twice (FLOPs) of the dominant products of each method, non-causal.

    exact: QKᵀ and AV; performer: feature projections of Q and K, φ(K)ᵀV, φ(Q)(·);
    lsh: hashing projections, in-chunk QKᵀ and AV per round; scatterbrain: both plus the
    in-chunk φ(q)ᵀφ(k); group: k-means distances (n_iter + 1 assignments), centroid scores and AV.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    m, b = num_features, bucket_size
    if method == "exact":
        return 2 * n_q * n_k * (d + d_v)
    if method == "performer":
        return 2 * (n_q + n_k) * m * d + 2 * n_k * m * d_v + 2 * n_q * m * d_v
    lsh = n_hashes * (2 * (n_q + n_k) * d + 2 * n_q * b * (d + d_v))
    if method == "lsh":
        return lsh
    if method == "scatterbrain":
        return attention_flops("performer", n_q, n_k, d, d_v, num_features=m) + lsh + n_hashes * 2 * n_q * b * m
    return (n_iter + 1) * 2 * n_k * n_groups * d + 2 * n_q * n_groups * (d + d_v)
