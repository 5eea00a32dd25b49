r"""A 16×16 DCGAN with a StyleGAN-like mapping MLP for the 16×16 digits (the full-sized member of the GAN family).

Zoo models ``digits16_gan_seed0``, ``digits16_gan_seed1``, ``digits16_gan_seed2`` (``common/zoo/checkpoints/``),
trained by the zoo notebook ``common/zoo/notebooks/train_digits16_gan.ipynb`` (one seed per run, one CPU thread,
seeded); first used by ``papers/hubness_gan`` (part B at the full profile). The 8×8 MLP member is
:mod:`common.mlp_gan`; this module reuses :class:`common.gan.DCGenerator` / :class:`common.gan.DCDiscriminator`
unchanged (their defaults and arithmetic are untouched; only new classes and functions live here).

**Data.** ``common.digits16.load_digits16_split().x_train``: the 1500 training digits of the repository's split,
upsampled bilinearly to 16×16, values in [-1, 1], as ``(N, 256)`` rows (row-major 16×16).

**Generator** :class:`MappingDCGenerator` (a :class:`common.gan.DCGenerator` with ``mapping_layers`` ≥ 1): a latent
:math:`z \in \mathbb R^{d}` (``z_dim`` = 32) goes through the **mapping network** :math:`w = f(z)`,
``mapping_layers`` blocks ``Linear(d, d)`` + LeakyReLU(0.2), so :math:`w \in \mathbb R^{d}`; the **synthesis**
network is the DCGAN body: ``ConvTranspose2d(d, 2·width, 4)`` from 1×1 to 4×4 (BatchNorm, ReLU), then two
``ConvTranspose2d(k=4, s=2, p=1)`` stages 4→8→16 (BatchNorm + ReLU after the first), and ``tanh``:

.. math:: G(z) = \tanh\big(\mathrm{DC}(f(z))\big) \in [-1, 1]^{16 \times 16}.

``gen.mapping`` and ``gen.synthesis`` are separate (the synthesis returns flattened ``(N, 256)`` rows), so a sampler
can work in w (hub selection, the truncation trick :math:`\bar w + \psi (w - \bar w)`), exactly like
:class:`common.mlp_gan.MappingGenerator`. In eval mode BatchNorm uses its running statistics, so an image depends
only on its own latent.

**Discriminator** ``common.gan.DCDiscriminator(image_size=16, width, batch_norm=False)``: stride-2 4×4 convolutions
16→8→4 with LeakyReLU(0.2), a 4×4 convolution to one logit; without BatchNorm, so that the R1 penalty is a
per-sample gradient norm.

**Training** :func:`train_digits16_gan`: the non-saturating loss with the R1 penalty on real data (Mescheder et al.
2018), γ = ``r1_gamma``, as :func:`common.mlp_gan.train_digits_gan`:

.. math::

    L_D = \mathbb E_x[\mathrm{softplus}(-D(x))] + \mathbb E_z[\mathrm{softplus}(D(G(z)))]
          + \frac{\gamma}{2}\, \mathbb E_x \lVert \nabla_x D(x) \rVert^2,
    \qquad L_G = \mathbb E_z[\mathrm{softplus}(-D(G(z)))],

one D and one G Adam step per iteration (lr ``lr``, betas (0.5, 0.99)), batches drawn with replacement. Seeded by
:func:`common.harness.seeding.seeded_training`: torch's global RNG draws the initialisation, one
``torch.Generator`` the batches and latents, in a fixed order.

**Evaluation** :func:`image_quality16`: the 16×16 images are mapped to their least-squares 8×8 preimages
(``common.digits16.to_digits8``) and scored by :func:`common.mlp_gan.image_quality` (PRDC k = 5, the Fréchet
distance of the zoo digits classifier's 32-D features, the classifier's mean confidence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.gan import DCDiscriminator, DCGenerator, latent_bank  # noqa: F401  (latent_bank re-exported)
from common.mlp_gan import load_generator as _load_generator
from common.mlp_gan import (
    save_generator,  # noqa: F401  (re-exported: the zoo notebook saves through this module)
    train_r1_gan,
)

SEEDS = (0, 1, 2)  # the committed zoo generators
IMAGE_SIZE = 16


def checkpoint_name(seed: int) -> str:
    """The zoo name of the 16×16 digits DCGAN trained with ``seed``: ``digits16_gan_seed<seed>``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return f"digits16_gan_seed{int(seed)}"


