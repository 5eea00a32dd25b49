"""Decoding on the tiny LM with an explicit KV cache: dense, block-sparse, oracle top-k, dense re-prefill.

Building blocks for sparse-decoding papers (ReSA, Quest-style selection) on :class:`common.tinylm.TinyGPT`.
Everything is pure PyTorch and *simulates* sparsity by masking: the output of a block-sparse step is exactly
what a kernel that reads only the selected blocks would return, but nothing is faster here. Costs are
counted analytically (:func:`kv_reads_per_step`), never timed.

**Dense step.** Feed one token at position ``t``; its rotated key and value are appended to the cache and
its query attends to all ``t + 1`` cached positions, ``y = softmax(q K^T / sqrt(d_h)) V``.

**Block-sparse step** (ReSA, Sun et al. 2025, Sec. 2.1; official ``KVManager`` in microsoft/unilm ReSA).
The cache of length ``T`` is cut into ``n_b = ceil(T / b)`` blocks of ``b`` positions. Each block keeps the
element-wise minimum and maximum of its keys, ``k^min_j`` and ``k^max_j`` (per head). A block's score for
query ``q`` is the upper bound of ``q . k`` over keys inside the box ``[k^min_j, k^max_j]``:

    s_j = sum_d max(q_d k^max_{j,d}, q_d k^min_{j,d}).                                      (block score)

The ``local_blocks`` most recent blocks are always kept; of the rest the highest-scoring blocks are kept, so
that ``n_keep = max(ceil(rho * n_b), min(n_b, min_blocks))`` blocks are attended in total (``rho`` the
sparsity ratio). Attention is then the softmax restricted to the kept positions.

**Oracle top-k.** The same number of blocks, chosen by their exact attention mass
``m_j = sum_{s in block j} softmax(q K^T / sqrt(d_h))_s`` (the best any block selector could do for this
query, given the cache), local blocks again forced.

**Dense re-prefill** (ReSA's rectification). Drop the last ``f`` cache entries and feed the last ``f`` tokens
again in one forward pass with dense causal attention: their keys and values are recomputed from the
(dense) hidden states and overwrite the entries that sparse steps had written.

Selection uses the summaries of the *current* cache (recomputed at every step), so after a rectification
the block summaries describe the rectified keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from common.tinylm.model import KVCache, TinyGPT

__all__ = [
    "block_key_summaries", "block_scores", "oracle_block_mass", "n_selected_blocks", "select_blocks",
    "block_sparse_attention", "SparseDecodingAttention", "prefill", "decode_step", "reprefill_last",
    "kv_reads_per_step",
]

SELECTORS = ("dense", "quest", "oracle")


# --------------------------------------------------------------------------------------------------
# Block selection
# --------------------------------------------------------------------------------------------------
def _pad_to_blocks(k: torch.Tensor, block_size: int) -> torch.Tensor:
    """``k [..., T, D]`` padded to a multiple of ``block_size`` by repeating its last position."""
    t = k.shape[-2]
    pad = (-t) % block_size
    if pad:
        k = torch.cat([k, k[..., -1:, :].expand(*k.shape[:-2], pad, k.shape[-1])], dim=-2)
    return k


def block_key_summaries(k: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block element-wise ``(k_min, k_max)`` of keys ``k [B, H, T, D]``: each ``[B, H, ceil(T/b), D]``.

    The last, partial block summarises only its valid positions.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if k.shape[-2] == 0:
        raise ValueError("cannot summarise an empty cache")
    kb = _pad_to_blocks(k, block_size)
    kb = kb.reshape(*kb.shape[:-2], kb.shape[-2] // block_size, block_size, kb.shape[-1])
    return kb.amin(dim=-2), kb.amax(dim=-2)


def block_scores(q: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor) -> torch.Tensor:
    """Block score ``s_j = sum_d max(q_d k^max_{j,d}, q_d k^min_{j,d})`` for ``q [B, H, 1, D]`` -> ``[B, H, n_b]``."""
    if q.shape[-2] != 1:
        raise ValueError(f"block selection is for single-token decoding (Tq = 1), got Tq = {q.shape[-2]}")
    return torch.maximum(q * k_max, q * k_min).sum(-1)


def oracle_block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int) -> torch.Tensor:
    """Exact attention mass per block ``m_j = sum_{s in j} softmax(q K^T / sqrt d)_s`` -> ``[B, H, n_b]``."""
    if q.shape[-2] != 1:
        raise ValueError(f"block selection is for single-token decoding (Tq = 1), got Tq = {q.shape[-2]}")
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)[..., 0, :]  # [B, H, T]
    pad = (-p.shape[-1]) % block_size
    if pad:
        p = torch.cat([p, p.new_zeros(*p.shape[:-1], pad)], dim=-1)
    return p.reshape(*p.shape[:-1], -1, block_size).sum(-1)


def n_selected_blocks(n_blocks: int, sparse_ratio: float, min_blocks: int) -> int:
    """``max(ceil(rho n_b), min(n_b, min_blocks))`` (the official ``get_num_blocks``)."""
    if not 0.0 < sparse_ratio <= 1.0:
        raise ValueError(f"sparse_ratio must be in (0, 1], got {sparse_ratio}")
    if n_blocks < 1 or min_blocks < 1:
        raise ValueError(f"n_blocks and min_blocks must be >= 1, got {n_blocks}, {min_blocks}")
    return max(math.ceil(n_blocks * sparse_ratio - 1e-9), min(n_blocks, min_blocks))


def select_blocks(scores: torch.Tensor, n_keep: int, local_blocks: int) -> torch.Tensor:
    """Boolean ``[B, H, n_b]`` mask of the kept blocks: the last ``local_blocks`` plus the top-scoring rest.

    ``n_keep`` blocks are kept in total (all of them when ``n_keep >= n_b``).
    """
    if local_blocks < 0:
        raise ValueError(f"local_blocks must be >= 0, got {local_blocks}")
    n_b = scores.shape[-1]
    if n_keep < local_blocks:
        raise ValueError(f"n_keep={n_keep} is smaller than local_blocks={local_blocks}")
    if n_keep >= n_b:
        return torch.ones_like(scores, dtype=torch.bool)
    forced = scores.clone()
    if local_blocks:
        forced[..., n_b - local_blocks:] = float("inf")
    top = torch.topk(forced, n_keep, dim=-1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, top, True)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor,
                           block_size: int) -> torch.Tensor:
    """``softmax`` attention of ``q [B, H, 1, D]`` restricted to the positions of the kept blocks."""
    keep = block_mask.repeat_interleave(block_size, dim=-1)[..., : k.shape[-2]]  # [B, H, T]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~keep[..., None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class SparseDecodingAttention:
    """An ``attn_fn`` hook for one decoding step: dense, Quest-style block-sparse, or oracle top-k.

    ``selector``: ``"dense"`` (exact attention), ``"quest"`` (block scores from key min/max summaries,
    the ReSA/official rule) or ``"oracle"`` (exact block attention mass). Records the fraction of cached
    positions each call attended in ``kept_fraction`` (one float per call, mean over batch and heads).
    """

    def __init__(self, selector: str = "quest", block_size: int = 16, sparse_ratio: float = 0.1,
                 local_blocks: int = 1, min_blocks: int = 1):
        if selector not in SELECTORS:
            raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
        if block_size < 1 or local_blocks < 0 or min_blocks < max(1, local_blocks):
            raise ValueError(f"need block_size >= 1, local_blocks >= 0 and min_blocks >= max(1, local_blocks), got "
                             f"{block_size}, {local_blocks}, {min_blocks}")
        n_selected_blocks(1, sparse_ratio, min_blocks)  # validates the ratio
        self.selector, self.block_size, self.sparse_ratio = selector, block_size, sparse_ratio
        self.local_blocks, self.min_blocks = local_blocks, min_blocks
        self.kept_fraction: list[float] = []

    def block_mask(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        n_b = math.ceil(k.shape[-2] / self.block_size)
        n_keep = n_selected_blocks(n_b, self.sparse_ratio, self.min_blocks)
        if self.selector == "dense" or n_keep >= n_b:
            return torch.ones(*q.shape[:2], n_b, dtype=torch.bool, device=q.device)
        if self.selector == "quest":
            scores = block_scores(q, *block_key_summaries(k, self.block_size))
        else:
            scores = oracle_block_mass(q, k, self.block_size)
        return select_blocks(scores, n_keep, min(self.local_blocks, n_keep))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[-2] != 1:
            raise ValueError(f"SparseDecodingAttention is for single-token steps, got Tq = {q.shape[-2]}")
        mask = self.block_mask(q, k)
        kept = mask.repeat_interleave(self.block_size, dim=-1)[..., : k.shape[-2]]
        self.kept_fraction.append(float(kept.float().mean()))
        return block_sparse_attention(q, k, v, mask, self.block_size)


# --------------------------------------------------------------------------------------------------
# Decoding with the explicit cache
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def prefill(model: TinyGPT, idx: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    """Dense prefill of ``idx [B, T]``: ``(logits [B, T, V], cache)``."""
    cache = model.new_cache()
    return model(idx, kv_cache=cache), cache


@torch.no_grad()
def _with_attn(model: TinyGPT, attn_fn: Callable | None, fn):
    previous = [block.attn.attn_fn for block in model.blocks]
    model.set_attn_fn(attn_fn)
    try:
        return fn()
    finally:
        model.set_attn_fn(previous)


@torch.no_grad()
def decode_step(model: TinyGPT, cache: KVCache, token: torch.Tensor,
                attention: SparseDecodingAttention | None = None) -> torch.Tensor:
    """Feed ``token [B]`` (or ``[B, 1]``) at position ``cache.length``; returns next-token logits ``[B, V]``.

    ``attention=None`` is the exact dense step; otherwise the hook decides which cached blocks the new
    query reads. Either way the new key/value (computed from the approximate hidden states of the lower
    layers) is appended to the cache.
    """
    token = token.reshape(-1, 1)
    if token.shape[0] != cache.keys[0].shape[0]:
        raise ValueError(f"batch {token.shape[0]} does not match the cache's {cache.keys[0].shape[0]}")
    return _with_attn(model, attention, lambda: model(token, kv_cache=cache))[:, -1]


@torch.no_grad()
def reprefill_last(model: TinyGPT, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
    """ReSA's rectification: rewrite the cache entries of the last ``f`` tokens with a dense forward pass.

    ``tokens [B, f]`` are the tokens at the last ``f`` cached positions. The cache is truncated to
    ``length - f`` and the tokens are fed again with dense causal attention over the whole (kept) cache,
    which writes fresh keys and values. Returns the logits ``[B, f, V]`` of the re-prefilled positions (the
    last row is the next-token distribution).
    """
    f = tokens.shape[1]
    if not 1 <= f <= cache.length:
        raise ValueError(f"can re-prefill between 1 and {cache.length} tokens, got {f}")
    cache.truncate(cache.length - f)
    return _with_attn(model, None, lambda: model(tokens, kv_cache=cache))


def kv_reads_per_step(context: int, block_size: int, sparse_ratio: float, local_blocks: int, min_blocks: int,
                      rectify_every: int | None = None) -> float:
    """Analytic number of cached positions read per decoded token (the memory traffic of attention).

    Dense reads ``context``; block-sparse reads ``n_keep * b`` (at most ``context``); ReSA adds its
    rectification, one dense pass over the cache every ``f`` tokens, i.e. ``context / f`` per token.
    """
    n_b = math.ceil(context / block_size)
    n_keep = n_selected_blocks(n_b, sparse_ratio, min_blocks)
    sparse = float(min(context, n_keep * block_size))
    if rectify_every is None:
        return sparse
    if rectify_every < 1:
        raise ValueError(f"rectify_every must be >= 1, got {rectify_every}")
    return sparse + context / rectify_every
