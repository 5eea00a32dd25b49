"""Linear attention with learned feature maps, sliding-window attention, and the LoLCATs hybrid.

**Linear attention** (Katharopoulos et al. 2020) replaces the softmax kernel exp(qᵀk/√d) by a
dot product of feature maps φ(q)ᵀφ(k). For a causal decoder, query i then reads

    y_i = Σ_{j≤i} φ(q_i)ᵀφ(k_j) v_j / Σ_{j≤i} φ(q_i)ᵀφ(k_j)
        = φ(q_i)ᵀ S_i / φ(q_i)ᵀ z_i,   S_i = Σ_{j≤i} φ(k_j) v_jᵀ,  z_i = Σ_{j≤i} φ(k_j),        (1)

so the state (S_i, z_i) is a running sum: O(n) time and O(1) memory per decoded token.
:func:`linear_attention` computes (1) with cumulative sums; :func:`linear_attention_matrix`
builds the normalised n × n matrix (the quadratic form, used as reference and for short contexts).

**Feature maps** (all learnable per head, weights ``(heads, d, f)``, applied to ``(..., heads, n, d)``):

- T2R (Kasai et al. 2021, "Finetuning Pretrained Transformers into RNNs"): φ(x) = relu(W x + b),
  trained end to end by fine-tuning; :class:`T2RFeatureMap` also offers ``elu``: φ(x) = 1 + elu(W x + b)
  (the positive ELU map of Katharopoulos et al.).
- Hedgehog (Zhang et al. 2024): φ(x) = [softmax(W x), softmax(−W x)] (softmax over the f features,
  so 2f features, all positive), trained to mimic softmax attention (:class:`HedgehogFeatureMap`).

**Sliding-window attention** lets query i see only the last ``w`` keys, W(i) = {j : i − w < j ≤ i},
with ordinary softmax weights (:func:`sliding_window_attention`).

**LoLCATs hybrid** (Zhang et al., ICLR 2025, Section 3.2, Eq. 6): exact softmax inside the window,
linear attention for everything older, under **one shared normaliser**:

    ã_ij = γ_h · exp(s_ij − m_i)      j ∈ W(i)           (s_ij = qᵢᵀk_j/√d, m_i = max_{j∈W(i)} s_ij)
    ã_ij = λ · φ(q_i)ᵀφ(k_j)           j ≤ i − w
    y_i  = Σ_j ã_ij v_j / Σ_j ã_ij,                                                              (2)

with a learnable window factor γ_h = sigmoid(g_h) per head (the official code initialises
g = logit(0.1)) and λ = 1 (or 1 − γ_h with ``affine=True``). As in the official
``hybrid_attention_quadratic`` the window logits are shifted by their row maximum m_i, so γ_h
weighs the window relative to the linear part after that shift. With w ≥ n the linear part is
empty and (2) is exactly causal softmax attention; with w = 0 it is linear attention (1).

:class:`HybridAttention` packages a pair of feature maps, a window and the window factors as a
model's ``attn_fn(q, k, v) -> y`` hook (causal, shapes ``(B, H, T, d)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .exact import causal_mask, check_qkv, default_scale

FEATURE_MAPS = ("t2r_relu", "t2r_elu", "hedgehog", "elu")


# ------------------------------------------------------------------ feature maps


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """The parameter-free positive map φ(x) = 1 + elu(x) (Katharopoulos et al. 2020)."""
    return 1.0 + F.elu(x)


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None,
             dtype: torch.dtype) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * bound


class PerHeadProjection(nn.Module):
    """The learnable part x ↦ x W_h (+ b_h) of a feature map, one ``(d, f)`` matrix per head.

    Inputs are ``(..., heads, n, d)``. Weights are drawn U(−b, b) with b = sqrt(6 / (d·f)),
    the bound that the official code's ``kaiming_uniform_`` gives a ``(heads, d, f)`` tensor.
    """

    def __init__(self, n_heads: int, head_dim: int, feature_dim: int, *, bias: bool = False,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if min(n_heads, head_dim, feature_dim) <= 0:
            raise ValueError(f"n_heads, head_dim and feature_dim must be positive, got "
                             f"{n_heads}, {head_dim}, {feature_dim}")
        bound = math.sqrt(6.0 / (head_dim * feature_dim))
        self.weight = nn.Parameter(_uniform((n_heads, head_dim, feature_dim), bound, generator, dtype))
        self.bias = nn.Parameter(torch.zeros(n_heads, 1, feature_dim, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-3] != self.weight.shape[0] or x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"expected (..., {self.weight.shape[0]}, n, {self.weight.shape[1]}), got {tuple(x.shape)}")
        out = torch.einsum("...hnd,hdf->...hnf", x, self.weight)
        return out if self.bias is None else out + self.bias


class T2RFeatureMap(nn.Module):
    """T2R: φ(x) = relu(W x + b) (``activation="relu"``) or 1 + elu(W x + b) (``"elu"``).

    Kasai et al. (2021) learn W and b by fine-tuning the converted model end to end; the
    ReLU output can be exactly zero, so ``eps`` clamps it (as the official LoLCATs code does).
    """

    def __init__(self, n_heads: int, head_dim: int, feature_dim: int, *, activation: str = "relu",
                 eps: float = 1e-12, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if activation not in ("relu", "elu"):
            raise ValueError(f"activation must be 'relu' or 'elu', got {activation!r}")
        self.activation = activation
        self.eps = eps
        self.proj = PerHeadProjection(n_heads, head_dim, feature_dim, bias=True, generator=generator, dtype=dtype)

    @property
    def num_features(self) -> int:
        return self.proj.weight.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(x)
        phi = F.relu(z) if self.activation == "relu" else elu_feature_map(z)
        return phi.clamp_min(self.eps)


class HedgehogFeatureMap(nn.Module):
    """Hedgehog: φ(x) = [softmax(x W), softmax(−x W)] over the f projected features (2f outputs).

    Zhang et al. (2024), "The Hedgehog & the Porcupine"; LoLCATs (Section 3.1) uses it with an
    untied linear map per head and no bias (official ``SoftmaxDim`` with ``FeatureMapMLP``).
    Both halves are positive, so φ(q)ᵀφ(k) > 0 and the normaliser never vanishes.
    """

    def __init__(self, n_heads: int, head_dim: int, feature_dim: int, *, eps: float = 1e-12,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.proj = PerHeadProjection(n_heads, head_dim, feature_dim, bias=False, generator=generator, dtype=dtype)

    @property
    def num_features(self) -> int:
        return 2 * self.proj.weight.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(x)
        return torch.cat([torch.softmax(z, dim=-1), torch.softmax(-z, dim=-1)], dim=-1).clamp_min(self.eps)


class EluFeatureMap(nn.Module):
    """The fixed map 1 + elu(x) as a module (no parameters; ``num_features`` = d)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    @property
    def num_features(self) -> int:
        return self.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elu_feature_map(x)


