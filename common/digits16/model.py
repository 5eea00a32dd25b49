r"""A small class-conditional UNet for 16×16 digits: ``diffusers.UNet2DModel`` built from a config.

The model answers the noise :math:`\hat\varepsilon(x_t, t, y)` of the same VP process as the 8×8
model (``common.diffusion.schedule.VPSchedule``: DDPM linear beta 1e-4..0.02, T = 1000,
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`), with the same time and label conventions (below).

**Parameterisation** (``prediction``, a constructor switch recorded in the checkpoint's manifest): the UNet's
raw output :math:`u = f_\theta(x_t, t, y)` is read either as

* ``"epsilon"``: :math:`\hat\varepsilon = u` (attempt 1), or
* ``"x0"``: :math:`\hat x_0 = u` and :math:`\hat\varepsilon = (x_t - \alpha_t \hat x_0) / \sigma_t`
  (:func:`eps_from_x0`; inverse :func:`x0_from_eps`, :math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t`).

Why x0: the 16×16 data span a 64-dim subspace :math:`S` (``common.digits16.data``). With :math:`P_\perp` the
projection off :math:`S`, the exact noise predictor satisfies :math:`P_\perp\varepsilon^*(x_t) =
P_\perp x_t/\sigma_t` (the data have no component there), a gain :math:`1/\sigma_t` on the input's
off-subspace part whatever its norm. A GroupNorm UNet is nearly invariant to its input's scale, so an
eps-network learns a gain matched to the *typical* noise norm (attempt 1's diagnosis). With ``"x0"`` the
identity holds exactly as soon as :math:`P_\perp \hat x_0 = 0` (in practice up to the small residual
:math:`\alpha_t P_\perp \hat x_0/\sigma_t`, which matters only at very small t: see the package docstring), an output
that needs no scale tracking:
:math:`P_\perp\hat\varepsilon = (P_\perp x_t - \alpha_t P_\perp\hat x_0)/\sigma_t = P_\perp x_t/\sigma_t`.

Other conventions:

* time: the **continuous** t in [t_min = 1e-3, 1] of ``common.diffusion.views`` (discrete step n sits at
  t = (n + 1) / 1000); the UNet's sinusoidal time embedding receives 1000 t (a float), as the 8×8
  EpsMLP embeds 1000 t, so a discrete scheduler at step n and a continuous solver query the same network;
* label: ``num_class_embeds = N_CLASSES + 1 = 11``; 0..9 are the digits, ``NULL_LABEL = 10`` is the
  "no class" token of classifier-free guidance; ``y = None`` means the null label. The class embedding is
  added to the time embedding (diffusers' ``class_embed_type=None``);
* ``eps(x, t, y)``: x flattened [B, 256] (row-major 16×16), float32 or float64; it runs in the network's
  dtype and answers in x's dtype (the model protocol of ``common/diffusion/views.py``).

Default config (:data:`DEFAULT_CONFIG`): 1 → 1 channel, ``block_out_channels=(32, 64, 64)`` at 16×16,
8×8, 4×4, one ResNet layer per block, no attention in the down/up blocks, the default mid block (ResNet,
self-attention at 4×4 with 8-dim heads, ResNet), GroupNorm with 8 groups. Everything comes from the
config dict: nothing is downloaded (never ``from_pretrained``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.diffusion.data import N_CLASSES, NULL_LABEL
from common.diffusion.model import build_denoiser
from common.diffusion.schedule import VPSchedule
from common.diffusion.views import Denoiser, batch_times
from common.digits16.data import DIM16, SIDE16

CHECKPOINT = "digits16_eps"  # in the model zoo (common/zoo/checkpoints), written by its zoo notebook
TIME_SCALE = 1000.0  # the UNet's timestep input is 1000 t
PREDICTIONS = ("epsilon", "x0")  # what the UNet's raw output is read as (module docstring)
DEFAULT_PREDICTION = "x0"  # chosen by the attempt-2 probes (results/zoo/digits16_attempt2/README.md)

DEFAULT_CONFIG = {
    "sample_size": SIDE16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "num_class_embeds": N_CLASSES + 1,
}


def _coefficient_columns(t: torch.Tensor, x: torch.Tensor, schedule: VPSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) as [B, 1] columns in x's dtype (computed in float64 by the schedule)."""
    t = batch_times(t, x)
    return schedule.alpha(t).to(x.dtype)[:, None], schedule.sigma(t).to(x.dtype)[:, None]


