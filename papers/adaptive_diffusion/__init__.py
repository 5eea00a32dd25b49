"""AdaptiveDiffusion (Ye et al., NeurIPS 2024): third-order-difference step skipping with ε re-use."""

from common.diffusion.counting import CallCounter
from common.diffusion.grids import sd_grid

from .grids import GRIDS, frozen_test_stable, make_grid
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
    "GRIDS", "N_WARMUP", "SOLVERS", "CallCounter", "SkipRun", "ThirdOrderEstimator", "adaptive_sample",
    "called_subgrid", "ddim_rowwise", "frozen_test_stable", "make_grid", "matched_baselines",
    "max_consecutive_skips", "random_schedule", "scheduled_sample", "sd_grid", "uniform_schedule",
]
