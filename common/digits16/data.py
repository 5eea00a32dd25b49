r"""The repository's digits split at 16×16: the 8×8 digits of ``load_digits_split`` upsampled bilinearly.

Upsampling is a fixed linear map :math:`U \in \mathbb{R}^{256 \times 64}`: ``x16 = U x8`` with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (each 16×16 pixel is a convex
combination, weights 9/16, 3/16, 3/16, 1/16, of its nearest 8×8 pixels; border pixels clamp).

Why bilinear: the output is smooth (strokes, not 2×2 blocks, so the UNet's 3×3 convolutions see a
natural-looking image), and a convex combination keeps the 8×8 convention exactly: values in [-1, 1]
(pixel value v in 0..16 mapped to v / 8 - 1) and the empty background exactly -1. Nearest-neighbour would
keep the range too but duplicates every pixel into a 2×2 block. Either way the data span only a
64-dimensional linear subspace of :math:`\mathbb{R}^{256}` (the range of U): a 16×16 generator must
learn that constraint too, and :func:`off_subspace_fraction` measures how far its samples leave it.

Back to 8×8 (to reuse the committed 8×8 digits classifier for FD and label accuracy),
:func:`to_digits8` applies the least-squares left inverse :math:`U^+ = (U^\top U)^{-1} U^\top`:
:math:`U^+ U x8 = x8` exactly (to float rounding) for real digits, and for a sample it is the 8×8 image
whose upsampling is closest to it in the 256-pixel L2 sense.

Flattened 256-dim vectors (row-major 16×16) keep every sampler that takes ``(n, dim)`` arrays unchanged.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from common.diffusion.data import IMAGE_SIDE, DigitsSplit, load_digits_split

SIDE16 = 16
DIM16 = SIDE16 * SIDE16


Digits16Split = DigitsSplit  # the same four tensors, 256 columns instead of 64


def upsample8to16(x8: torch.Tensor) -> torch.Tensor:
    """[N, 64] 8×8 digits -> [N, 256] bilinear 16×16 digits (the map U of the module docstring)."""
    x8 = torch.as_tensor(x8)
    if x8.ndim != 2 or x8.shape[1] != IMAGE_SIDE * IMAGE_SIDE:
        raise ValueError(f"expected x of shape [N, 64], got {tuple(x8.shape)}")
    img = x8.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    up = F.interpolate(img, size=(SIDE16, SIDE16), mode="bilinear", align_corners=False)
    return up.reshape(-1, DIM16)


@functools.cache
def upsampling_matrix() -> torch.Tensor:
    """U [256, 64] (float64): column j is the upsampling of the j-th 8×8 basis image."""
    return upsample8to16(torch.eye(IMAGE_SIDE * IMAGE_SIDE, dtype=torch.float64)).T.contiguous()


@functools.cache
def _left_inverse() -> torch.Tensor:
    return torch.linalg.pinv(upsampling_matrix())  # [64, 256], (U^T U)^{-1} U^T (U has full column rank)


def to_digits8(x16: torch.Tensor) -> torch.Tensor:
    """[N, 256] -> [N, 64]: the least-squares 8×8 preimage U^+ x16 (exact inverse on upsampled digits)."""
    x16 = torch.as_tensor(x16)
    if x16.ndim != 2 or x16.shape[1] != DIM16:
        raise ValueError(f"expected x of shape [N, 256], got {tuple(x16.shape)}")
    return (x16.double() @ _left_inverse().T).to(x16.dtype if x16.is_floating_point() else torch.float64)


def off_subspace_fraction(x16: torch.Tensor) -> float:
    """||x - U U^+ x||^2 / ||x||^2 over the batch: the share of energy outside the data's 64-dim subspace."""
    x = torch.as_tensor(x16).double()
    residual = x - to_digits8(x) @ upsampling_matrix().T
    return float((residual**2).sum() / (x**2).sum())


def load_digits16_split(random_state: int = 0) -> Digits16Split:
    """``common.diffusion.load_digits_split(random_state)`` (same digits, same split), upsampled to 16×16."""
    split = load_digits_split(random_state)
    return Digits16Split(
        x_train=upsample8to16(split.x_train),
        y_train=split.y_train,
        x_heldout=upsample8to16(split.x_heldout),
        y_heldout=split.y_heldout,
    )


def to_images16(x: torch.Tensor) -> np.ndarray:
    """[N, 256] in [-1, 1] -> [N, 16, 16] in [0, 1] for plotting (values clamped)."""
    x = torch.as_tensor(x).detach().cpu().double().reshape(-1, SIDE16, SIDE16)
    return ((x.clamp(-1, 1) + 1) / 2).numpy()


def off_subspace_fractions(x16: torch.Tensor) -> torch.Tensor:
    """Per sample: ||x_i - U U^+ x_i||^2 / ||x_i||^2 [N] (float64), the share of each sample's energy outside
    the data's 64-dim subspace (0 for real digits; E = 0.75 for white noise, 192 of 256 directions)."""
    x = torch.as_tensor(x16).double()
    if x.ndim != 2 or x.shape[1] != DIM16:
        raise ValueError(f"expected x of shape [N, {DIM16}], got {tuple(x.shape)}")
    residual = x - to_digits8(x) @ upsampling_matrix().T
    return (residual**2).sum(1) / (x**2).sum(1).clamp(min=torch.finfo(torch.float64).tiny)
