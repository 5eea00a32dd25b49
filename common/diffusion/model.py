r"""The repository's pretrained diffusion model: a class-conditional residual MLP that predicts noise.

``EpsMLP`` maps a noisy digit :math:`x_t \in \mathbb{R}^{64}`, a continuous time t in [1e-3, 1] and a
label y in {0..9, 10 = null} to :math:`\hat\varepsilon(x_t, t, y)`, trained with the DDPM loss
:math:`\mathbb{E}\,\|\varepsilon - \hat\varepsilon(\alpha_t x_0 + \sigma_t\varepsilon, t, y)\|^2` (Ho et al.
2020, Eq. 14, with continuous t ~ U[1e-3, 1] on the interpolated DDPM schedule) and label dropout p = 0.1
to the null label, so one network gives conditional, unconditional and classifier-free-guided
predictions (Ho & Salimans 2022).

Architecture (widths are the checkpoint's ``config``):

* time: sinusoidal embedding (Vaswani et al. 2017 / DDPM) of 1000 t, 128 dims, then Linear-SiLU-Linear
  to ``cond_dim``; label: an embedding table of 11 entries (``cond_dim``); their sum is the condition c;
* input Linear(64, width); ``n_blocks`` residual blocks
  :math:`h \leftarrow h + W_2\,\mathrm{SiLU}(W_1\,\mathrm{LN}(h) + P_k c)` (additive conditioning, one
  projection :math:`P_k` per block); output LayerNorm, Linear(width, 64).

The zoo checkpoints ``digits_eps_ci`` (width 256) and ``digits_eps_full`` (width 512) hold the EMA
weights; :func:`load_digits_eps` verifies their sha256 and returns a :class:`~common.diffusion.views.Denoiser`.
Training lives in :mod:`common.diffusion.train` and the zoo notebook ``train_digits_eps``. ``digits_eps_ci``:
12k steps, seed 0, final EMA; held-out eps loss 0.088 conditional (its own held-out curve has its minimum,
0.084 on validation draws, near step 6,000). ``digits_eps_full``: the same schedule (12k steps, seed 0) with
early stopping on the held-out loss of the EMA (every 250 steps; selected on validation noise draws of the
297 held-out digits, reported on other draws of the same digits, so slightly optimistic), keeping step 4,500: held-out loss 0.083
conditional, 0.096 unconditional, FD32 to train 3.42 conditional (ci 3.71) and 32.0 unconditional (ci 55.1).
Without early stopping the width-512 network overfits the 1500 training digits (0.111 at 12k steps; a
40k-step run memorised, 0.24). Guided sampling (w = 3) is worse for the full model (FD 211 vs 98), and its
conditional label accuracy lower (0.962 vs 0.988); see the manifests' ``evaluation``. The ci recipe's EMA
snapshots after 250, 1000 and 3000 steps are ``digits_eps_ci_step<k>`` (float16).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from common.diffusion.data import DIM, N_CLASSES, NULL_LABEL
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser, batch_times

CHECKPOINTS = {"ci": "digits_eps_ci", "full": "digits_eps_full"}


def timestep_embedding(t: torch.Tensor, dim: int = 128, scale: float = 1000.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(scale t f_k), sin(scale t f_k)] with f_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = scale * t.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 LN(h) + P c): a pre-norm MLP block with additive conditioning."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.cond = nn.Linear(cond_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.cond(c)))


class EpsMLP(nn.Module):
    """Class-conditional noise-prediction residual MLP (see the module docstring)."""

    def __init__(
        self,
        dim: int = DIM,
        width: int = 256,
        n_blocks: int = 4,
        t_embed_dim: int = 128,
        cond_dim: int = 128,
        n_labels: int = N_CLASSES + 1,
    ):
        super().__init__()
        if width <= 0 or n_blocks <= 0 or t_embed_dim % 2:
            raise ValueError(f"need width > 0, n_blocks > 0 and an even t_embed_dim, got {width}, {n_blocks}, {t_embed_dim}")
        self.config = dict(dim=dim, width=width, n_blocks=n_blocks, t_embed_dim=t_embed_dim, cond_dim=cond_dim, n_labels=n_labels)
        self.time_mlp = nn.Sequential(nn.Linear(t_embed_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.label_embedding = nn.Embedding(n_labels, cond_dim)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([ResidualBlock(width, cond_dim) for _ in range(n_blocks)])
        self.out_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, dim)

    def condition(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """c = MLP(sinusoidal(1000 t)) + E[y]; y = None means the null label."""
        dtype = self.input.weight.dtype
        if y is None:
            y = torch.full((batch,), NULL_LABEL, dtype=torch.long, device=t.device)
        emb = timestep_embedding(t, self.config["t_embed_dim"]).to(dtype)
        return self.time_mlp(emb) + self.label_embedding(y)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        t = batch_times(t, x)
        c = self.condition(t, y, x.shape[0])
        h = self.input(x)
        for block in self.blocks:
            h = block(h, c)
        return self.output(self.out_norm(h))

    def eps(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """The model protocol: run in the network's dtype, answer in x's dtype."""
        dtype = self.input.weight.dtype
        return self.forward(x.to(dtype), t, y).to(x.dtype)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_denoiser(net: EpsMLP, schedule: VPSchedule | None = None) -> Denoiser:
    """Freeze ``net`` (eval mode, no parameter gradients) and wrap it in a Denoiser."""
    net.eval()
    net.requires_grad_(False)
    denoiser = Denoiser(net.eps, schedule if schedule is not None else VPSchedule())
    denoiser.net = net
    return denoiser


def load_eps_checkpoint(name: str, dtype: torch.dtype = torch.float32, directory: Path | None = None) -> Denoiser:
    """Load a zoo checkpoint of an EpsMLP (sha256-verified: a tampered file raises ChecksumError).

    The Denoiser gets the schedule the manifest records (``"schedule"``, see ``VPSchedule.config``); manifests
    written before schedules were recorded are DDPM linear, the default.
    """
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    net = EpsMLP(**manifest["config"])
    net.load_state_dict(tensors)
    denoiser = build_denoiser(net.to(dtype), VPSchedule.from_config(manifest.get("schedule")))
    denoiser.manifest = manifest
    return denoiser


def load_digits_eps(size: str = "ci", dtype: torch.dtype = torch.float32) -> Denoiser:
    """The pretrained digits model: ``size="ci"`` (width 256) or ``"full"`` (width 512), EMA weights.

    ``dtype=torch.float64`` casts the network (for float64 reference solutions).
    """
    if size not in CHECKPOINTS:
        raise ValueError(f"size must be one of {sorted(CHECKPOINTS)}, got {size!r}")
    return load_eps_checkpoint(CHECKPOINTS[size], dtype)
