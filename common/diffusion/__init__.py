"""The diffusion base: digits data, the VP schedule, model views, the pretrained digits model, samplers.

See ``common/diffusion/views.py`` for the model protocol (``eps(x, t, y)`` + ``.schedule``) shared by the
pretrained model, the analytic twins and every sampler.
"""

from common.diffusion.data import DIM, N_CLASSES, NULL_LABEL, DigitsSplit, load_digits_split, to_images
from common.diffusion.model import EpsMLP, load_digits_eps
from common.diffusion.samplers import (
    ddim,
    ddim_invert,
    ddim_timesteps,
    dpm_solver_pp_2m,
    dpm_solver_pp_3m,
    dpm_solver_singlestep,
    euler_edm,
    heun_edm,
    pndm,
    pndm_timesteps,
    reference_ode,
    time_grid,
    unipc,
)
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser

__all__ = [
    "DIM",
    "N_CLASSES",
    "NULL_LABEL",
    "Denoiser",
    "DigitsSplit",
    "EpsMLP",
    "VPSchedule",
    "ddim",
    "ddim_invert",
    "ddim_timesteps",
    "dpm_solver_pp_2m",
    "dpm_solver_pp_3m",
    "dpm_solver_singlestep",
    "euler_edm",
    "heun_edm",
    "load_digits_eps",
    "load_digits_split",
    "pndm",
    "pndm_timesteps",
    "reference_ode",
    "time_grid",
    "to_images",
    "unipc",
]
