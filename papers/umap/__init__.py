"""UMAP (McInnes, Healy, Melville 2018), replicated and compared with umap-learn."""

from papers.umap.uniform_manifold import (
    UMAP,
    epochs_per_sample,
    find_ab_params,
    fuzzy_simplicial_set,
    fuzzy_union,
    membership_strengths,
    optimize_layout,
    smooth_knn_dist,
    spectral_init,
)

__all__ = ["UMAP", "epochs_per_sample", "find_ab_params", "fuzzy_simplicial_set", "fuzzy_union",
           "membership_strengths", "optimize_layout", "smooth_knn_dist", "spectral_init"]
