r"""The latent settings of the digits experiment: 8×8 (ci) and 16×16 (full), each a VAE and a latent diffusion model.

**8×8 (resolution 8, the ci setting).** Zoo models ``digits_vae`` and ``digits_ldm`` (``common/latent_digits.py``;
checkpoints in ``common/zoo/checkpoints``, sha256-verified, trained by ``common/zoo/notebooks/train_digits_vae.ipynb``):

* VAE (Kingma & Welling 2014): encoder MLP 64-256-256-(μ, log σ²) ∈ ℝ⁸×ℝ⁸, decoder MLP 8-256-256-64;
  loss :math:`\|x - D(z)\|^2 / (2\cdot 0.2^2) + \mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I))`, z by
  reparameterisation. The diffusion latents are the encoder means divided by their global standard
  deviation (``scale``), so the latent model sees unit-variance data; ``encode``/``decode`` include the scale.
* Latent diffusion model: the repository's ``EpsMLP`` (common.diffusion.model) with ``dim = 8``, trained
  unconditionally (null label) with the DDPM ε-loss on the same VP schedule as ``common.diffusion``
  (continuous t ~ U[t_min, 1]), EMA weights.

They were first trained here (paper-local checkpoints ``stsl_digits_vae``/``stsl_digits_ldm``); the zoo
notebook reproduces those tensors bit for bit.

**16×16 (resolution 16, the full setting).** Zoo models ``digits16_vae`` and ``digits16_ldm``
(``common/latent_digits16.py``, trained by ``common/zoo/notebooks/train_digits16_vae.ipynb``): a convolutional VAE
256 → 2×4×4 = 32-dim latents (the same 8:1 compression as 64 → 8) with the same ``encode``/``decode`` interface, and
an unconditional latent ``EpsMLP`` (dim 32, width 256) on the same VP schedule. The data are the repository's digits
split upsampled bilinearly (``common.digits16.load_digits16_split``: the same digits and split as 8×8, so the
tuning and test images are the same digits at both resolutions); they span a 64-dim subspace of ℝ²⁵⁶.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.latent_digits import LATENT_DIM, MLPVAE, X_SIGMA, load_digits_ldm, load_digits_vae

__all__ = [
    "LATENT_DIM",
    "MLPVAE",
    "RESOLUTIONS",
    "X_SIGMA",
    "DigitsSetting",
    "latent_dim",
    "load_models",
    "load_setting",
]

RESOLUTIONS = (8, 16)  # image side of the two latent settings


def _check_resolution(resolution: int) -> int:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    return int(resolution)


def load_models(resolution: int = 8):
    """(vae, latent denoiser) of a resolution from the zoo (sha256-verified): 8 → ``digits_vae``/``digits_ldm``,
    16 → ``digits16_vae``/``digits16_ldm``."""
    if _check_resolution(resolution) == 8:
        return load_digits_vae(), load_digits_ldm()
    from common.latent_digits16 import load_digits16_ldm, load_digits16_vae

    return load_digits16_vae(), load_digits16_ldm()


def latent_dim(vae, x: torch.Tensor | None = None) -> int:
    """The latent dimension d of an autoencoder: its ``latent_dim`` attribute (32 for the 16×16 ConvVAE16), its
    ``config["latent_dim"]`` (8 for the 8×8 MLP VAE), else the width of ``encode(x[:1])`` (any codec, given x)."""
    d = getattr(vae, "latent_dim", None)
    if d is None:
        d = getattr(vae, "config", {}).get("latent_dim")
    if d is None:
        if x is None:
            raise ValueError("the autoencoder has no latent_dim; pass an image batch x to infer it")
        with torch.no_grad():
            d = vae.encode(x[:1]).shape[1]
    return int(d)


@dataclass
class DigitsSetting:
    """Everything the digits notebook needs at one resolution: image side, models and the data split
    (flattened rows in [-1, 1], side² columns)."""

    side: int
    vae: torch.nn.Module
    model: object
    x_train: torch.Tensor
    x_heldout: torch.Tensor


def load_setting(resolution: int = 8) -> DigitsSetting:
    """The latent pair and the digits split at ``resolution`` (8: ``common.diffusion.data.load_digits_split``;
    16: ``common.digits16.load_digits16_split``, the same digits upsampled). The models are frozen."""
    resolution = _check_resolution(resolution)
    vae, model = load_models(resolution)
    if resolution == 8:
        from common.diffusion.data import load_digits_split

        split = load_digits_split()
    else:
        from common.digits16.data import load_digits16_split

        split = load_digits16_split()
    if split.x_heldout.shape[1] != resolution * resolution:
        raise ValueError(f"split has {split.x_heldout.shape[1]} pixels, expected {resolution**2}")
    return DigitsSetting(resolution, vae, model, split.x_train, split.x_heldout)
