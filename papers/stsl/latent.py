r"""The latent setting of the digits experiment: a small MLP VAE (64 → 8) and a latent diffusion model.

Both are zoo models (``common/latent_digits.py``; checkpoints ``digits_vae`` and ``digits_ldm`` in
``common/zoo/checkpoints``, sha256-verified, trained by ``common/zoo/notebooks/train_digits_vae.ipynb``):

* VAE (Kingma & Welling 2014): encoder MLP 64-256-256-(μ, log σ²) ∈ ℝ⁸×ℝ⁸, decoder MLP 8-256-256-64;
  loss :math:`\|x - D(z)\|^2 / (2\cdot 0.2^2) + \mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I))`, z by
  reparameterisation. The diffusion latents are the encoder means divided by their global standard
  deviation (``scale``), so the latent model sees unit-variance data; ``encode``/``decode`` include the scale.
* Latent diffusion model: the repository's ``EpsMLP`` (common.diffusion.model) with ``dim = 8``, trained
  unconditionally (null label) with the DDPM ε-loss on the same VP schedule as ``common.diffusion``
  (continuous t ~ U[t_min, 1]), EMA weights.

They were first trained here (paper-local checkpoints ``stsl_digits_vae``/``stsl_digits_ldm``); the zoo
notebook reproduces those tensors bit for bit.
"""

from __future__ import annotations

from common.latent_digits import LATENT_DIM, MLPVAE, X_SIGMA, load_digits_ldm, load_digits_vae

__all__ = ["LATENT_DIM", "MLPVAE", "X_SIGMA", "load_models"]


def load_models():
    """(vae, latent denoiser) from the zoo checkpoints ``digits_vae`` and ``digits_ldm`` (sha256-verified)."""
    return load_digits_vae(), load_digits_ldm()
