"""Performer FAVOR+: positive orthogonal random features for the softmax kernel (low rank).

Choromanski et al., "Rethinking Attention with Performers" (ICLR 2021). With
x̃ = sqrt(scale)·x and rows w_1..w_r of a random matrix W, marginally w_i ~ N(0, I_d),

    φ(x) = exp(W x̃ − ‖x̃‖²/2) / sqrt(m)                        (positive random features, Lemma 1)
    φ(x) = exp(−‖x̃‖²/2) / sqrt(m) · [exp(W x̃), exp(−W x̃)]        (antithetic / "hyperbolic cosine" variant)

gives E[φ(q)ᵀφ(k)] = exp(scale·qᵀk) for every pair, so φ(Q)φ(K)ᵀ is an unbiased,
rank-m estimate of the unnormalised attention matrix exp(scale·QKᵀ), and

    out = D⁻¹ φ(Q) (φ(K)ᵀ V),   D = diag(φ(Q) φ(K)ᵀ 1)

costs O(n·m·d) instead of O(n²·d). The mean squared error of one iid feature pair is
exp(2·s)·(exp(‖q̃+k̃‖²) − 1)/m with s = q̃ᵀk̃ (Performer Lemma 2); orthogonal blocks of W
(rows orthogonal within each d×d block, lengths drawn from the chi distribution so each
row stays marginally Gaussian and the estimate unbiased) lower it further (Theorem 2).

Features are returned as ``(φ̃, log_scale)`` with φ = φ̃·exp(log_scale): the exponentials
span hundreds of orders of magnitude at low softmax temperature, and the common factor
cancels in the normaliser. ``stabilize="row"`` factors out each row's maximum (queries),
``"all"`` one maximum over the sequence (keys, whose features are summed over positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .exact import causal_mask, check_qkv, default_scale


@dataclass(frozen=True)
class RandomFeatures:
    """One draw of the random projection ``W`` (``(rows, d)``) of a feature map."""

    weights: torch.Tensor
    antithetic: bool = False

    @property
    def num_features(self) -> int:
        """m, the length of φ(x) (twice the rows of W for antithetic features)."""
        return self.weights.shape[0] * (2 if self.antithetic else 1)

    @property
    def dim(self) -> int:
        return self.weights.shape[1]


def gaussian_orthogonal_random_matrix(n_rows: int, d: int, *, generator: torch.Generator | None = None,
                                      scaling: str = "chi", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n_rows, d)`` matrix whose rows are orthogonal within blocks of d (FAVOR+'s ORFs).

    Each block is a Haar-random orthogonal matrix (QR of a Gaussian matrix with the
    signs of R's diagonal fixed). ``scaling="chi"`` gives row lengths of independent
    Gaussian vectors, so every row is marginally N(0, I_d) and the estimator stays
    unbiased; ``"sqrt_d"`` fixes every length to sqrt(d) (lower variance, slightly biased).
    """
    if n_rows <= 0 or d <= 0:
        raise ValueError(f"n_rows and d must be positive, got {n_rows} and {d}")
    if scaling not in ("chi", "sqrt_d"):
        raise ValueError(f"scaling must be 'chi' or 'sqrt_d', got {scaling!r}")
    blocks = []
    for _ in range(math.ceil(n_rows / d)):
        gaussian = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar measure
        blocks.append(q.T)  # rows orthonormal
    rows = torch.cat(blocks, dim=0)[:n_rows]
    if scaling == "chi":
        lengths = torch.randn(n_rows, d, generator=generator, dtype=torch.float64).norm(dim=1)
    else:
        lengths = torch.full((n_rows,), math.sqrt(d), dtype=torch.float64)
    return (rows * lengths.unsqueeze(1)).to(dtype)


def draw_random_features(d: int, num_features: int, *, orthogonal: bool = True, antithetic: bool = False,
                         generator: torch.Generator | None = None, scaling: str = "chi",
                         dtype: torch.dtype = torch.float64) -> RandomFeatures:
    """Draw the projection of an m-feature positive random feature map for head dimension d."""
    if num_features <= 0:
        raise ValueError(f"num_features must be positive, got {num_features}")
    if antithetic and num_features % 2:
        raise ValueError(f"antithetic features come in pairs; num_features must be even, got {num_features}")
    rows = num_features // 2 if antithetic else num_features
    if orthogonal:
        weights = gaussian_orthogonal_random_matrix(rows, d, generator=generator, scaling=scaling, dtype=dtype)
    else:
        weights = torch.randn(rows, d, generator=generator, dtype=torch.float64).to(dtype)
    return RandomFeatures(weights, antithetic)


