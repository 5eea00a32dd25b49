"""Exact softmax attention: the reference every approximation is compared with.

Shapes follow one convention throughout :mod:`common.attention`: queries ``q`` are
``(..., n_q, d)``, keys ``k`` are ``(..., n_k, d)`` and values ``v`` are ``(..., n_k, d_v)``;
any leading dimensions (batch, heads) broadcast. The attention matrix is

    A = softmax(scale · Q Kᵀ)  (row-wise),   out = A V,

with ``scale = 1/sqrt(d)`` unless given. ``causal=True`` lets query ``i`` see keys
``j <= i + (n_k - n_q)`` (the usual decoder mask, aligned at the end when ``n_k > n_q``).
``dtype=torch.float64`` computes the reference in double precision.
"""

from __future__ import annotations

import math

import torch


def default_scale(d: int) -> float:
    """The softmax temperature 1/sqrt(d) of scaled dot-product attention."""
    if d <= 0:
        raise ValueError(f"head dimension must be positive, got {d}")
    return 1.0 / math.sqrt(d)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless q, k (and v) have compatible attention shapes."""
    if q.dim() < 2 or k.dim() < 2:
        raise ValueError(f"q and k need shape (..., n, d); got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the head dimension, got {q.shape[-1]} and {k.shape[-1]}")
    if v is not None:
        if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
            raise ValueError(f"v needs shape (..., n_k, d_v) with n_k = {k.shape[-2]}, got {tuple(v.shape)}")


def causal_mask(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """Boolean ``(n_q, n_k)`` mask, True where query i may attend to key j (j <= i + n_k - n_q)."""
    i = torch.arange(n_q, device=device).unsqueeze(-1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return j <= i + (n_k - n_q)


def attention_logits(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
                     causal: bool = False) -> torch.Tensor:
    """``scale · Q Kᵀ``, with masked entries set to ``-inf`` when ``causal``."""
    check_qkv(q, k)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    logits = scale * (q @ k.transpose(-1, -2))
    if causal:
        logits = logits.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return logits


def _promote(dtype, *tensors):
    return tuple(t if dtype is None else t.to(dtype) for t in tensors)


def softmax_attention_matrix(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
                             causal: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The exact attention matrix ``A = softmax(scale · Q Kᵀ)`` (rows sum to one)."""
    q, k = _promote(dtype, q, k)
    return torch.softmax(attention_logits(q, k, scale=scale, causal=causal), dim=-1)


def unnormalized_attention_matrix(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
                                  causal: bool = False, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """``exp(scale · Q Kᵀ)`` (zero where masked): the kernel matrix that random features estimate.

    Computed in float64 by default: its entries span many orders of magnitude.
    """
    q, k = _promote(dtype, q, k)
    return torch.exp(attention_logits(q, k, scale=scale, causal=causal))


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                      causal: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Exact attention output ``softmax(scale · Q Kᵀ) V`` (quadratic time and memory).

    >>> q = k = v = torch.eye(3).unsqueeze(0)
    >>> softmax_attention(q, k, v, scale=100.0).round().squeeze(0).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    check_qkv(q, k, v)
    q, k, v = _promote(dtype, q, k, v)
    return softmax_attention_matrix(q, k, scale=scale, causal=causal) @ v


def row_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each attention row; ``log n_k`` for uniform rows."""
    p = attn.clamp_min(0)
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p))).sum(-1)
