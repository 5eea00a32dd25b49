"""AdaptiveDiffusion (Ye et al., NeurIPS 2024): third-order-difference step skipping with ε re-use."""

from .skipping import (
    N_WARMUP,
    SOLVERS,
    SkipRun,
    ThirdOrderEstimator,
    adaptive_sample,
    called_subgrid,
    ddim_rowwise,
    matched_baselines,
    max_consecutive_skips,
    random_schedule,
    scheduled_sample,
    uniform_schedule,
)

__all__ = [
    "N_WARMUP", "SOLVERS", "SkipRun", "ThirdOrderEstimator", "adaptive_sample", "called_subgrid", "ddim_rowwise",
    "matched_baselines", "max_consecutive_skips", "random_schedule", "scheduled_sample", "uniform_schedule",
]
