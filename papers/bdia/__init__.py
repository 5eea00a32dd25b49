"""BDIA-DDIM exact diffusion inversion (Zhang, Lewis, Kleijn, ECCV 2024) with DDIM inversion and EDICT as baselines."""

from .editing import EDIT_METHODS, class_edit, per_digit_psnr, per_digit_rmse, target_labels
from .inversion import (
    LinearEpsModel,
    bdia_inverse_step,
    bdia_invert,
    bdia_round_trip,
    bdia_sample,
    bdia_step,
    ddim_round_trip,
    edict_inverse_step,
    edict_invert,
    edict_round_trip,
    edict_sample,
    edict_step,
    editing_grid,
    growth_factor,
    inverse_mode_roots,
    max_abs_trajectory,
)
from .sampling import (
    bdia_edm,
    edm_samplers_for,
    gamma_key,
    noise_and_labels,
    quality_across_seeds,
    samplers_for,
)

__all__ = [
    "EDIT_METHODS", "class_edit", "per_digit_psnr", "per_digit_rmse", "target_labels", "bdia_edm", "edm_samplers_for",
    "gamma_key", "noise_and_labels", "quality_across_seeds", "samplers_for",
    "LinearEpsModel", "bdia_invert", "bdia_inverse_step", "bdia_round_trip", "bdia_sample", "bdia_step",
    "ddim_round_trip", "edict_invert", "edict_inverse_step", "edict_round_trip", "edict_sample", "edict_step",
    "editing_grid", "growth_factor", "inverse_mode_roots", "max_abs_trajectory",
]