class MappingDCGenerator(DCGenerator):
    """z (``z_dim``) → mapping MLP → w (``z_dim``) → DCGAN synthesis → ``(N, 256)`` pixels in [-1, 1]."""

    def __init__(self, z_dim: int = 32, mapping_layers: int = 2, width: int = 32):
        if z_dim < 1 or mapping_layers < 1 or width < 1:
            raise ValueError(f"need positive sizes, got z_dim={z_dim}, mapping_layers={mapping_layers}, width={width}")
        super().__init__(z_dim=z_dim, image_size=IMAGE_SIZE, channels=1, width=width, upsample="transposed",
                         mapping_layers=mapping_layers)
        self.w_dim = z_dim
        self.config = {"z_dim": z_dim, "mapping_layers": mapping_layers, "width": width}

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        """w ``(N, z_dim)`` → images ``(N, 256)``: :math:`\\tanh(\\mathrm{DC}(w))`, flattened row-major."""
        if w.ndim != 2 or w.shape[1] != self.w_dim:
            raise ValueError(f"expected w of shape [N, {self.w_dim}], got {tuple(w.shape)}")
        return torch.tanh(self.net(w[:, :, None, None])).flatten(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


def train_digits16_gan(seed: int, steps: int = 4000, batch_size: int = 64, lr: float = 2e-4, z_dim: int = 32,
                       mapping_layers: int = 2, width: int = 32, d_width: int = 32, r1_gamma: float = 10.0,
                       progress: bool = False, data: torch.Tensor | None = None, threads: int | None = None,
                       callback=None, callback_every: int = 0) -> tuple[MappingDCGenerator, dict]:
    r"""Train the 16×16 mapping DCGAN; returns (G in eval mode, frozen; history).

    :math:`L_D = E[\mathrm{softplus}(-D(x))] + E[\mathrm{softplus}(D(G(z)))] + \tfrac{\gamma}{2}
    E\lVert \nabla_x D(x)\rVert^2`, :math:`L_G = E[\mathrm{softplus}(-D(G(z)))]`; Adam (0.5, 0.99), one D and
    one G step per iteration. ``data`` (``(N, 256)`` in [-1, 1]) replaces the 16×16 training digits (tests);
    ``threads`` goes to :func:`common.harness.seeding.seeded_training` (the zoo uses 1). The history holds the
    per-step ``d_loss``, ``g_loss`` and ``r1``. ``callback(step, gen)`` is called every ``callback_every`` steps
    (after that many steps, with ``gen`` in eval mode and switched back to training after; it must not draw from
    torch's global RNG if the run is to stay identical to one without it): a quality trajectory.
    """
    from common.harness.seeding import seeded_training

    rng = seeded_training(seed, threads=threads)
    gen = MappingDCGenerator(z_dim=z_dim, mapping_layers=mapping_layers, width=width)
    disc = DCDiscriminator(image_size=IMAGE_SIZE, channels=1, width=d_width, batch_norm=False)
    if data is None:
        from common.digits16 import load_digits16_split
        data = load_digits16_split().x_train
    data = torch.as_tensor(data, dtype=torch.float32)
    if data.ndim != 2 or data.shape[1] != IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(f"expected data of shape [N, 256], got {tuple(data.shape)}")
    data = data.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    hist = train_r1_gan(gen, disc, data, rng, steps=steps, batch_size=batch_size, lr=lr, z_dim=z_dim,
                        r1_gamma=r1_gamma, progress=progress, desc="GAN16", mininterval=10.0, callback=callback,
                        callback_every=callback_every)
    return gen, hist


# ----------------------------------------------------------------------------------------- the zoo
def load_generator(name: str, directory: Path | None = None) -> MappingDCGenerator:
    """A 16×16 generator from the zoo (or ``directory``): ``common.mlp_gan.load_generator`` with this class
    (sha256-verified, frozen, eval mode, ``.manifest``). Saving is ``common.mlp_gan.save_generator``."""
    return _load_generator(name, directory, MappingDCGenerator)


def load_digits16_gan(seed: int, directory: Path | None = None) -> MappingDCGenerator:
    """The zoo's 16×16 digits DCGAN trained with ``seed`` (``digits16_gan_seed<seed>``; committed: 0, 1, 2)."""
    return load_generator(checkpoint_name(seed), directory)


# ----------------------------------------------------------------------------------------- evaluation
def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """``(N, 256)`` 16×16 images → ``(N, 64)`` least-squares 8×8 preimages (``common.digits16.to_digits8``), float32,
    the input of the 8×8 zoo digits classifier."""
    from common.digits16 import to_digits8

    return to_digits8(images).float()


@torch.no_grad()
def image_quality16(images: torch.Tensor, classifier, real_features: np.ndarray, k: int = 5) -> dict:
    """:func:`common.mlp_gan.image_quality` of the 8×8 preimages :func:`to_classifier_input` of 16×16 images."""
    from common.mlp_gan import image_quality

    return image_quality(to_classifier_input(images), classifier, real_features, k=k)
