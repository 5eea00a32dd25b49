r"""A small MLP GAN with a mapping network for sklearn's 8×8 digits (the ci-sized member of the GAN family).

Zoo models ``digits_gan_seed0``, ``digits_gan_seed1``, ``digits_gan_seed2`` (``common/zoo/checkpoints/``),
trained by the zoo notebook ``common/zoo/notebooks/train_digits_gan.ipynb`` (one per seed, one CPU thread,
bit-reproducible); first used by ``papers/hubness_gan`` (hub sampling in the mapping network's w space).
The convolutional members (DCGAN with an optional mapping MLP, 16×16 and larger) are in :mod:`common.gan`,
whose :func:`~common.gan.latent_bank` gives the fixed, seeded latent banks used here too.

**Generator** :class:`MappingGenerator` (StyleGAN-like, Karras et al. 2019): a latent
:math:`z \in \mathbb R^{d}` (``z_dim`` = 32) goes through a **mapping network**
:math:`w = f(z)`, ``mapping_layers`` (2) blocks ``Linear(d, d)`` + LeakyReLU(0.2), so :math:`w \in \mathbb R^{d}`;
then a **synthesis** MLP ``d → hidden → hidden → 64`` (LeakyReLU(0.2)) with ``tanh``, an 8×8 digit in [-1, 1]
as 64 pixels. ``gen.mapping`` and ``gen.synthesis`` are exposed separately, so that a sampler can work in w
(hub selection, the truncation trick :math:`\bar w + \psi (w - \bar w)`).

**Discriminator** :class:`MLPDiscriminator`: 64 pixels → ``hidden`` → ``hidden`` (LeakyReLU(0.2)) → one logit.

**Training** :func:`train_digits_gan`: the non-saturating GAN loss (Goodfellow et al. 2014, Sec. 3) with the
R1 penalty on real data (Mescheder et al. 2018; StyleGAN2's regulariser), γ = ``r1_gamma`` = 10,

.. math::

    L_D = \mathbb E_x[\mathrm{softplus}(-D(x))] + \mathbb E_z[\mathrm{softplus}(D(G(z)))]
          + \frac{\gamma}{2}\, \mathbb E_x \lVert \nabla_x D(x) \rVert^2,
    \qquad L_G = \mathbb E_z[\mathrm{softplus}(-D(G(z)))],

one D and one G Adam step per iteration (lr 2e-4, betas (0.5, 0.99)), batches of 64 drawn with replacement
from the 1500 training digits (``common.diffusion.data.load_digits_split().x_train``). Without R1 this MLP GAN
collapses to a handful of digits (:func:`common.gan.train_gan` has no R1). Seeded by
:func:`common.harness.seeding.seeded_training`: torch's global RNG draws the initialisation, one
``torch.Generator`` the batches and latents, in a fixed order.

**Evaluation** :func:`image_quality`: precision / recall / density / coverage (``common.gen_metrics.prdc``, k = 5)
and the Fréchet distance of the zoo digits classifier's 32-D features against real features, and the
classifier's mean confidence (max softmax) on the images.

Moved here from ``papers/hubness_gan/hubness.py`` unchanged in its arithmetic and its order of random draws, so
the same seed and parameters give the same tensors bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.gan import latent_bank  # noqa: F401  (re-exported: the evaluation latents are a latent bank)

SEEDS = (0, 1, 2)  # the committed zoo generators


def checkpoint_name(seed: int) -> str:
    """The zoo name of the digits GAN trained with ``seed``: ``digits_gan_seed<seed>``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return f"digits_gan_seed{int(seed)}"


