r"""FreeU (Si, Huang, Jiang, Liu; CVPR 2024) on a ``diffusers.UNet2DModel``: re-weighting backbone and skip features.

A U-Net decoder stage l receives the backbone features :math:`h_l` (from the stage below, C channels) and the
skip features :math:`s_l` of the encoder at the same resolution; every ResNet of the stage reads
:math:`[h, s]` concatenated along channels. FreeU changes only what the first two decoder stages (l = 1, 2:
the two coarsest, ``up_blocks[0]`` and ``up_blocks[1]``) read, at inference, without training:

* **backbone scaling** of the first half of the backbone channels,

  .. math:: h'_{l,c} = b_l\,h_{l,c}\ \ (c < \lfloor C/2 \rfloor), \qquad h'_{l,c} = h_{l,c}\ \ \text{otherwise};

* **spectral skip scaling**, low frequencies of the skip features damped by :math:`s_l`,

  .. math:: s'_l = \mathcal{F}^{-1}\bigl(\beta_l \odot \mathcal{F}(s_l)\bigr)\ \text{(real part)},\qquad
            \beta_l(k_y, k_x) = s_l \text{ if } k_y, k_x \in \{-r, \dots, r - 1\} \pmod{H, W},\ 1 \text{ otherwise},

  with :math:`\mathcal{F}` the 2-D DFT over the spatial axes and threshold r = 1 (so the scaled window is
  the 2×2 block of frequencies {−1, 0}² around DC: the official code sets the centred square
  ``[H/2 − r, H/2 + r)`` of the *fftshifted* spectrum, the same set; it is not symmetric under k → −k, hence
  the real part).

Within a stage both maps apply to every ResNet's input: the stage's own backbone input for the first ResNet,
the previous ResNet's output for the next ones (as in diffusers' ``UpBlock2D`` with ``apply_freeu``, where the
stage is the block's ``resolution_idx``). DreamCatalyst's HQ mode uses b1 = b2 = 1.1, s1 = 0.9, s2 = 0.2
(official ``nerfstudio/dc/utils/free_lunch.py``, read, not copied). **Two stage assignments** (``stages``):

* ``"diffusers"`` (the default): by decoder stage, as diffusers' ``resolution_idx`` 0 → b1/s1, 1 → b2/s2: on
  ``EpsUNet16`` (decoder widths 64, 64, 32) s2 = 0.2 lands on ``up_blocks[1]``, the 8×8 stage.
* ``"channels"``: the official code's rule. Inside every up block, before each ResNet, it tests the channel count of
  the backbone features entering it: 1280 (Stable Diffusion's widest decoder width) → b1/s1, 640 → b2/s2, others
  untouched; so in SD b1/s1 acts on ``up_blocks[0]``, ``[1]`` and the first ResNet of ``[2]`` (whose input is still
  1280 wide), b2/s2 on the rest of ``[2]`` and the first ResNet of ``[3]``. Transferred relative to the widest
  width W: W → b1/s1, W/2 → b2/s2. On ``EpsUNet16`` (W = 64): b1/s1 on both ResNets of ``up_blocks[0]`` and
  ``[1]`` and the first of ``[2]``, b2/s2 = 0.2 on the second ResNet of ``up_blocks[2]`` (its 32-wide backbone and
  its 16×16 skip).

It lives in ``common/`` rather than ``common/digits16/``: it works on ``UNet2DModel``-style networks whose
``up_blocks`` are ``UpBlock2D``-like (``resnets`` only; with attention after each ResNet, as in ``AttnUpBlock2D``,
the hooks would scale a ResNet's output before the attention, where the official CrossAttn loop scales after it),
and a new file in the ``common.digits16`` package would change the code hash of every result that imports that
package (stsl's) without changing what they compute.

Implementation: forward hooks, no copy of diffusers' block code. A forward pre-hook on each up block the rule
touches rewrites its inputs (scales the backbone input, filters the skip tensor of each affected ResNet; each skip
is read by exactly one ResNet of the block) and forward hooks on the block's ResNets except the last scale
their outputs' first half of channels (the next ResNet's backbone input). :func:`freeu` is a context manager
that removes the hooks on exit. ``tests/common/test_freeu.py`` cross-checks it against diffusers' own
FreeU (``diffusers.utils.torch_utils.fourier_filter``, and ``UpBlock2D``'s ``b1, b2, s1, s2`` attributes with
``resolution_idx`` set by hand: ``UNet2DModel`` does not pass it to its up blocks, so diffusers' FreeU is inert
there unless set) on the same ``EpsUNet16``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FreeUConfig", "DREAMCATALYST_FREEU", "STAGE_RULES", "fourier_skip_filter", "scale_backbone", "freeu",
           "register_freeu"]


@dataclass(frozen=True)
class FreeUConfig:
    """FreeU's factors: backbone b1, b2 (decoder stages 1, 2), skip s1, s2, and the frequency threshold r."""

    b1: float = 1.1
    b2: float = 1.1
    s1: float = 0.9
    s2: float = 0.2
    threshold: int = 1

    def __post_init__(self):
        if min(self.b1, self.b2, self.s1, self.s2) < 0:
            raise ValueError(f"FreeU factors must be non-negative, got {self}")
        if int(self.threshold) != self.threshold or self.threshold < 1:
            raise ValueError(f"threshold must be a positive integer, got {self.threshold}")


DREAMCATALYST_FREEU = FreeUConfig(b1=1.1, b2=1.1, s1=0.9, s2=0.2, threshold=1)  # official dc HQ mode


