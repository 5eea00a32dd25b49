r"""A latent model of the 8×8 digits: a small MLP VAE (64 → 8) and a latent diffusion model on its latents.

Zoo models ``digits_vae`` and ``digits_ldm`` (``common/zoo/checkpoints/``), trained by the zoo notebook
``common/zoo/notebooks/train_digits_vae.ipynb`` (seed 0, one CPU thread, bit-reproducible); first used by
``papers/stsl`` (latent DPS, PSLD and STSL on the digits).

**VAE** (Kingma & Welling 2014). Encoder MLP 64-256-256-(μ, log σ²) with μ, log σ² ∈ ℝ⁸, decoder MLP
8-256-256-64 (SiLU), a Gaussian decoder with fixed σ_x = ``X_SIGMA`` = 0.2 and the prior N(0, I). Training
minimises the negative ELBO per image, up to an additive constant,

.. math::

    -\mathrm{ELBO}(x) = \mathbb E_{q(z|x)}\Big[\frac{\|x - D(z)\|^2}{2\sigma_x^2}\Big]
        + \mathrm{KL}\big(\mathcal N(\mu, \mathrm{diag}\,\sigma^2)\,\|\,\mathcal N(0, I)\big),
    \qquad \mathrm{KL} = \tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - 1 - \log \sigma_j^2\big),

with one reparameterised sample z = μ + σ ⊙ ε, ε ~ N(0, I) (:func:`negative_elbo`). The diffusion latents are
the encoder means divided by their global standard deviation over the train split (the buffer ``scale``),
so the latent model sees unit-variance data; :meth:`MLPVAE.encode` / :meth:`MLPVAE.decode` include it.

**Latent diffusion model.** The repository's :class:`common.diffusion.model.EpsMLP` with ``dim = 8`` (width 128,
3 blocks), unconditional (null label), on the VP schedule of :mod:`common.diffusion`
(z_t = α_t z₀ + σ_t ε, continuous t ~ U[t_min, 1]), trained with the DDPM ε-prediction loss

.. math::

    \mathcal L(\theta) = \mathbb E_{z_0, t, \varepsilon}\,
        \big\| \hat\varepsilon_\theta(\alpha_t z_0 + \sigma_t \varepsilon, t) - \varepsilon \big\|^2
    \quad (\text{mean over the batch and the 8 coordinates}),

Adam with a cosine learning rate, and an EMA of the weights (decay ``min(0.999, (1 + k)/(10 + k))`` after step k);
the EMA weights are the model.

Moved here from ``papers/stsl/latent.py`` unchanged in its arithmetic and its order of random draws, so the same
seed and parameters give the same tensors bit for bit.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from common.diffusion.model import EpsMLP, load_eps_checkpoint
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser
from common.harness.seeding import seeded_training

LATENT_DIM = 8
X_SIGMA = 0.2  # the Gaussian decoder's fixed standard deviation (images in [-1, 1])
VAE_NAME = "digits_vae"  # zoo checkpoint names
LDM_NAME = "digits_ldm"


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class ScaledLatentVAE(nn.Module):
    """The scaled latent maps shared by the digits VAEs (this module's :class:`MLPVAE` and
    ``common.latent_digits16.ConvVAE16``). A subclass defines ``posterior`` (x ↦ (μ(x), log σ²(x)), unscaled),
    ``decoder`` and the buffer ``scale``; ``encode``/``decode`` then work in the scaled latent space of the
    diffusion model, E(x) = μ(x) / scale and D(z) = decoder(scale · z), computed in the dtype of ``scale``
    and returned in the dtype of their input."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled posterior mean E(x) = μ(x) / scale."""
        dtype = self.scale.dtype
        return (self.posterior(x.to(dtype))[0] / self.scale).to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z) = decoder(scale · z)."""
        dtype = self.scale.dtype
        return self.decoder(z.to(dtype) * self.scale).to(z.dtype)


class MLPVAE(ScaledLatentVAE):
    """The VAE; ``encode``/``decode`` (:class:`ScaledLatentVAE`) work in the scaled latent space of the diffusion
    model."""

    def __init__(self, dim: int = 64, latent_dim: int = LATENT_DIM, hidden: int = 256):
        super().__init__()
        self.config = dict(dim=dim, latent_dim=latent_dim, hidden=hidden)
        self.encoder = _mlp([dim, hidden, hidden, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, hidden, hidden, dim])
        self.register_buffer("scale", torch.ones(()))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ(x), log σ²(x)) of q(z|x), unscaled."""
        h = self.encoder(x)
        return h.chunk(2, dim=-1)


