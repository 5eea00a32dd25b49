"""LSH bucketing with sort and unsort: Reformer- and SMYRF-style sparse attention.

Locality-sensitive hashing puts each query with the keys most likely to dominate its
softmax row. Both hash families here end the same way: queries and keys are **sorted**
by their hash code (ties broken by position), the sorted sequences are cut into
``n/bucket_size`` equal chunks, chunk c of the queries attends to chunk c of the keys,
and the outputs are **unsorted** back to the original order. Equal chunks make every
query attend to exactly ``bucket_size`` keys per round (balanced buckets), so memory is
``n_hashes · n · bucket_size`` scores.

- ``kind="angular"`` (Reformer, Kitaev et al. 2020): a random rotation R (d × b/2) and
  h(x) = argmax([xR, −xR]), one of b buckets, applied to queries and keys alike.
- ``kind="xbox"`` (SMYRF, Daras et al. 2020): the asymmetric XBOX+ transform
  q ↦ [q, 0, sqrt(M² − ‖q‖²)], k ↦ [k, sqrt(M² − ‖k‖²), 0] with M² = max‖q‖² + max‖k‖², which
  turns maximum inner product into nearest neighbour (‖q′ − k′‖² = 2M² − 2qᵀk), then an
  E2LSH Gaussian projection whose value is the sort key (adaptive clustering).

With several rounds (``n_hashes``) a query attends to the union of its chunks; pairs
found in r rounds are counted once by subtracting log r from their logit in every round,
and the rounds are combined with their log-sum-exp weights, so the result is exactly the
softmax restricted to the union support (as in Reformer and the official Scatterbrain code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .exact import check_qkv, default_scale

KINDS = ("angular", "xbox")


@dataclass(frozen=True)
class LSHHash:
    """One draw of the hash functions: ``kind`` and its random projections (one per round)."""

    kind: str
    projections: torch.Tensor  # angular: (n_hashes, d, n_buckets // 2); xbox: (n_hashes, d + 2)

    @property
    def n_hashes(self) -> int:
        return self.projections.shape[0]


def draw_lsh(d: int, *, n_hashes: int = 1, kind: str = "angular", n_buckets: int = 8,
             generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> LSHHash:
    """Draw ``n_hashes`` rounds of angular (Reformer) or XBOX+/E2LSH (SMYRF) hashing for dimension d."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n_hashes < 1:
        raise ValueError(f"n_hashes must be at least 1, got {n_hashes}")
    if kind == "angular":
        if n_buckets < 2 or n_buckets % 2:
            raise ValueError(f"angular LSH needs an even number of buckets >= 2, got {n_buckets}")
        shape = (n_hashes, d, n_buckets // 2)
    else:
        shape = (n_hashes, d + 2)
    return LSHHash(kind, torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype))