def positive_random_features(x: torch.Tensor, features: RandomFeatures, *, scale: float | None = None,
                             stabilize: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """FAVOR+ features of ``x`` (``(..., n, d)``) as ``(φ̃, log_scale)`` with φ(x) = φ̃·exp(log_scale).

    ``stabilize="row"``: log_scale is ``(..., n, 1)``, each row's largest log-feature;
    ``"all"``: ``(..., 1, 1)``, the largest over the sequence (use it for keys).
    """
    if x.shape[-1] != features.dim:
        raise ValueError(f"features were drawn for d={features.dim}, x has d={x.shape[-1]}")
    if stabilize not in ("row", "all"):
        raise ValueError(f"stabilize must be 'row' or 'all', got {stabilize!r}")
    scale = default_scale(x.shape[-1]) if scale is None else scale
    x = x * math.sqrt(scale)
    proj = x @ features.weights.to(x.dtype).T
    if features.antithetic:
        proj = torch.cat([proj, -proj], dim=-1)
    log_phi = proj - 0.5 * x.square().sum(-1, keepdim=True) - 0.5 * math.log(features.num_features)
    if stabilize == "row":
        log_scale = log_phi.amax(dim=-1, keepdim=True)
    else:
        log_scale = log_phi.amax(dim=(-1, -2), keepdim=True)
    return torch.exp(log_phi - log_scale), log_scale.detach()


def performer_kernel_matrix(q: torch.Tensor, k: torch.Tensor, features: RandomFeatures, *,
                            scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """The unbiased estimate φ(Q)φ(K)ᵀ of exp(scale·QKᵀ), at its true scale (dense; use float64)."""
    check_qkv(q, k)
    phi_q, log_q = positive_random_features(q, features, scale=scale, stabilize="row")
    phi_k, log_k = positive_random_features(k, features, scale=scale, stabilize="row")
    estimate = (phi_q @ phi_k.transpose(-1, -2)) * torch.exp(log_q + log_k.transpose(-1, -2))
    if causal:
        estimate = estimate * causal_mask(q.shape[-2], k.shape[-2], q.device)
    return estimate


def performer_attention_matrix(q: torch.Tensor, k: torch.Tensor, features: RandomFeatures, *,
                               scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """The row-normalised Performer attention matrix D⁻¹φ(Q)φ(K)ᵀ (dense, for error metrics)."""
    check_qkv(q, k)
    phi_q, _ = positive_random_features(q, features, scale=scale, stabilize="row")
    phi_k, _ = positive_random_features(k, features, scale=scale, stabilize="all")
    estimate = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        estimate = estimate * causal_mask(q.shape[-2], k.shape[-2], q.device)
    return estimate / estimate.sum(-1, keepdim=True).clamp_min(torch.finfo(estimate.dtype).tiny)


def lowrank_terms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, features: RandomFeatures, *,
                  scale: float | None = None, causal: bool = False):
    """``(numerator, normaliser, log_scale)`` of the Performer estimate in O(n·m·d).

    numerator·exp(log_scale) = φ(Q)φ(K)ᵀV and normaliser·exp(log_scale) = φ(Q)φ(K)ᵀ1 at
    their true scale; ``log_scale`` is ``(..., n_q, 1)``. With ``causal`` the sums over
    keys are prefix sums (query i sees keys j <= i + n_k - n_q).
    """
    check_qkv(q, k, v)
    phi_q, log_q = positive_random_features(q, features, scale=scale, stabilize="row")
    phi_k, log_k = positive_random_features(k, features, scale=scale, stabilize="all")
    if not causal:
        kv = phi_k.transpose(-1, -2) @ v                    # (..., m, d_v)
        numerator = phi_q @ kv
        normaliser = phi_q @ phi_k.sum(-2).unsqueeze(-1)     # (..., n_q, 1)
    else:
        n_q, n_k = q.shape[-2], k.shape[-2]
        if n_k < n_q:
            raise ValueError("causal attention needs n_k >= n_q")
        kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)[..., n_k - n_q:, :, :]  # (..., n_q, m, d_v)
        ksum = torch.cumsum(phi_k, dim=-2)[..., n_k - n_q:, :]                                    # (..., n_q, m)
        numerator = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)
        normaliser = (phi_q * ksum).sum(-1, keepdim=True)
    return numerator, normaliser, log_q + log_k


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, features: RandomFeatures, *,
                        scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Performer (FAVOR+) attention output D⁻¹ φ(Q)(φ(K)ᵀV), linear in the sequence length."""
    numerator, normaliser, _ = lowrank_terms(q, k, v, features, scale=scale, causal=causal)
    return numerator / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)


def performer_pair_mse(q: torch.Tensor, k: torch.Tensor, num_features: int, *, scale: float | None = None) -> torch.Tensor:
    """Closed-form MSE of the iid positive-feature estimate of exp(scale·qᵀk) (Performer Lemma 2).

    MSE = exp(2·q̃ᵀk̃)·(exp(‖q̃ + k̃‖²) − 1)/m for matching rows of q and k (``(..., d)``).
    """
    scale = default_scale(q.shape[-1]) if scale is None else scale
    qs, ks = q * math.sqrt(scale), k * math.sqrt(scale)
    return torch.exp(2 * (qs * ks).sum(-1)) * torch.expm1((qs + ks).square().sum(-1)) / num_features
