r"""Radial (azimuthal) spectral profiles of images, in NumPy and differentiable in torch.

**Azimuthal average** (Durall et al. 2020, Sec. 3.1, Eq. 2; official ``radialProfile.azimuthalAverage``):
for a 2-D array :math:`M(x, y)` and a centre :math:`c`, pixels are binned by their integer radius
:math:`k = \lfloor \lVert (x, y) - c \rVert \rfloor` and

.. math:: \mathrm{AI}(k) = \frac{1}{|\{(x,y): \lfloor r(x,y) \rfloor = k\}|} \sum_{\lfloor r(x,y) \rfloor = k} M(x, y).

:func:`azimuthal_average` computes every bin with ``numpy.bincount``. With ``official=True`` (the
default of :func:`spectral_profile`) it reproduces the official function exactly: the centre is the
geometric image centre ``((W-1)/2, (H-1)/2)`` (half a pixel off the DC term of ``fftshift``, which
sits at ``(W/2, H/2)``), and the first bin (``k = 0``) and the last (outermost, incomplete) bin are
dropped, because the official cumulative-sum trick only emits a bin when the radius changes after it.
A 128×128 image then has 88 bins (the official ``N = 88``), 64×64 has 43 and 32×32 has 20.

**Spectral profile** (Eq. 1–2 and the official ``train_spectrum.train_G``): per image, grey value
(ITU-R 601 weights for RGB), :math:`F = \mathrm{fftshift}(\mathrm{FFT2}(x)) + \epsilon`, the log
magnitude :math:`20 \log |F|`, its azimuthal average, then min-max normalisation to [0, 1] per image.
:func:`spectral_profile` does it in NumPy (float64, as the official code, on detached arrays);
:func:`spectral_profile_torch` does the same operations with ``torch.fft`` and a fixed bin-averaging
matrix, so that it is differentiable with respect to the images.

**High-frequency spectral error** (:func:`high_frequency_error`): the mean absolute difference of the
mean profiles of two image sets over the top ``top_fraction`` of radial bins.

**Radial power spectrum** (:func:`radial_power_spectrum`): the mean of :math:`|F|^2` (no log, no
normalisation) per integer radius around the DC term, for spectral-slope checks (natural images and
dead leaves have :math:`P(f) \propto f^{-2}`).
"""

from __future__ import annotations

import numpy as np
import torch

RGB_TO_GREY = (0.2989, 0.5870, 0.1140)
EPSILON = 1e-8


def _radius_bins(shape: tuple[int, int], center=None) -> np.ndarray:
    """Integer radius ``floor(hypot(x - cx, y - cy))`` of every pixel of an ``(H, W)`` grid."""
    h, w = shape
    if h < 2 or w < 2:
        raise ValueError(f"image must be at least 2x2, got {shape}")
    if center is None:
        center = ((w - 1) / 2.0, (h - 1) / 2.0)
    y, x = np.indices((h, w))
    return np.hypot(x - center[0], y - center[1]).astype(int)


