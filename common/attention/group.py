"""Group attention (RITA): attention over k-means groups of keys, weighted by group counts.

Liang, Cao, Madden, Ives, Li, "RITA: Group Attention is All You Need for Timeseries
Analytics" (SIGMOD 2024). The keys are clustered into N groups (k-means); every key is
replaced by its group's centroid c_g, the mean of the keys in the group. Then

    A_ij ≈ exp(scale·q_iᵀc_g(j)) / Σ_g cnt_g·exp(scale·q_iᵀc_g),
    out_i = Σ_g exp(scale·q_iᵀc_g)·(Σ_{j∈g} v_j) / Σ_g cnt_g·exp(scale·q_iᵀc_g),

which costs O(n·N·d) after grouping instead of O(n²·d) (official code:
``attentionBlock.py::ga``, value sums per group, count-weighted normaliser).

Guarantee: if ‖q_i‖ ≤ R for every query and ‖k_j − c_g(j)‖ ≤ r for every key, every score
moves by at most scale·R·r, so every weight satisfies |log(Ã_ij / A_ij)| ≤ 2·scale·R·r
(numerator and normaliser each move by at most a factor exp(scale·R·r)). In particular the
approximation is exact when every key equals its centroid, and choosing r ≤ ln(ε)/(2·scale·R)
bounds every weight ratio within [1/ε, ε] (RITA's error bound, the basis of its scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .exact import check_qkv, default_scale


@dataclass
class Grouping:
    """A partition of the keys: group of each key, group means and sizes (0 for empty groups)."""

    assignment: torch.Tensor  # (..., n) int64
    centroids: torch.Tensor   # (..., N, d)
    counts: torch.Tensor      # (..., N)

    @property
    def n_groups(self) -> int:
        return self.centroids.shape[-2]


def _scatter_sum(x: torch.Tensor, assignment: torch.Tensor, n_groups: int) -> torch.Tensor:
    out = x.new_zeros(x.shape[:-2] + (n_groups, x.shape[-1]))
    return out.scatter_add(-2, assignment.unsqueeze(-1).expand(assignment.shape + x.shape[-1:]), x)


def group_means(x: torch.Tensor, assignment: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids, counts)`` of the rows of ``x`` under ``assignment`` (differentiable in x)."""
    counts = torch.zeros(assignment.shape[:-1] + (n_groups,), dtype=x.dtype, device=x.device)
    counts = counts.scatter_add(-1, assignment, torch.ones_like(assignment, dtype=x.dtype))
    sums = _scatter_sum(x, assignment, n_groups)
    return sums / counts.clamp_min(1).unsqueeze(-1), counts


def grouping_from_assignment(x: torch.Tensor, assignment: torch.Tensor, n_groups: int) -> Grouping:
    """The :class:`Grouping` of given group labels (``(..., n)`` in ``[0, n_groups)``)."""
    if int(assignment.min()) < 0 or int(assignment.max()) >= n_groups:
        raise ValueError(f"group labels must lie in [0, {n_groups})")
    centroids, counts = group_means(x.detach(), assignment, n_groups)
    return Grouping(assignment, centroids, counts)


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    dist = (x.square().sum(-1, keepdim=True) - 2 * x @ centroids.transpose(-1, -2)
            + centroids.square().sum(-1).unsqueeze(-2))
    return dist.argmin(-1)


def kmeans(x: torch.Tensor, n_groups: int, *, n_iter: int = 3, generator: torch.Generator | None = None) -> Grouping:
    """Lloyd's k-means on the rows of ``x`` (``(..., n, d)``), batched over leading dimensions.

    Initial centroids are ``n_groups`` distinct random rows (RITA's ``kmeans_init(init='rand')``);
    ``n_iter`` rounds of assignment and mean updates (RITA's default: 3); empty groups keep
    their previous centroid. The returned centroids are the means of the final groups
    (computed without gradient: use :func:`group_means` to differentiate through them).
    """
    n = x.shape[-2]
    if not 1 <= n_groups <= n:
        raise ValueError(f"n_groups must be between 1 and the number of keys ({n}), got {n_groups}")
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    with torch.no_grad():
        x = x.detach()
        order = torch.rand(x.shape[:-1], generator=generator, dtype=torch.float64).argsort(-1)[..., :n_groups]
        centroids = torch.gather(x, -2, order.unsqueeze(-1).expand(order.shape + x.shape[-1:]))
        for _ in range(n_iter):
            assignment = _assign(x, centroids)
            means, counts = group_means(x, assignment, n_groups)
            centroids = torch.where(counts.unsqueeze(-1) > 0, means, centroids)
        assignment = _assign(x, centroids)
        centroids, counts = group_means(x, assignment, n_groups)
    return Grouping(assignment, centroids, counts)