def eps_from_x0(x_t: torch.Tensor, x0_hat: torch.Tensor, t, schedule: VPSchedule | None = None) -> torch.Tensor:
    r""":math:`\hat\varepsilon = (x_t - \alpha_t \hat x_0) / \sigma_t` (x [B, D], t scalar or [B])."""
    alpha, sigma = _coefficient_columns(t, x_t, schedule or VPSchedule())
    return (x_t - alpha * x0_hat) / sigma


def x0_from_eps(x_t: torch.Tensor, eps_hat: torch.Tensor, t, schedule: VPSchedule | None = None) -> torch.Tensor:
    r""":math:`\hat x_0 = (x_t - \sigma_t \hat\varepsilon) / \alpha_t`, the inverse of :func:`eps_from_x0`."""
    alpha, sigma = _coefficient_columns(t, x_t, schedule or VPSchedule())
    return (x_t - sigma * eps_hat) / alpha


def unet_config(**overrides) -> dict:
    """:data:`DEFAULT_CONFIG` with ``overrides`` (e.g. ``block_out_channels=[8, 16]`` for a smoke test)."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown UNet config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    config = {**DEFAULT_CONFIG, **overrides}
    n = len(config["block_out_channels"])
    if "down_block_types" not in overrides:
        config["down_block_types"] = ["DownBlock2D"] * n
    if "up_block_types" not in overrides:
        config["up_block_types"] = ["UpBlock2D"] * n
    if SIDE16 % 2 ** (n - 1):
        raise ValueError(f"{n} blocks downsample 16×16 by 2^{n - 1}: too many")
    return config


class EpsUNet16(nn.Module):
    r"""Noise prediction on flattened 16×16 digits with a class-conditional ``UNet2DModel`` (module docstring).

    ``prediction`` ("epsilon" or "x0") says what the UNet's raw output is; ``forward``/``eps`` always answer
    :math:`\hat\varepsilon`, :meth:`raw` the UNet's output and :meth:`predict_x0` :math:`\hat x_0`.
    """

    def __init__(self, config: dict | None = None, prediction: str = DEFAULT_PREDICTION):
        super().__init__()
        from diffusers import UNet2DModel

        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.config = unet_config() if config is None else dict(config)
        if self.config.get("num_class_embeds") != N_CLASSES + 1:
            raise ValueError(f"num_class_embeds must be {N_CLASSES + 1} (10 digits + the null label {NULL_LABEL})")
        self.prediction = prediction
        self.schedule = VPSchedule()
        self.unet = UNet2DModel(**self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def raw(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's output (eps-hat or x0-hat, see ``prediction``): x [B, 256], t scalar or [B] in [t_min, 1],
        y [B] labels or None (null) -> [B, 256]."""
        if x.ndim != 2 or x.shape[1] != DIM16:
            raise ValueError(f"expected x of shape [B, {DIM16}], got {tuple(x.shape)}")
        t = batch_times(t, x)
        if y is None:
            y = torch.full((x.shape[0],), NULL_LABEL, dtype=torch.long, device=x.device)
        img = x.reshape(-1, 1, SIDE16, SIDE16)
        out = self.unet(img, (TIME_SCALE * t).to(self.dtype), class_labels=y).sample
        return out.reshape(-1, DIM16)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """eps-hat [B, 256] (for ``"x0"``: :func:`eps_from_x0` of the raw output)."""
        out = self.raw(x, t, y)
        return out if self.prediction == "epsilon" else eps_from_x0(x, out, t, self.schedule)

    def predict_x0(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """x0-hat [B, 256] (for ``"epsilon"``: :func:`x0_from_eps` of the raw output)."""
        out = self.raw(x, t, y)
        return out if self.prediction == "x0" else x0_from_eps(x, out, t, self.schedule)

    def eps(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """The model protocol: run in the network's dtype, answer in x's dtype."""
        return self.forward(x.to(self.dtype), t, y).to(x.dtype)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load_digits16_eps(dtype: torch.dtype = torch.float32, name: str = CHECKPOINT, directory: Path | None = None) -> Denoiser:
    """The pretrained 16×16 digits model (EMA weights, sha256-verified) as a frozen :class:`Denoiser`.

    ``dtype=torch.float64`` casts the network (for float64 reference solutions). A tampered or replaced
    file raises :class:`common.zoo.ChecksumError`; a missing one ``FileNotFoundError`` (train it with
    ``make zoo MODEL=train_digits16_eps``). The manifest's ``prediction`` picks the parameterisation.
    """
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    net = EpsUNet16(manifest["config"], prediction=manifest.get("prediction", "epsilon"))  # attempt 1 had no key
    net.load_state_dict(tensors)
    denoiser = build_denoiser(net.to(dtype))
    denoiser.manifest = manifest
    return denoiser
