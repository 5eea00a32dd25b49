"""POLARIS: a per-step CFG scale for DDIM inversion (Chen et al. 2025), on the digits diffusion model."""

from papers.polaris.polaris import *  # noqa: F401,F403
from papers.polaris.polaris import __all__  # noqa: F401