def negative_elbo(
    vae: MLPVAE, x: torch.Tensor, generator: torch.Generator | None = None, x_sigma: float = X_SIGMA
) -> torch.Tensor:
    """Per-image negative ELBO (up to a constant): ‖x − D(z)‖²/(2σ_x²) + KL(q(z|x) ‖ N(0, I)), one
    reparameterised z = μ + exp(½ log σ²) ε drawn with ``generator``; unscaled latents (the training loss)."""
    mu, logvar = vae.posterior(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
    rec = ((vae.decoder(z) - x) ** 2).sum(-1) / (2 * x_sigma**2)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
    return rec + kl


def _train_loop(
    params, loss_fn, steps: int, lr: float, desc: str | None = None, after_step=None
) -> list[float]:
    """Adam with a cosine learning rate over ``steps`` steps of ``loss_fn(step)``; ``after_step(step)`` runs
    (without gradients) after each optimiser step (the LDM's EMA). ``desc`` shows a progress bar. Returns the
    losses. Shared by the VAE and the latent diffusion model."""
    params = list(params)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    it = range(steps)
    if desc is not None:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, mininterval=5.0)  # a short log in the executed notebook
    for step in it:
        loss = loss_fn(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            with torch.no_grad():
                after_step(step)
        losses.append(float(loss.detach()))
    return losses


def fit_vae(
    vae: nn.Module,
    x_train: torch.Tensor,
    generator: torch.Generator,
    steps: int,
    batch_size: int,
    lr: float,
    x_sigma: float = X_SIGMA,
    desc: str | None = None,
) -> list[float]:
    r"""Fit a VAE (this module's :class:`MLPVAE` or ``common.latent_digits16.ConvVAE16``: anything with
    ``posterior``, ``decoder`` and a ``scale`` buffer) in place; the one training recipe of both digits VAEs.

    Each step draws a batch of ``batch_size`` rows of ``x_train`` with replacement (``torch.randint`` on
    ``generator``) and minimises the batch mean of :func:`negative_elbo` (σ_x = ``x_sigma``, its reparameterisation
    noise from the same ``generator``), :math:`\frac1B \sum_b -\mathrm{ELBO}(x_b)`, by :func:`_train_loop` (Adam,
    cosine learning rate, ``desc`` a progress bar). Then the VAE goes to eval mode, its ``scale`` is set to the
    standard deviation of the unscaled posterior means μ(x) over all of ``x_train`` (all coordinates), and it is
    frozen. Draws nothing from torch's global RNG. Returns the per-step losses.
    """

    def loss_fn(_step: int) -> torch.Tensor:
        idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
        return negative_elbo(vae, x_train[idx], generator, x_sigma=x_sigma).mean()

    losses = _train_loop(vae.parameters(), loss_fn, steps, lr, desc)
    vae.eval()
    with torch.no_grad():
        vae.scale.fill_(float(vae.posterior(x_train)[0].std()))
    vae.requires_grad_(False)
    return losses


def train_vae(
    x_train: torch.Tensor,
    seed: int = 0,
    steps: int = 4000,
    batch_size: int = 128,
    lr: float = 1e-3,
    progress: bool = False,
) -> tuple[MLPVAE, list[float]]:
    """Train the VAE on the rows of ``x_train`` by minimising the batch mean of :func:`negative_elbo` (Adam,
    cosine learning rate, batches drawn with replacement, then ``scale`` set to the std of the train means: the
    recipe of :func:`fit_vae`).

    Seeded by :func:`common.harness.seeding.seeded_training` (one thread): the initialisation comes from torch's
    global RNG, the batches and the reparameterisation noise from one generator. Returns (frozen VAE, losses).
    """
    g = seeded_training(seed, threads=1)
    vae = MLPVAE(dim=x_train.shape[1])
    losses = fit_vae(vae, x_train, g, steps, batch_size, lr, X_SIGMA, "vae" if progress else None)
    return vae, losses


def train_ldm(
    z_train: torch.Tensor,
    seed: int = 0,
    steps: int = 6000,
    batch_size: int = 256,
    lr: float = 1e-3,
    width: int = 128,
    n_blocks: int = 3,
    ema_decay: float = 0.999,
    progress: bool = False,
) -> tuple[EpsMLP, list[float]]:
    """Train an unconditional :class:`EpsMLP` on the latents ``z_train`` with the DDPM ε-prediction loss
    E‖ε̂(α_t z₀ + σ_t ε, t) − ε‖² (t ~ U[t_min, 1] in float64, the VP schedule of ``common.diffusion``);
    Adam, cosine learning rate, EMA with warm-up. Seeded like :func:`train_vae`. Returns (EMA net, losses)."""
    g = seeded_training(seed, threads=1)
    schedule = VPSchedule()
    net = EpsMLP(dim=z_train.shape[1], width=width, n_blocks=n_blocks, t_embed_dim=64, cond_dim=64)
    ema = copy.deepcopy(net)

    def loss_fn(_step: int) -> torch.Tensor:
        idx = torch.randint(0, z_train.shape[0], (batch_size,), generator=g)
        z0 = z_train[idx]
        t = schedule.t_min + (1.0 - schedule.t_min) * torch.rand(batch_size, generator=g, dtype=torch.float64)
        noise = torch.randn(z0.shape, generator=g)
        zt = schedule.add_noise(z0, t, noise).to(torch.float32)
        return torch.mean((net(zt, t, None) - noise) ** 2)

    def ema_update(step: int) -> None:
        d = min(ema_decay, (1.0 + step) / (10.0 + step))
        for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
            pe.lerp_(p, 1.0 - d)

    losses = _train_loop(
        net.parameters(), loss_fn, steps, lr, "ldm" if progress else None, after_step=ema_update
    )
    return ema, losses


def reconstruction_psnr(vae: MLPVAE, x: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR per image (dB, float64) of the reconstruction D(E(x)) against x, images in [-1, 1] (the
    reconstruction clipped first): 20 log₁₀(range) − 10 log₁₀ mean((clip(D(E(x))) − x)²)."""
    with torch.no_grad():
        rec = vae.decode(vae.encode(x))
    mse = ((rec.double().clamp(-1, 1) - x.double()) ** 2).mean(-1)
    return 20.0 * torch.log10(torch.tensor(data_range, dtype=torch.float64)) - 10.0 * torch.log10(
        mse.clamp_min(1e-20)
    )


def eps_loss(net: EpsMLP, z: torch.Tensor, seed: int = 0, n_draws: int = 8) -> float:
    """The ε-prediction loss of the latent ``net`` on the latents ``z`` (e.g. the encoded held-out digits),
    averaged over ``n_draws`` draws of (t, ε) from a generator seeded with ``seed`` (an evaluation; it draws
    nothing from torch's global RNG and trains nothing)."""
    g = torch.Generator().manual_seed(seed)
    schedule = VPSchedule()
    total = 0.0
    with torch.no_grad():
        for _ in range(n_draws):
            t = schedule.t_min + (1.0 - schedule.t_min) * torch.rand(z.shape[0], generator=g, dtype=torch.float64)
            noise = torch.randn(z.shape, generator=g)
            zt = schedule.add_noise(z, t, noise).to(torch.float32)
            total += float(torch.mean((net(zt, t, None) - noise) ** 2))
    return total / n_draws


def save_with_config(
    model: nn.Module, manifest: dict, name: str, directory: Path | None = None
) -> Path:
    """Write ``model``'s state dict (buffers included) to the zoo (or ``directory``) as ``name``; the manifest
    gains the model's ``config``. The one writer of the digits VAEs and latent diffusion models (8×8 and 16×16)."""
    from common.zoo import save_checkpoint

    return save_checkpoint(name, model.state_dict(), {"config": model.config, **manifest}, directory=directory)


def load_frozen_vae(vae_cls: type, name: str, directory: Path | None = None) -> nn.Module:
    """A VAE of class ``vae_cls`` built from the manifest's ``config`` and loaded from the zoo checkpoint ``name``
    (sha256-verified: a tampered file raises ``common.zoo.ChecksumError``), frozen, in eval mode; ``.manifest``
    holds its manifest. The one loader of the 8×8 and 16×16 digits VAEs."""
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    vae = vae_cls(**manifest["config"])
    vae.load_state_dict(tensors)
    vae.eval().requires_grad_(False)
    vae.manifest = manifest
    return vae


def save_digits_vae(vae: MLPVAE, manifest: dict, name: str = VAE_NAME, directory: Path | None = None) -> Path:
    """Write the VAE (with its ``scale``) to the zoo; the manifest gains ``config``."""
    return save_with_config(vae, manifest, name, directory)


def save_digits_ldm(net: EpsMLP, manifest: dict, name: str = LDM_NAME, directory: Path | None = None) -> Path:
    """Write the latent EpsMLP (EMA weights) to the zoo; the manifest gains ``config``."""
    return save_with_config(net, manifest, name, directory)


def load_digits_vae(name: str = VAE_NAME, directory: Path | None = None) -> MLPVAE:
    """The digits VAE from the zoo (sha256-verified: a tampered file raises ``common.zoo.ChecksumError``),
    frozen, in eval mode; ``.manifest`` holds its manifest."""
    return load_frozen_vae(MLPVAE, name, directory)


def load_digits_ldm(name: str = LDM_NAME, directory: Path | None = None) -> Denoiser:
    """The latent diffusion model from the zoo as a frozen :class:`Denoiser` on the VP schedule (``.net`` the
    EpsMLP, ``.manifest`` its manifest; sha256-verified). Its data are ``load_digits_vae().encode(x)``."""
    return load_eps_checkpoint(name, directory=directory)