# ----------------------------------------------------------------------------------------- the GAN
class MappingGenerator(nn.Module):
    """z (``z_dim``) → mapping MLP → w (``z_dim``) → synthesis MLP → 64 pixels in [-1, 1] (tanh)."""

    def __init__(self, z_dim: int = 32, mapping_layers: int = 2, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        if z_dim < 1 or mapping_layers < 1 or hidden < 1:
            raise ValueError(f"need positive sizes, got z_dim={z_dim}, mapping_layers={mapping_layers}, hidden={hidden}")
        self.z_dim, self.w_dim = z_dim, z_dim
        layers = []
        for _ in range(mapping_layers):
            layers += [nn.Linear(z_dim, z_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.synthesis = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, out_dim), nn.Tanh(),
        )
        self.config = {"z_dim": z_dim, "mapping_layers": mapping_layers, "hidden": hidden, "out_dim": out_dim}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


class MLPDiscriminator(nn.Module):
    """64 pixels → two LeakyReLU(0.2) layers → one logit."""

    def __init__(self, in_dim: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).flatten()


def train_digits_gan(seed: int, steps: int = 6000, batch_size: int = 64, lr: float = 2e-4, z_dim: int = 32,
                     hidden: int = 128, r1_gamma: float = 10.0, progress: bool = False,
                     data: torch.Tensor | None = None,
                     threads: int | None = None) -> tuple[MappingGenerator, dict]:
    r"""Train the mapping-MLP GAN on the 1500 training digits; returns (G in eval mode, history).

    Non-saturating loss (Goodfellow et al. 2014) with the R1 penalty of StyleGAN2 on real data,
    :math:`L_D = E[\mathrm{softplus}(-D(x))] + E[\mathrm{softplus}(D(G(z)))] + \tfrac{\gamma}{2}
    E\lVert \nabla_x D(x)\rVert^2`, :math:`L_G = E[\mathrm{softplus}(-D(G(z)))]`; Adam (0.5, 0.99),
    one D and one G step per iteration. Seeded: ``torch.manual_seed(seed)`` draws the initialisation and a
    ``torch.Generator`` the batches and latents. ``data`` (``(N, 64)`` in [-1, 1]) replaces the training digits
    (tests); ``threads`` is passed to :func:`common.harness.seeding.seeded_training` (the zoo uses 1). The history
    holds the per-step ``d_loss``, ``g_loss`` and ``r1``.
    """
    from common.diffusion.data import load_digits_split
    from common.harness.seeding import seeded_training

    if data is not None and (data.ndim != 2 or data.shape[1] != 64):
        raise ValueError(f"expected data of shape [N, 64], got {tuple(data.shape)}")
    rng = seeded_training(seed, threads=threads)
    gen, disc = MappingGenerator(z_dim=z_dim, hidden=hidden), MLPDiscriminator(hidden=hidden)
    data = load_digits_split().x_train if data is None else data
    hist = train_r1_gan(gen, disc, data, rng, steps=steps, batch_size=batch_size, lr=lr, z_dim=z_dim,
                        r1_gamma=r1_gamma, progress=progress, desc="GAN", mininterval=5.0)
    return gen, hist


def train_r1_gan(gen: nn.Module, disc: nn.Module, data: torch.Tensor, rng: torch.Generator, steps: int,
                 batch_size: int, lr: float, z_dim: int, r1_gamma: float, progress: bool = False, desc: str = "GAN",
                 mininterval: float = 5.0, callback=None, callback_every: int = 0) -> dict:
    r"""The R1-regularised non-saturating GAN loop of :func:`train_digits_gan` and
    ``common.dcgan16.train_digits16_gan``; trains ``gen`` and ``disc`` in place, then puts ``gen`` in eval mode
    and freezes it. Returns the history (per-step ``d_loss``, ``g_loss``, ``r1``).

    Per step: real rows ``x = data[randint(len(data), (batch_size,), rng)]`` and ``z ~ N(0, I_{z_dim})`` from
    ``rng``; the discriminator loss (Mescheder et al. 2018, R1 on real data)

    .. math:: L_D = \mathbb E_x[\mathrm{softplus}(-D(x))] + \mathbb E_z[\mathrm{softplus}(D(G(z)))]
              + \frac{\gamma}{2}\, \mathbb E_x \lVert \nabla_x D(x) \rVert^2,

    the squared gradient norm summed over every non-batch axis of ``data``, G(z) computed without gradients and
    reshaped to ``data``'s row shape; one Adam step on D; fresh ``z`` from ``rng`` and one Adam step on G for
    :math:`L_G = \mathbb E_z[\mathrm{softplus}(-D(G(z)))]`. Both Adams have learning rate ``lr`` and betas
    (0.5, 0.99). ``callback(step, gen)`` runs every ``callback_every`` steps (``callback_every`` > 0), with
    ``gen`` in eval mode and without gradients, and ``gen`` back in training mode after; it must not draw from
    torch's global RNG or ``rng`` if the run is to stay identical to one without it. ``progress`` shows a bar
    labelled ``desc``, refreshed at most every ``mininterval`` s.
    """
    import torch.nn.functional as F

    if steps < 1 or batch_size < 2 or r1_gamma < 0:
        raise ValueError(f"need steps >= 1, batch_size >= 2, r1_gamma >= 0, got {steps}, {batch_size}, {r1_gamma}")
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))
    hist = {"d_loss": [], "g_loss": [], "r1": []}
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=desc, leave=False, mininterval=mininterval)  # a short log in the executed notebook
    row_shape = tuple(data.shape[1:])
    gen.train()
    for _ in it:
        x = data[torch.randint(len(data), (batch_size,), generator=rng)].requires_grad_(True)
        z = torch.randn(batch_size, z_dim, generator=rng)
        d_real = disc(x)
        grad, = torch.autograd.grad(d_real.sum(), x, create_graph=True)
        r1 = grad.square().sum(dim=tuple(range(1, grad.ndim))).mean()
        with torch.no_grad():
            x_fake = gen(z).reshape(-1, *row_shape)
        d_loss = F.softplus(-d_real).mean() + F.softplus(disc(x_fake)).mean() + 0.5 * r1_gamma * r1
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        z = torch.randn(batch_size, z_dim, generator=rng)
        g_loss = F.softplus(-disc(gen(z).reshape(-1, *row_shape))).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        hist["d_loss"].append(float(d_loss.detach()))
        hist["g_loss"].append(float(g_loss.detach()))
        hist["r1"].append(float(r1.detach()))
        if callback is not None and callback_every > 0 and len(hist["r1"]) % callback_every == 0:
            gen.eval()
            with torch.no_grad():
                callback(len(hist["r1"]), gen)
            gen.train()
    gen.eval()
    gen.requires_grad_(False)
    return hist


