"""Attention kernels with one interface, and the metrics that compare them with exact attention.

Every kernel takes ``q`` ``(..., n_q, d)``, ``k`` ``(..., n_k, d)``, ``v`` ``(..., n_k, d_v)``,
``scale`` (default 1/sqrt(d)) and ``causal``; random kernels take their random draw
(:class:`RandomFeatures`, :class:`LSHHash`) or a ``torch.Generator`` explicitly, so an
efficient output and its dense matrix (``*_matrix``) can be computed from the same draw.

=====================  ==============================  =====================================
kernel                 output                          dense matrix (for error metrics)
=====================  ==============================  =====================================
exact softmax          :func:`softmax_attention`       :func:`softmax_attention_matrix`
Performer FAVOR+       :func:`performer_attention`     :func:`performer_attention_matrix`
LSH (Reformer/SMYRF)   :func:`lsh_attention`           :func:`lsh_attention_matrix`
Scatterbrain           :func:`scatterbrain_attention`  :func:`scatterbrain_attention_matrix`
group (RITA)           :func:`group_attention`         :func:`group_attention_matrix`
=====================  ==============================  =====================================

:func:`make_attention` wraps any of them as ``fn(q, k, v, *, causal=False, scale=None,
generator=None)``, drawing fresh random features or hashes on each call (a model's
``attn_fn`` hook).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .exact import (
    attention_logits,
    causal_mask,
    default_scale,
    row_entropy,
    softmax_attention,
    softmax_attention_matrix,
    unnormalized_attention_matrix,
)
from .group import (
    Grouping,
    group_attention,
    group_attention_matrix,
    group_error_bound,
    group_means,
    group_radius,
    grouping_from_assignment,
    kmeans,
    radius_for_ratio,
)
from .lsh import (
    LSHHash,
    bucketize,
    default_n_buckets,
    draw_lsh,
    hash_codes,
    invert_permutation,
    lsh_attention,
    lsh_attention_matrix,
    lsh_support,
    sort_rows,
    unsort_rows,
    xbox_plus,
)
from .metrics import (
    SeedMoments,
    attention_errors,
    attention_flops,
    attention_memory,
    bias_report,
    max_log_ratio,
    relative_frobenius_error,
)
from .performer import (
    RandomFeatures,
    draw_random_features,
    gaussian_orthogonal_random_matrix,
    performer_attention,
    performer_attention_matrix,
    performer_kernel_matrix,
    performer_pair_mse,
    positive_random_features,
)
from .scatterbrain import scatterbrain_attention, scatterbrain_attention_matrix, scatterbrain_kernel_matrix

KERNELS = ("exact", "performer", "reformer", "smyrf", "scatterbrain", "group")


def make_attention(name: str, *, num_features: int = 64, bucket_size: int = 32, n_hashes: int = 1,
                   n_groups: int = 32, n_iter: int = 3, orthogonal: bool = True, antithetic: bool = False,
                   lsh_kind: str = "angular") -> Callable[..., torch.Tensor]:
    """A kernel as ``fn(q, k, v, *, causal=False, scale=None, generator=None) -> out``.

    ``reformer`` and ``smyrf`` are LSH attention with angular and XBOX+ hashing;
    ``scatterbrain`` uses ``lsh_kind`` for its sparse part. Random kernels draw new
    features or hashes from ``generator`` on every call.
    """
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; kernels: {', '.join(KERNELS)}")

    def lsh_for(q, kind, generator):
        return draw_lsh(q.shape[-1], n_hashes=n_hashes, kind=kind,
                        n_buckets=default_n_buckets(q.shape[-2], bucket_size), generator=generator)

    def fn(q, k, v, *, causal: bool = False, scale: float | None = None, generator: torch.Generator | None = None):
        if name == "exact":
            return softmax_attention(q, k, v, causal=causal, scale=scale)
        if name == "group":
            return group_attention(q, k, v, n_groups=n_groups, n_iter=n_iter, scale=scale, causal=causal,
                                   generator=generator)
        if name in ("reformer", "smyrf"):
            lsh = lsh_for(q, "angular" if name == "reformer" else "xbox", generator)
            return lsh_attention(q, k, v, lsh, bucket_size=bucket_size, scale=scale, causal=causal)
        features = draw_random_features(q.shape[-1], num_features, orthogonal=orthogonal, antithetic=antithetic,
                                        generator=generator, dtype=q.dtype)
        if name == "performer":
            return performer_attention(q, k, v, features, scale=scale, causal=causal)
        return scatterbrain_attention(q, k, v, features, lsh_for(q, lsh_kind, generator), bucket_size=bucket_size,
                                      scale=scale, causal=causal)

    fn.__name__ = f"{name}_attention"
    return fn


__all__ = [
    "KERNELS", "make_attention",
    "default_scale", "causal_mask", "attention_logits", "softmax_attention", "softmax_attention_matrix",
    "unnormalized_attention_matrix", "row_entropy",
    "RandomFeatures", "draw_random_features", "gaussian_orthogonal_random_matrix", "positive_random_features",
    "performer_attention", "performer_attention_matrix", "performer_kernel_matrix", "performer_pair_mse",
    "LSHHash", "draw_lsh", "hash_codes", "xbox_plus", "bucketize", "invert_permutation", "sort_rows", "unsort_rows",
    "lsh_support", "lsh_attention", "lsh_attention_matrix", "default_n_buckets",
    "scatterbrain_attention", "scatterbrain_attention_matrix", "scatterbrain_kernel_matrix",
    "Grouping", "kmeans", "grouping_from_assignment", "group_means", "group_attention", "group_attention_matrix", "group_radius",
    "group_error_bound", "radius_for_ratio",
    "relative_frobenius_error", "attention_errors", "max_log_ratio", "SeedMoments", "bias_report",
    "attention_memory", "attention_flops",
]

# Linear attention with learned feature maps, sliding-window and LoLCATs hybrid attention (lolcats).
from .linear import (  # noqa: E402
    FEATURE_MAPS,
    EluFeatureMap,
    HedgehogFeatureMap,
    HybridAttention,
    PerHeadProjection,
    T2RFeatureMap,
    elu_feature_map,
    hybrid_attention,
    hybrid_attention_matrix,
    hybrid_attention_recurrent,
    hybrid_attention_weights,
    linear_attention,
    linear_attention_matrix,
    make_feature_map,
    make_hybrid_attention,
    sliding_window_attention,
    sliding_window_mask,
    window_factor_logit,
)

__all__ += [
    "FEATURE_MAPS", "PerHeadProjection", "T2RFeatureMap", "HedgehogFeatureMap", "EluFeatureMap", "elu_feature_map",
    "make_feature_map", "linear_attention", "linear_attention_matrix", "sliding_window_mask",
    "sliding_window_attention", "hybrid_attention_weights", "hybrid_attention_matrix", "hybrid_attention",
    "hybrid_attention_recurrent", "window_factor_logit", "HybridAttention", "make_hybrid_attention",
]