def _scores(q: torch.Tensor, k: torch.Tensor, grouping: Grouping, scale: float):
    centroids, counts = group_means(k, grouping.assignment, grouping.n_groups)
    logits = scale * (q @ centroids.transpose(-1, -2))                      # (..., n_q, N)
    logits = logits.masked_fill(counts.unsqueeze(-2) == 0, float("-inf"))
    logits = logits - logits.amax(-1, keepdim=True)
    weights = torch.exp(logits)
    normaliser = (weights * counts.unsqueeze(-2)).sum(-1, keepdim=True)
    return weights, normaliser


def group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_groups: int | None = None,
                    grouping: Grouping | None = None, scale: float | None = None, n_iter: int = 3,
                    generator: torch.Generator | None = None, causal: bool = False,
                    return_grouping: bool = False):
    """Group attention output; groups the keys by k-means unless ``grouping`` is given.

    Gradients flow through the centroids (means of the keys) and the value sums; the
    assignment itself is discrete. ``causal`` is not supported: RITA is an encoder, and a
    group mixes past and future keys.
    """
    check_qkv(q, k, v)
    if causal:
        raise ValueError("group attention is bidirectional: a group mixes past and future keys (causal=False)")
    if grouping is None:
        if n_groups is None:
            raise ValueError("give n_groups or a grouping")
        grouping = kmeans(k, n_groups, n_iter=n_iter, generator=generator)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    weights, normaliser = _scores(q, k, grouping, scale)
    value_sums = _scatter_sum(v, grouping.assignment, grouping.n_groups)
    out = (weights @ value_sums) / normaliser
    return (out, grouping) if return_grouping else out


def group_attention_matrix(q: torch.Tensor, k: torch.Tensor, grouping: Grouping, *,
                           scale: float | None = None) -> torch.Tensor:
    """The dense ``(..., n_q, n_k)`` attention matrix that group attention applies (rows sum to one)."""
    check_qkv(q, k)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    weights, normaliser = _scores(q, k, grouping, scale)
    index = grouping.assignment.unsqueeze(-2).expand(weights.shape[:-1] + grouping.assignment.shape[-1:])
    return torch.gather(weights, -1, index) / normaliser


def group_radius(k: torch.Tensor, grouping: Grouping) -> torch.Tensor:
    """Largest distance of a key to its group's centroid, per group (``(..., N)``; 0 if empty)."""
    centroids, _ = group_means(k, grouping.assignment, grouping.n_groups)
    member = torch.gather(centroids, -2, grouping.assignment.unsqueeze(-1).expand(k.shape))
    dist = (k - member).norm(dim=-1)
    radius = torch.zeros(grouping.counts.shape, dtype=k.dtype, device=k.device)
    return radius.scatter_reduce(-1, grouping.assignment, dist, reduce="amax", include_self=True)


def group_error_bound(q: torch.Tensor, k: torch.Tensor, grouping: Grouping, *,
                      scale: float | None = None) -> torch.Tensor:
    """RITA's guarantee: max |log(Ã_ij / A_ij)| <= 2·scale·max‖q‖·max‖k − c‖ (per leading index)."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    return 2 * scale * q.norm(dim=-1).amax(-1) * group_radius(k, grouping).amax(-1)


def radius_for_ratio(q: torch.Tensor, epsilon: float, *, scale: float | None = None) -> torch.Tensor:
    """Largest key-to-centroid distance r that guarantees every weight ratio within [1/ε, ε]."""
    if epsilon <= 1:
        raise ValueError(f"epsilon bounds a ratio and must exceed 1, got {epsilon}")
    import math

    scale = default_scale(q.shape[-1]) if scale is None else scale
    return math.log(epsilon) / (2 * scale * q.norm(dim=-1).amax(-1).clamp_min(torch.finfo(q.dtype).tiny))