def fourier_skip_filter(x: torch.Tensor, scale: float, threshold: int = 1) -> torch.Tensor:
    r""":math:`\mathrm{Re}\,\mathcal{F}^{-1}(\beta\odot\mathcal{F}x)` over the last two axes of x [B, C, H, W]:
    frequencies :math:`k_y, k_x \in \{-r..r-1\}` (mod H, W) scaled by ``scale``, the others kept (module docstring).

    Computed in float32 at least (float64 stays float64); answers in x's dtype.
    """
    if x.ndim != 4:
        raise ValueError(f"expected [B, C, H, W] features, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if 2 * threshold > min(h, w):
        raise ValueError(f"threshold {threshold} needs H, W >= {2 * threshold}, got {h}×{w}")
    work = x if x.dtype == torch.float64 else x.float()
    idx_y = torch.arange(-threshold, threshold) % h
    idx_x = torch.arange(-threshold, threshold) % w
    beta = torch.ones(h, w, dtype=work.dtype, device=x.device)
    beta[idx_y[:, None], idx_x[None, :]] = scale
    out = torch.fft.ifft2(torch.fft.fft2(work) * beta).real
    return out.to(x.dtype)


def scale_backbone(h: torch.Tensor, b: float) -> torch.Tensor:
    r""":math:`h_c \to b\,h_c` for the first ⌊C/2⌋ channels of h [B, C, H, W] (out of place)."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * b, h[:, half:]], dim=1)


STAGE_RULES = ("diffusers", "channels")


def _stage_rule(blocks, cfg: FreeUConfig, stages: str):
    """``factors(block_index, backbone_channels) -> (b, s) | None``: which factors a ResNet's input gets.

    ``"diffusers"``: by decoder stage, as diffusers' ``resolution_idx``: every ResNet of ``up_blocks[0]`` gets
    (b1, s1), of ``up_blocks[1]`` (b2, s2), the others none. ``"channels"``: by the channel count of the backbone
    features entering the ResNet, as the official FreeU and DreamCatalyst code (``free_lunch.py``: 1280 → b1/s1,
    640 → b2/s2 in Stable Diffusion, whose widest decoder width is 1280): the widest decoder width W gets (b1, s1),
    W/2 gets (b2, s2), any other width none, in every up block."""
    if stages == "diffusers":
        return lambda index, channels: {0: (cfg.b1, cfg.s1), 1: (cfg.b2, cfg.s2)}.get(index)
    if stages == "channels":
        widest = max(resnet.out_channels for block in blocks for resnet in block.resnets)
        table = {widest: (cfg.b1, cfg.s1), widest // 2: (cfg.b2, cfg.s2)}
        return lambda index, channels: table.get(channels)
    raise ValueError(f"stages must be one of {STAGE_RULES}, got {stages!r}")


def register_freeu(unet: nn.Module, cfg: FreeUConfig = DREAMCATALYST_FREEU, stages: str = "diffusers") -> list:
    """Register FreeU's hooks on ``unet.up_blocks`` under the stage rule ``stages`` (:func:`_stage_rule`:
    ``"diffusers"``, stages 1, 2 = ``up_blocks[0]``, ``[1]``; or ``"channels"``, the official code's rule by the
    backbone's channel count); returns the hook handles (call ``.remove()`` on each to undo). Prefer the
    :func:`freeu` context manager."""
    blocks = getattr(unet, "up_blocks", None)
    if blocks is None or len(blocks) < 2:
        raise ValueError("FreeU needs a U-Net with at least two decoder stages (unet.up_blocks)")
    for block in blocks:
        if not hasattr(block, "resnets") or len(block.resnets) == 0:
            raise ValueError(f"decoder stage {type(block).__name__} has no ResNets")
    factors = _stage_rule(blocks, cfg, stages)
    handles = []
    for index, block in enumerate(blocks):
        # the backbone entering ResNet j: the block's input for j = 0 (its width known only at run time), the
        # previous ResNet's output for j > 0
        later = [factors(index, resnet.out_channels) for resnet in list(block.resnets)[:-1]]
        if stages == "diffusers" and factors(index, None) is None:
            continue

        def pre_hook(module, args, kwargs, index=index, later=later):
            if len(args) < 2:
                raise ValueError("FreeU hook expects the up block to be called as (hidden_states, res_hidden_states_tuple, ...)")
            hidden, skips = args[0], args[1]
            first = factors(index, hidden.shape[1])
            per_resnet = [first, *later]
            if first is not None:
                hidden = scale_backbone(hidden, first[0])
            # the block pops one skip per ResNet from the end of the tuple: ResNet j reads skips[-1 - j]
            n = len(module.resnets)
            used = list(skips[-n:])
            for j, f in enumerate(per_resnet):
                if f is not None:
                    used[n - 1 - j] = fourier_skip_filter(used[n - 1 - j], f[1], cfg.threshold)
            return (hidden, tuple(skips[:-n]) + tuple(used), *args[2:]), kwargs

        handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
        for resnet, f in zip(list(block.resnets)[:-1], later, strict=True):
            if f is not None:
                handles.append(resnet.register_forward_hook(lambda module, args, out, b=f[0]: scale_backbone(out, b)))
    return handles


@contextlib.contextmanager
def freeu(unet: nn.Module, cfg: FreeUConfig = DREAMCATALYST_FREEU, stages: str = "diffusers"):
    """``with freeu(unet, cfg, stages): ...``: the U-Net's forward passes use FreeU inside the block, the plain
    network after it (hooks removed even on an exception)."""
    handles = register_freeu(unet, cfg, stages)
    try:
        yield unet
    finally:
        for handle in handles:
            handle.remove()
