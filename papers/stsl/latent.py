r"""The latent setting of the digits experiment: a small MLP VAE (64 → 8) and a latent diffusion model.

* VAE (Kingma & Welling 2014): encoder MLP 64-256-256-(μ, log σ²) ∈ ℝ⁸×ℝ⁸, decoder MLP 8-256-256-64;
  loss :math:`\|x - D(z)\|^2 / (2\cdot 0.2^2) + \mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I))`, z by
  reparameterisation. The diffusion latents are the encoder means divided by their global standard
  deviation (``scale``), so the latent model sees unit-variance data; ``encode``/``decode`` include the scale.
* Latent diffusion model: the repository's ``EpsMLP`` (common.diffusion.model) with ``dim = 8``, trained
  unconditionally (null label) with the DDPM ε-loss on the same VP schedule as ``common.diffusion``
  (continuous t ~ U[t_min, 1]), EMA weights.

Both are trained by ``papers/stsl/training/train_latent_models.ipynb`` and saved as paper-local checkpoints
(``papers/stsl/checkpoints``, sha256-verified manifests).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from common.diffusion.model import EpsMLP, build_denoiser
from common.diffusion.schedule import VPSchedule
from common.harness.seeding import seeded_training

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
LATENT_DIM = 8
VAE_NAME = "stsl_digits_vae"
LDM_NAME = "stsl_digits_ldm"
X_SIGMA = 0.2


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    """The VAE; ``encode``/``decode`` work in the scaled latent space of the diffusion model."""

    def __init__(self, dim: int = 64, latent_dim: int = LATENT_DIM, hidden: int = 256):
        super().__init__()
        self.config = dict(dim=dim, latent_dim=latent_dim, hidden=hidden)
        self.encoder = _mlp([dim, hidden, hidden, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, hidden, hidden, dim])
        self.register_buffer("scale", torch.ones(()))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h.chunk(2, dim=-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled posterior mean E(x) = μ(x) / scale."""
        dtype = self.scale.dtype
        return (self.posterior(x.to(dtype))[0] / self.scale).to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z) = decoder(scale · z)."""
        dtype = self.scale.dtype
        return self.decoder(z.to(dtype) * self.scale).to(z.dtype)


def _train_loop(
    params, loss_fn, steps: int, lr: float, desc: str | None = None, after_step=None
) -> list[float]:
    """Adam with a cosine learning rate over ``steps`` steps of ``loss_fn(step)``; ``after_step(step)`` runs
    (without gradients) after each optimiser step (the LDM's EMA). ``desc`` shows a progress bar. Returns the
    losses. Shared by the VAE and the latent diffusion model (same order of random draws as before)."""
    params = list(params)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    it = range(steps)
    if desc is not None:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc)
    for step in it:
        loss = loss_fn(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            with torch.no_grad():
                after_step(step)
        losses.append(float(loss))
    return losses


def train_vae(
    x_train: torch.Tensor,
    seed: int = 0,
    steps: int = 4000,
    batch_size: int = 128,
    lr: float = 1e-3,
    progress: bool = False,
) -> tuple[MLPVAE, list[float]]:
    """Train the VAE (Adam, cosine learning rate); sets ``scale`` to the std of the train means."""
    g = seeded_training(seed, threads=1)
    vae = MLPVAE(dim=x_train.shape[1])

    def loss_fn(_step: int) -> torch.Tensor:
        idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=g)
        x = x_train[idx]
        mu, logvar = vae.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        rec = ((vae.decoder(z) - x) ** 2).sum(-1) / (2 * X_SIGMA**2)
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
        return (rec + kl).mean()

    losses = _train_loop(vae.parameters(), loss_fn, steps, lr, "vae" if progress else None)
    vae.eval()
    with torch.no_grad():
        vae.scale.fill_(float(vae.posterior(x_train)[0].std()))
    vae.requires_grad_(False)
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
):
    """Train an unconditional EpsMLP on latents with the DDPM ε-loss; returns (EMA net, losses)."""
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


def save_models(
    vae: MLPVAE, ldm: EpsMLP, vae_manifest: dict, ldm_manifest: dict, directory: Path | None = None
):
    from common.zoo import save_checkpoint

    directory = directory or CHECKPOINT_DIR
    p1 = save_checkpoint(
        VAE_NAME, vae.state_dict(), {"config": vae.config, **vae_manifest}, directory=directory
    )
    p2 = save_checkpoint(
        LDM_NAME, ldm.state_dict(), {"config": ldm.config, **ldm_manifest}, directory=directory
    )
    return p1, p2


def load_models(directory: Path | None = None):
    """(vae, latent denoiser) from the paper-local checkpoints (sha256-verified)."""
    from common.zoo import load_checkpoint

    directory = directory or CHECKPOINT_DIR
    tensors, manifest = load_checkpoint(VAE_NAME, directory)
    vae = MLPVAE(**manifest["config"])
    vae.load_state_dict(tensors)
    vae.eval().requires_grad_(False)
    vae.manifest = manifest
    tensors, manifest = load_checkpoint(LDM_NAME, directory)
    net = EpsMLP(**manifest["config"])
    net.load_state_dict(tensors)
    model = build_denoiser(net)
    model.manifest = manifest
    return vae, model