def xbox_plus(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The XBOX+ asymmetric transform (SMYRF): Euclidean distance of the outputs is 2M² − 2qᵀk."""
    q_sq = q.square().sum(-1, keepdim=True)
    k_sq = k.square().sum(-1, keepdim=True)
    m_sq = q_sq.amax(dim=-2, keepdim=True) + k_sq.amax(dim=-2, keepdim=True)
    q_ext = (m_sq - q_sq).clamp_min(0).sqrt()
    k_ext = (m_sq - k_sq).clamp_min(0).sqrt()
    return torch.cat([q, torch.zeros_like(q_ext), q_ext], -1), torch.cat([k, k_ext, torch.zeros_like(k_ext)], -1)


def hash_codes(q: torch.Tensor, k: torch.Tensor, lsh: LSHHash) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort keys ``(n_hashes, ..., n)`` of queries and keys (bucket ids or projections)."""
    check_qkv(q, k)
    if lsh.kind == "angular":
        if lsh.projections.shape[1] != q.shape[-1]:
            raise ValueError(f"hash drawn for d={lsh.projections.shape[1]}, got d={q.shape[-1]}")

        def buckets(x):
            rot = torch.einsum("...nd,hdb->h...nb", x, lsh.projections.to(x.dtype))
            return torch.cat([rot, -rot], dim=-1).argmax(-1)

        return buckets(q), buckets(k)
    if lsh.projections.shape[1] != q.shape[-1] + 2:
        raise ValueError(f"hash drawn for d={lsh.projections.shape[1] - 2}, got d={q.shape[-1]}")
    qx, kx = xbox_plus(q, k)
    proj = lsh.projections.to(q.dtype)
    return torch.einsum("...nd,hd->h...n", qx, proj), torch.einsum("...nd,hd->h...n", kx, proj)


def sort_permutation(codes: torch.Tensor) -> torch.Tensor:
    """Stable argsort along the last dimension (equal codes keep their positional order)."""
    return torch.sort(codes, dim=-1, stable=True).indices


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The inverse of a batch of permutations along the last dimension."""
    inverse = torch.empty_like(perm)
    inverse.scatter_(-1, perm, torch.arange(perm.shape[-1], device=perm.device).expand_as(perm))
    return inverse


def sort_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (``(..., n, e)``) in the order ``perm`` (``(h, ..., n)``): ``(h, ..., n, e)``."""
    x = x.unsqueeze(0).expand(perm.shape[:1] + x.shape)
    return torch.gather(x, -2, perm.unsqueeze(-1).expand(perm.shape + x.shape[-1:]))


def unsort_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Undo :func:`sort_rows`: ``x`` (``(h, ..., n, e)``) back to the original order."""
    inverse = invert_permutation(perm)
    return torch.gather(x, -2, inverse.unsqueeze(-1).expand(inverse.shape + x.shape[-1:]))


def chunk_sizes(n_q: int, n_k: int, bucket_size: int) -> tuple[int, int, int]:
    """``(n_chunks, queries per chunk, keys per chunk)``; chunks must tile both sequences."""
    if bucket_size < 1 or n_q % bucket_size:
        raise ValueError(f"bucket_size must divide the number of queries ({n_q}), got {bucket_size}")
    n_chunks = n_q // bucket_size
    if n_k % n_chunks:
        raise ValueError(f"{n_chunks} chunks do not tile {n_k} keys")
    return n_chunks, bucket_size, n_k // n_chunks


@dataclass
class Buckets:
    """Sorted permutations and chunk ids of one hashing of (q, k)."""

    q_perm: torch.Tensor    # (h, ..., n_q)
    k_perm: torch.Tensor    # (h, ..., n_k)
    q_chunk: torch.Tensor   # (h, ..., n_q) chunk of each query (original order)
    k_chunk: torch.Tensor   # (h, ..., n_k)
    n_chunks: int
    bq: int
    bk: int


def bucketize(q: torch.Tensor, k: torch.Tensor, lsh: LSHHash, bucket_size: int) -> Buckets:
    """Hash, sort and chunk queries and keys (no attention computed yet)."""
    n_chunks, bq, bk = chunk_sizes(q.shape[-2], k.shape[-2], bucket_size)
    q_codes, k_codes = hash_codes(q, k, lsh)
    q_perm, k_perm = sort_permutation(q_codes), sort_permutation(k_codes)
    q_chunk = invert_permutation(q_perm) // bq
    k_chunk = invert_permutation(k_perm) // bk
    return Buckets(q_perm, k_perm, q_chunk, k_chunk, n_chunks, bq, bk)


def lsh_support(q: torch.Tensor, k: torch.Tensor, lsh: LSHHash, *, bucket_size: int, causal: bool = False,
                buckets: Buckets | None = None) -> torch.Tensor:
    """Dense ``(..., n_q, n_k)`` count of the rounds in which query i and key j share a chunk."""
    b = buckets or bucketize(q, k, lsh, bucket_size)
    counts = (b.q_chunk.unsqueeze(-1) == b.k_chunk.unsqueeze(-2)).sum(0)
    if causal:
        from .exact import causal_mask

        counts = counts * causal_mask(q.shape[-2], k.shape[-2], q.device)
    return counts


def chunked(x: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """``(h, ..., n, e)`` sorted rows as ``(h, ..., n_chunks, n / n_chunks, e)``."""
    return x.reshape(x.shape[:-2] + (n_chunks, x.shape[-2] // n_chunks, x.shape[-1]))


def chunk_pairs(q: torch.Tensor, k: torch.Tensor, b: Buckets, *, scale: float, causal: bool):
    """Logits of every in-chunk pair, ``(h, ..., C, bq, bk)``, with the duplicate counts and the mask.

    Returns ``(logits, dup, valid)``: ``dup`` counts the rounds sharing each pair (>= 1
    where valid), ``valid`` is False for causally masked pairs.
    """
    sq = chunked(sort_rows(q, b.q_perm), b.n_chunks)
    sk = chunked(sort_rows(k, b.k_perm), b.n_chunks)
    logits = scale * (sq @ sk.transpose(-1, -2))
    pos_q = b.q_perm.reshape(b.q_perm.shape[:-1] + (b.n_chunks, b.bq, 1))
    pos_k = b.k_perm.reshape(b.k_perm.shape[:-1] + (b.n_chunks, 1, b.bk))
    valid = torch.ones_like(logits, dtype=torch.bool)
    if causal:
        valid = pos_k <= pos_q + (k.shape[-2] - q.shape[-2])
    # rounds in which the same (query, key) pair shares a chunk (at least this one)
    qc = sort_rows(b.q_chunk.movedim(0, -1), b.q_perm)  # (h, ..., n_q, h'): chunk of sorted query in each round
    kc = sort_rows(b.k_chunk.movedim(0, -1), b.k_perm)
    qc = chunked(qc, b.n_chunks)
    kc = chunked(kc, b.n_chunks)
    dup = (qc.unsqueeze(-2) == kc.unsqueeze(-3)).sum(-1)  # (h, ..., C, bq, bk)
    return logits, dup, valid


def lsh_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lsh: LSHHash, *, bucket_size: int,
                  scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Sparse LSH attention: softmax restricted to the keys sharing a chunk with each query.

    O(n_hashes · n · bucket_size · d) time and memory. A query with no visible key in any
    round (possible only with ``causal``) gets a zero output.
    """
    check_qkv(q, k, v)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    b = bucketize(q, k, lsh, bucket_size)
    logits, dup, valid = chunk_pairs(q, k, b, scale=scale, causal=causal)
    logits = (logits - torch.log(dup.clamp_min(1).to(logits.dtype))).masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)                     # (h, ..., C, bq, 1)
    weights = torch.exp(logits - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)))
    sv = chunked(sort_rows(v, b.k_perm), b.n_chunks)
    out = (weights @ sv).flatten(-3, -2)                                    # (h, ..., n_q, d_v) sorted
    out = unsort_rows(out, b.q_perm)
    lse = unsort_rows(lse.flatten(-3, -2), b.q_perm)                        # (h, ..., n_q, 1)
    total = torch.logsumexp(lse, dim=0, keepdim=True)
    round_weights = torch.exp(lse - torch.where(torch.isfinite(total), total, torch.zeros_like(total)))
    return (round_weights * out).sum(0)


def lsh_attention_matrix(q: torch.Tensor, k: torch.Tensor, lsh: LSHHash, *, bucket_size: int,
                         scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Dense matrix of :func:`lsh_attention`: the softmax over each query's LSH support, zero elsewhere."""
    from .exact import attention_logits

    support = lsh_support(q, k, lsh, bucket_size=bucket_size, causal=causal) > 0
    logits = attention_logits(q, k, scale=scale).masked_fill(~support, float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(attn, nan=0.0)


def default_n_buckets(n: int, bucket_size: int) -> int:
    """Reformer's choice: about one bucket per chunk (even, at least 2)."""
    return max(2, 2 * math.ceil(n / bucket_size / 2))