def azimuthal_average(image, center=None, official: bool = True) -> np.ndarray:
    """Azimuthally averaged radial profile of a 2-D array (Eq. 2).

    ``center`` is ``(cx, cy)`` in pixels (default: the geometric centre ``((W-1)/2, (H-1)/2)``).
    With ``official=True`` bin 0 and the outermost bin are dropped (the official function's output);
    otherwise all bins ``0..k_max`` are returned. Empty bins are an error.
    """
    image = np.asarray(image, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    k = _radius_bins(image.shape, center).ravel()
    counts = np.bincount(k)
    if (counts == 0).any():
        raise ValueError("an integer radius between 0 and the maximum has no pixel; move the centre")
    profile = np.bincount(k, weights=image.ravel()) / counts
    return profile[1:-1] if official else profile


def to_grey(images) -> np.ndarray:
    """``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, 3, H, W)`` images → ``(N, H, W)`` grey (float64)."""
    x = np.asarray(images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images, dtype=float)
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 4 and x.shape[1] == 3:
        return np.tensordot(np.asarray(RGB_TO_GREY), x, axes=([0], [1]))
    raise ValueError(f"images must be (N, H, W) or (N, C, H, W) with C in (1, 3), got {x.shape}")


def log_magnitude_spectrum(grey: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """``20 log |fftshift(FFT2(x)) + eps|`` per image of an ``(N, H, W)`` array (Eq. 1)."""
    f = np.fft.fftshift(np.fft.fft2(grey), axes=(-2, -1)) + eps
    return 20.0 * np.log(np.abs(f))


def _min_max(profiles: np.ndarray) -> np.ndarray:
    lo = profiles.min(axis=1, keepdims=True)
    hi = profiles.max(axis=1, keepdims=True)
    return (profiles - lo) / np.maximum(hi - lo, 1e-300)


def spectral_profile(images, eps: float = EPSILON, official: bool = True, normalise: bool = True) -> np.ndarray:
    """The 1-D spectral profile of each image, ``(N, n_bins)`` (NumPy, not differentiable).

    Grey → ``20 log|fftshift(FFT2) + eps|`` → azimuthal average (official binning by default) →
    min-max to [0, 1] per image (``normalise``).
    """
    spec = log_magnitude_spectrum(to_grey(images), eps)
    prof = np.stack([azimuthal_average(s, official=official) for s in spec])
    return _min_max(prof) if normalise else prof


def bin_matrix(size: int, official: bool = True) -> torch.Tensor:
    """``(size*size, n_bins)`` float64 matrix whose product with a flattened map is its azimuthal average."""
    k = _radius_bins((size, size)).ravel()
    n = int(k.max()) + 1
    onehot = np.zeros((k.size, n))
    onehot[np.arange(k.size), k] = 1.0
    onehot /= onehot.sum(axis=0, keepdims=True)
    if official:
        onehot = onehot[:, 1:-1]
    return torch.from_numpy(onehot)


def spectral_profile_torch(images: torch.Tensor, eps: float = EPSILON, official: bool = True,
                           normalise: bool = True) -> torch.Tensor:
    """Differentiable :func:`spectral_profile` with ``torch.fft`` (square images, float32 or float64).

    ``images`` is ``(N, H, W)`` or ``(N, C, H, W)``. The gradient flows through the log magnitude,
    the bin averages and the min-max normalisation (through the argmin/argmax bins).
    """
    if images.ndim == 4:
        if images.shape[1] == 3:
            w = torch.tensor(RGB_TO_GREY, dtype=images.dtype, device=images.device)
            images = torch.einsum("c,nchw->nhw", w, images)
        elif images.shape[1] == 1:
            images = images[:, 0]
        else:
            raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square (N, H, W), got {tuple(images.shape)}")
    f = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1)) + eps
    mag = 20.0 * torch.log(torch.abs(f))
    m = bin_matrix(images.shape[-1], official).to(dtype=mag.dtype, device=mag.device)
    prof = mag.reshape(mag.shape[0], -1) @ m
    if not normalise:
        return prof
    lo = prof.min(dim=1, keepdim=True).values
    hi = prof.max(dim=1, keepdim=True).values
    return (prof - lo) / (hi - lo).clamp_min(1e-12)


def high_frequency_error(profiles_a, profiles_b, top_fraction: float = 0.25) -> float:
    """Mean over the top ``top_fraction`` of bins of ``|mean(profiles_a) - mean(profiles_b)|``."""
    a, b = np.atleast_2d(np.asarray(profiles_a, float)), np.atleast_2d(np.asarray(profiles_b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"profiles have different numbers of bins: {a.shape[1]} vs {b.shape[1]}")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    n_top = max(1, int(round(top_fraction * a.shape[1])))
    diff = np.abs(a.mean(axis=0) - b.mean(axis=0))
    return float(diff[-n_top:].mean())


def radial_power_spectrum(images) -> tuple[np.ndarray, np.ndarray]:
    """Mean power ``|FFT2(x - mean)|^2`` per integer radius around the DC term, radii ``1..size//2``.

    Returns ``(radii, power)``; power is averaged over images and over the pixels of each ring.
    """
    grey = to_grey(images)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    h, w = grey.shape[1:]
    power = (np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(-2, -1))) ** 2).mean(axis=0)
    k = _radius_bins((h, w), center=(w // 2, h // 2)).ravel()
    prof = np.bincount(k, weights=power.ravel()) / np.bincount(k)
    radii = np.arange(1, min(h, w) // 2 + 1)
    return radii, prof[radii]