# ----------------------------------------------------------------------------------------- the zoo
def save_generator(gen: nn.Module, name: str, manifest: dict, directory: Path | None = None) -> Path:
    """Save a generator with a ``config`` (this module's or ``common.dcgan16``'s; weights and buffers) as
    ``<name>.safetensors`` + ``<name>.json`` (with the file's sha256) in the zoo (``directory`` None) or in
    ``directory``; the manifest gains ``config``."""
    from common.zoo import save_checkpoint

    tensors = {key: val.detach().contiguous() for key, val in gen.state_dict().items()}
    return save_checkpoint(name, tensors, {"config": gen.config, **manifest}, directory=directory)


def load_generator(name: str, directory: Path | None = None, generator_cls: type | None = None) -> nn.Module:
    """A generator from the zoo (or ``directory``), sha256-verified by ``common.zoo.load_checkpoint`` (a tampered
    file raises ``common.zoo.ChecksumError``), frozen, in eval mode; ``.manifest`` holds its manifest.
    ``generator_cls`` (default :class:`MappingGenerator`) is built from the manifest's ``config``."""
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    gen = (generator_cls or MappingGenerator)(**manifest["config"])
    gen.load_state_dict(tensors)
    gen.eval()
    gen.requires_grad_(False)
    gen.manifest = manifest
    return gen


def load_digits_gan(seed: int, directory: Path | None = None) -> MappingGenerator:
    """The zoo's digits GAN trained with ``seed`` (``digits_gan_seed<seed>``; committed: seeds 0, 1, 2)."""
    return load_generator(checkpoint_name(seed), directory)


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def image_quality(images: torch.Tensor, classifier, real_features: np.ndarray, k: int = 5) -> dict:
    """PRDC and the Fréchet distance of the classifier features against the real ones, and the mean
    max-softmax confidence of the classifier on the images."""
    from common.diffusion.metrics import frechet_distance
    from common.gen_metrics import prdc

    h = classifier.features(images)
    feats = h.double().numpy()
    conf = torch.softmax(classifier.head(h), dim=1).max(dim=1).values
    return {**prdc(real_features, feats, k=k), "confidence": float(conf.mean()),
            "fd": float(frechet_distance(real_features, feats))}
