r"""Seeded procedural "dead-leaves" images: occluding random discs with a natural ~1/f² spectrum.

The dead-leaves model (Matheron 1968; Lee, Mumford and Huang 2001) drops opaque discs ("leaves") one
after another; a pixel shows the first leaf that covers it. With disc radii drawn from the
scale-invariant density

.. math:: p(r) \propto r^{-3}, \qquad r_{\min} \le r \le r_{\max},

the images are (approximately) scale invariant and their power spectrum falls as
:math:`P(f) \propto f^{-2}` (the edges are sharp, as in natural images). Radii are drawn by inverting
the CDF, :math:`r = (r_{\min}^{-2} - u\,(r_{\min}^{-2} - r_{\max}^{-2}))^{-1/2}` with
:math:`u \sim U(0, 1)`; intensities are uniform in [-1, 1]. Only discs that can reach a pixel are
drawn (the Poisson process of leaves restricted to them, which is the same image): a disc of radius
:math:`r` reaches the pixel grid :math:`\{0..S-1\}^2` iff its centre lies in :math:`[-r, S-1+r]^2`, so
:func:`sample_leaves` draws :math:`r` from :math:`p(r)\,(S-1+2r)^2` (rejection from :math:`p(r)`) and the
centre uniformly in that square.

:func:`dead_leaves` paints front to back, all images of a batch at once: each new disc fills only the
pixels that no earlier disc covered, until every pixel is covered or ``max_leaves`` discs were drawn
(pixels left uncovered keep an independent uniform background value). Only the still-uncovered pixels
are tested against each new disc, so the cost falls as the images fill up.
"""

from __future__ import annotations

import numpy as np


def sample_radii(n: int, r_min: float, r_max: float, rng: np.random.Generator, exponent: float = 3.0) -> np.ndarray:
    """``n`` radii from ``p(r) ∝ r^-exponent`` on ``[r_min, r_max]`` (inverse CDF; exponent ≠ 1)."""
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got {r_min}, {r_max}")
    if exponent == 1:
        raise ValueError("exponent 1 (log-uniform) is not supported")
    a = 1.0 - exponent
    u = rng.random(n)
    return (r_min ** a + u * (r_max ** a - r_min ** a)) ** (1.0 / a)


def sample_leaves(n: int, size: int, r_min: float, r_max: float, rng: np.random.Generator,
                  exponent: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radii and centres ``(r, cx, cy)`` of ``n`` leaves that can reach a ``size``×``size`` pixel grid."""
    span = lambda r: (size - 1 + 2 * r) ** 2  # noqa: E731 - area of the centres that reach the grid
    r = np.empty(0)
    while r.size < n:
        cand = sample_radii(2 * n, r_min, r_max, rng, exponent)
        keep = rng.random(cand.size) < span(cand) / span(r_max)
        r = np.concatenate([r, cand[keep]])
    r = r[:n]
    cx = rng.uniform(-r, size - 1 + r)
    cy = rng.uniform(-r, size - 1 + r)
    return r, cx, cy


def dead_leaves(n_images: int, size: int = 32, rng: np.random.Generator | int | None = None,
                r_min: float = 1.0, r_max: float | None = None, exponent: float = 3.0,
                max_leaves: int = 5000) -> np.ndarray:
    """``(n_images, size, size)`` float32 dead-leaves images with values in [-1, 1].

    ``r_max`` defaults to ``size / 2``. ``rng`` is a ``numpy.random.Generator`` or a seed.
    """
    if n_images < 1 or size < 2:
        raise ValueError(f"need n_images >= 1 and size >= 2, got {n_images}, {size}")
    rng = np.random.default_rng(rng)
    r_max = size / 2.0 if r_max is None else float(r_max)
    n_pix = size * size
    img = np.repeat(rng.uniform(-1, 1, size=n_images), n_pix)
    free = np.arange(n_images * n_pix)  # flat indices of the pixels no leaf covers yet
    which, pix = np.divmod(free, n_pix)
    py, px = np.divmod(pix, size)
    py, px = py.astype(np.float32), px.astype(np.float32)
    for _ in range(max_leaves):
        if free.size == 0:
            break
        r, cx, cy = (v.astype(np.float32) for v in sample_leaves(n_images, size, r_min, r_max, rng, exponent))
        value = rng.uniform(-1, 1, n_images)
        inside = (px - cx[which]) ** 2 + (py - cy[which]) ** 2 <= r[which] ** 2
        img[free[inside]] = value[which[inside]]
        keep = ~inside
        free, which, px, py = free[keep], which[keep], px[keep], py[keep]
    return img.reshape(n_images, size, size).astype(np.float32)