def make_feature_map(kind: str, n_heads: int, head_dim: int, feature_dim: int | None = None, *,
                     generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A feature map by name: ``t2r_relu``, ``t2r_elu``, ``hedgehog`` or ``elu`` (fixed).

    ``feature_dim`` is the width of the projection (Hedgehog outputs twice that); by default
    ``head_dim`` for T2R and ``head_dim // 2`` for Hedgehog, so both give ``head_dim`` features
    (the official configs: T2R 128 and Hedgehog 2·64 for head dimension 128).
    """
    if kind not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {kind!r}; choose from {', '.join(FEATURE_MAPS)}")
    if kind == "elu":
        return EluFeatureMap(head_dim)
    if kind == "hedgehog":
        return HedgehogFeatureMap(n_heads, head_dim, feature_dim or max(1, head_dim // 2), generator=generator,
                                  dtype=dtype)
    return T2RFeatureMap(n_heads, head_dim, feature_dim or head_dim, activation=kind.split("_")[1],
                         generator=generator, dtype=dtype)


# ------------------------------------------------------------------ linear attention


def _check_features(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor) -> None:
    check_qkv(phi_q, phi_k, v)


def linear_attention_matrix(phi_q: torch.Tensor, phi_k: torch.Tensor, *, causal: bool = True,
                            eps: float = 1e-12) -> torch.Tensor:
    """The normalised linear-attention matrix A_ij = φ(q_i)ᵀφ(k_j) / Σ_j' φ(q_i)ᵀφ(k_j') (quadratic form of Eq. 1)."""
    check_qkv(phi_q, phi_k)
    a = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        a = a.masked_fill(~causal_mask(phi_q.shape[-2], phi_k.shape[-2], phi_q.device), 0.0)
    return a / (a.sum(-1, keepdim=True) + eps)


def linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                     eps: float = 1e-12) -> torch.Tensor:
    """Eq. (1) in O(n): y_i = φ(q_i)ᵀS_i / φ(q_i)ᵀz_i with S, z cumulative sums over keys (causal),
    or the totals φ(K)ᵀV and φ(K)ᵀ1 (non-causal). Causal needs n_q = n_k."""
    _check_features(phi_q, phi_k, v)
    if not causal:
        kv = phi_k.transpose(-1, -2) @ v
        z = phi_k.sum(-2)
        return (phi_q @ kv) / ((phi_q * z.unsqueeze(-2)).sum(-1, keepdim=True) + eps)
    if phi_q.shape[-2] != phi_k.shape[-2]:
        raise ValueError("causal linear attention via cumulative sums needs as many queries as keys")
    state = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)      # S_i: (..., n, f, d_v)
    z = torch.cumsum(phi_k, dim=-2)                                          # z_i: (..., n, f)
    num = (phi_q.unsqueeze(-2) @ state).squeeze(-2)
    return num / ((phi_q * z).sum(-1, keepdim=True) + eps)


# ------------------------------------------------------------------ sliding window and the hybrid


def sliding_window_mask(n_q: int, n_k: int, window: int, device=None) -> torch.Tensor:
    """Boolean ``(n_q, n_k)``: True for the last ``window`` keys up to and including query i's position.

    Positions are aligned at the end (query i sits at key position i + n_k − n_q), as in
    :func:`common.attention.causal_mask`.
    """
    if window < 0:
        raise ValueError(f"window must be non-negative, got {window}")
    offset = n_k - n_q
    i = torch.arange(n_q, device=device).unsqueeze(-1) + offset
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return (j <= i) & (j > i - window)


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *,
                             scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention restricted to the last ``window`` keys (window ≥ 1)."""
    check_qkv(q, k, v)
    if window < 1:
        raise ValueError(f"sliding-window attention needs window >= 1, got {window}")
    scale = default_scale(q.shape[-1]) if scale is None else scale
    logits = scale * (q @ k.transpose(-1, -2))
    logits = logits.masked_fill(~sliding_window_mask(q.shape[-2], k.shape[-2], window, q.device), float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def _factor(factor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-head ``(H,)`` factor shaped to broadcast over ``(..., H, n, n)``."""
    f = torch.as_tensor(factor, dtype=like.dtype, device=like.device)
    return f.reshape(-1, 1, 1) if f.dim() == 1 else f


def hybrid_attention_weights(q: torch.Tensor, k: torch.Tensor, phi_q: torch.Tensor, phi_k: torch.Tensor,
                             window: int, window_factor=1.0, linear_factor=1.0, *,
                             scale: float | None = None) -> torch.Tensor:
    """The unnormalised weights ã_ij of Eq. (2) (zero outside the causal mask).

    ``window_factor`` γ and ``linear_factor`` λ are scalars or per-head ``(H,)`` tensors
    (heads at dimension −3 of q).
    """
    check_qkv(q, k)
    check_qkv(phi_q, phi_k)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    in_window = sliding_window_mask(n_q, n_k, window, q.device)
    in_linear = causal_mask(n_q, n_k, q.device) & ~in_window
    logits = (scale * (q @ k.transpose(-1, -2))).masked_fill(~in_window, float("-inf"))
    row_max = logits.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    a_window = _factor(window_factor, logits) * torch.exp(logits - row_max)
    a_linear = _factor(linear_factor, logits) * (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~in_linear, 0.0)
    return a_window + a_linear


def hybrid_attention_matrix(q, k, phi_q, phi_k, window: int, window_factor=1.0, linear_factor=1.0, *,
                            scale: float | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (2)'s row-normalised attention matrix (rows sum to one)."""
    a = hybrid_attention_weights(q, k, phi_q, phi_k, window, window_factor, linear_factor, scale=scale)
    return a / (a.sum(-1, keepdim=True) + eps)


def hybrid_attention(q, k, v, phi_q, phi_k, window: int, window_factor=1.0, linear_factor=1.0, *,
                     scale: float | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (2): softmax inside the sliding window plus linear attention below it, one normaliser.

    Quadratic in n (like the official ``hybrid_attention_quadratic``, which LoLCATs trains with);
    :func:`hybrid_attention_recurrent` gives the same output in O(n·(w + f·d)).
    """
    check_qkv(q, k, v)
    return hybrid_attention_matrix(q, k, phi_q, phi_k, window, window_factor, linear_factor, scale=scale,
                                   eps=eps) @ v


def hybrid_attention_recurrent(q, k, v, phi_q, phi_k, window: int, window_factor=1.0, linear_factor=1.0, *,
                               scale: float | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (2) without the n × n matrix: a banded softmax over the last w keys plus the linear
    state (S, z) of Eq. (1) summed over keys j ≤ i − w (a cumulative sum shifted by w). Needs n_q = n_k."""
    check_qkv(q, k, v)
    n, w = q.shape[-2], window
    if k.shape[-2] != n:
        raise ValueError("the recurrent hybrid needs as many queries as keys")
    if w < 1:
        raise ValueError(f"window must be >= 1, got {w}")
    scale = default_scale(q.shape[-1]) if scale is None else scale
    pad = [0, 0, w - 1, 0]
    k_band = F.pad(k, pad).unfold(-2, w, 1).transpose(-1, -2)                  # (..., n, w, d): keys i-w+1..i
    v_band = F.pad(v, pad).unfold(-2, w, 1).transpose(-1, -2)
    logits = scale * (k_band @ q.unsqueeze(-1)).squeeze(-1)                    # (..., n, w)
    valid = (torch.arange(n, device=q.device).unsqueeze(-1) - (w - 1) + torch.arange(w, device=q.device)) >= 0
    logits = logits.masked_fill(~valid, float("-inf"))
    gamma = _factor(window_factor, logits)
    lam = _factor(linear_factor, logits)
    e = gamma * torch.exp(logits - logits.amax(-1, keepdim=True))
    num = (e.unsqueeze(-2) @ v_band).squeeze(-2)
    den = e.sum(-1, keepdim=True)
    # linear part: state over keys j <= i - w, i.e. the inclusive cumulative sum at i - w
    state = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
    z = torch.cumsum(phi_k, dim=-2)
    state = F.pad(state, [0, 0, 0, 0, w, 0])[..., :n, :, :]
    z = F.pad(z, [0, 0, w, 0])[..., :n, :]
    lin_num = (phi_q.unsqueeze(-2) @ state).squeeze(-2)
    lin_den = (phi_q * z).sum(-1, keepdim=True)
    return (num + lam * lin_num) / (den + lam * lin_den + eps)


# ------------------------------------------------------------------ the attn_fn hook


def window_factor_logit(value: float) -> float:
    """logit(value): the parameter g with sigmoid(g) = value (LoLCATs initialises γ = 0.1)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"a window factor must lie in (0, 1), got {value}")
    return math.log(value / (1.0 - value))


class HybridAttention(nn.Module):
    """A model's ``attn_fn(q, k, v) -> y`` for linear (``window=0``) or LoLCATs hybrid attention.

    Holds separate query and key feature maps (untied, as in LoLCATs' configs), the window size
    and the per-head window-factor logits g_h (γ_h = sigmoid(g_h), Eq. 2). Inputs and output are
    ``(B, H, T, d)``; attention is causal. ``recurrent=True`` uses the O(n) paths instead of the
    quadratic forms (same output up to rounding).
    """

    def __init__(self, feature_map_q: nn.Module, feature_map_k: nn.Module, n_heads: int, *, window: int = 0,
                 init_window_factor: float = 0.1, affine: bool = False, recurrent: bool = False,
                 eps: float = 1e-12):
        super().__init__()
        if window < 0:
            raise ValueError(f"window must be non-negative, got {window}")
        self.feature_map_q = feature_map_q
        self.feature_map_k = feature_map_k
        self.window = window
        self.affine = affine
        self.recurrent = recurrent
        self.eps = eps
        self.window_factors = nn.Parameter(torch.full((n_heads,), window_factor_logit(init_window_factor)))
        if window == 0:
            self.window_factors.requires_grad_(False)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(γ_h, λ_h): the window and linear weights of Eq. (2)."""
        gamma = torch.sigmoid(self.window_factors)
        return gamma, (1.0 - gamma) if self.affine else 1.0

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        phi_q, phi_k = self.feature_map_q(q), self.feature_map_k(k)
        if self.window == 0:
            if self.recurrent:
                return linear_attention(phi_q, phi_k, v, causal=True, eps=self.eps)
            return linear_attention_matrix(phi_q, phi_k, causal=True, eps=self.eps) @ v
        gamma, lam = self.factors()
        fn = hybrid_attention_recurrent if self.recurrent else hybrid_attention
        return fn(q, k, v, phi_q, phi_k, self.window, gamma.to(q.dtype), lam, eps=self.eps)

    def extra_repr(self) -> str:
        return f"window={self.window}, affine={self.affine}, recurrent={self.recurrent}"


class SlidingWindowAttention(nn.Module):
    """A model's ``attn_fn`` that keeps only causal softmax over the last ``window`` keys (no linear part,
    no parameters): the sliding-window-only control of a hybrid. Inputs and output are ``(B, H, T, d)``."""

    def __init__(self, window: int):
        super().__init__()
        if window < 1:
            raise ValueError(f"sliding-window attention needs window >= 1, got {window}")
        self.window = window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sliding_window_attention(q, k, v, self.window)

    def extra_repr(self) -> str:
        return f"window={self.window}"


def make_hybrid_attention(kind: str, n_heads: int, head_dim: int, *, window: int = 0,
                          feature_dim: int | None = None, init_window_factor: float = 0.1,
                          generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                          **kwargs) -> HybridAttention:
    """One layer's ``attn_fn``: untied query and key feature maps of ``kind`` plus an optional window."""
    fq = make_feature_map(kind, n_heads, head_dim, feature_dim, generator=generator, dtype=dtype)
    fk = make_feature_map(kind, n_heads, head_dim, feature_dim, generator=generator, dtype=dtype)
    return HybridAttention(fq, fk, n_heads, window=window, init_window_factor=init_window_factor, **kwargs)
