"""Scatterbrain: sparse (LSH) plus low-rank (Performer) attention with one normaliser.

Chen, Dao, Winsor, Song, Rudra, Ré, "Scatterbrain: Unifying Sparse and Low-rank Attention
Approximation" (NeurIPS 2021). The unnormalised attention exp(scale·QKᵀ) is estimated by

    Â = φ(Q)φ(K)ᵀ + S,    S_ij = exp(scale·q_iᵀk_j) − φ(q_i)ᵀφ(k_j)  if (i, j) ∈ 𝒮, else 0,

where 𝒮 is the LSH support (pairs sharing a chunk, see :mod:`.lsh`): inside the support
the estimate is exact, outside it is the Performer estimate. Because the hash is drawn
independently of the random features, E[Â_ij] = exp(scale·q_iᵀk_j) for every pair (the
estimate is **unbiased**; the paper's Theorem 1), and Var[Â_ij] = (1 − p_ij)·Var[φ(q_i)ᵀφ(k_j)],
with p_ij the probability that the pair collides. The output uses the joint normaliser

    out = (φ(Q)(φ(K)ᵀV) + S V) / (φ(Q)(φ(K)ᵀ1) + S 1),

computed in O(n·(m + n_hashes·bucket_size)·d) with sort/unsort, never forming n×n.
The normalised output is a ratio of unbiased estimates and is therefore not itself unbiased.
"""

from __future__ import annotations

import torch

from .exact import attention_logits, check_qkv, default_scale
from .lsh import LSHHash, bucketize, chunk_pairs, chunked, lsh_support, sort_rows, unsort_rows
from .performer import RandomFeatures, lowrank_terms, performer_kernel_matrix, positive_random_features


def scatterbrain_kernel_matrix(q: torch.Tensor, k: torch.Tensor, features: RandomFeatures, lsh: LSHHash, *,
                               bucket_size: int, scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """The unbiased estimate Â of exp(scale·QKᵀ): exact on the LSH support, φ(q)ᵀφ(k) elsewhere (dense)."""
    check_qkv(q, k)
    lowrank = performer_kernel_matrix(q, k, features, scale=scale, causal=causal)
    exact = torch.exp(attention_logits(q, k, scale=scale, causal=causal))
    support = lsh_support(q, k, lsh, bucket_size=bucket_size, causal=causal) > 0
    return torch.where(support, exact, lowrank)


def scatterbrain_attention_matrix(q: torch.Tensor, k: torch.Tensor, features: RandomFeatures, lsh: LSHHash, *,
                                  bucket_size: int, scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Row-normalised Scatterbrain attention matrix (dense, for error metrics; use float64)."""
    estimate = scatterbrain_kernel_matrix(q, k, features, lsh, bucket_size=bucket_size, scale=scale, causal=causal)
    return estimate / estimate.sum(-1, keepdim=True).clamp_min(torch.finfo(estimate.dtype).tiny)


def scatterbrain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, features: RandomFeatures,
                           lsh: LSHHash, *, bucket_size: int, scale: float | None = None, causal: bool = False,
                           return_log_normalizer: bool = False):
    """Scatterbrain attention output (efficient path: low-rank sums plus in-chunk corrections).

    With ``return_log_normalizer`` also returns log(Â 1), the log of each row's
    unnormalised mass at its true scale, so that the unnormalised output Â V can be recovered.
    """
    check_qkv(q, k, v)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    numerator_lr, normaliser_lr, log_lr = lowrank_terms(q, k, v, features, scale=scale, causal=causal)

    b = bucketize(q, k, lsh, bucket_size)
    logits, dup, valid = chunk_pairs(q, k, b, scale=scale, causal=causal)
    phi_q, log_q = positive_random_features(q, features, scale=scale, stabilize="row")
    phi_k, log_k = positive_random_features(k, features, scale=scale, stabilize="all")
    sphi_q = chunked(sort_rows(phi_q, b.q_perm), b.n_chunks)
    sphi_k = chunked(sort_rows(phi_k, b.k_perm), b.n_chunks)
    dots = sphi_q @ sphi_k.transpose(-1, -2)                               # φ̃(q)ᵀφ̃(k) in chunks
    slog_lr = chunked(sort_rows(log_q + log_k, b.q_perm), b.n_chunks)       # (h, ..., C, bq, 1)

    # one reference per query for every term (cancels in the normaliser): the largest log-magnitude
    masked_logits = logits.masked_fill(~valid, float("-inf"))
    chunk_max = unsort_rows(masked_logits.amax(-1, keepdim=True).flatten(-3, -2), b.q_perm).amax(0)
    reference = torch.maximum(log_lr, chunk_max)                             # (..., n_q, 1)
    sref = chunked(sort_rows(reference, b.q_perm), b.n_chunks)

    correction = torch.exp(masked_logits - sref) - torch.exp(slog_lr - sref) * dots
    correction = torch.where(valid, correction / dup.clamp_min(1).to(correction.dtype), torch.zeros_like(correction))
    sv = chunked(sort_rows(v, b.k_perm), b.n_chunks)
    numerator_sp = unsort_rows((correction @ sv).flatten(-3, -2), b.q_perm).sum(0)
    normaliser_sp = unsort_rows(correction.sum(-1, keepdim=True).flatten(-3, -2), b.q_perm).sum(0)

    lr_weight = torch.exp(log_lr - reference)
    numerator = lr_weight * numerator_lr + numerator_sp
    normaliser = lr_weight * normaliser_lr + normaliser_sp
    out = numerator / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)
    if return_log_normalizer:
        return out, torch.log(normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)) + reference
    return out
