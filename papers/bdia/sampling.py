r"""BDIA-DDIM as a sampler against DDIM, across seeds (Zhang, Lewis, Kleijn, ECCV 2024, text-to-image FID).

Every seed draws its own initial noise; within a seed all samplers start from the *same* noise and labels,
so the per-seed differences are paired (common random numbers) and the comparison is decided on an
interval over seeds (:func:`common.stats.paired_difference`), not on one draw.
"""

from __future__ import annotations

import torch

from common.diffusion import ddim, metrics, time_grid
from papers.bdia.inversion import bdia_sample


def gamma_key(gamma: float) -> str:
    """0.5 -> 'bdia_g0p5', 1.0 -> 'bdia_g1' (the metric-name convention)."""
    return "bdia_g" + f"{gamma:g}".replace(".", "p")


def samplers_for(gammas) -> dict:
    """{name: fn(model, x_T, ts, labels)}: DDIM and BDIA-DDIM for each gamma (first BDIA step plain DDIM)."""
    out = {"ddim": lambda m, x, ts, y: ddim(m, x, ts, y)}
    for g in gammas:
        out[gamma_key(g)] = lambda m, x, ts, y, g=g: bdia_sample(m, x, ts, y, g)
    return out


def noise_and_labels(seed: int, n_samples: int, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's initial noise (its own generator) and the balanced labels 0..9 repeated."""
    x_t = torch.randn(n_samples, dim, generator=torch.Generator().manual_seed(seed))
    return x_t, torch.arange(n_samples) % 10


def quality_across_seeds(model, samplers: dict, steps, seeds, n_samples: int, keep_seed: int | None = None):
    """FD32 to the train split for every (steps, sampler) and seed; KID and the samples for ``keep_seed``.

    Returns ``(fd, kid, kept)``: ``fd[(n, name)]`` is a list over ``seeds`` (same order); ``kid[(n, name)]``
    (KID on train-standardised features) and ``kept[(n, name)]`` (the samples) are for ``keep_seed`` only
    (KID costs three times FD here)."""
    fd, kid, kept = {}, {}, {}
    with torch.no_grad():
        for seed in seeds:
            x_t, labels = noise_and_labels(seed, n_samples)
            for n in steps:
                ts = time_grid(n, "uniform_t")
                for name, fn in samplers.items():
                    xs = fn(model, x_t, ts, labels)
                    fd.setdefault((n, name), []).append(metrics.fd_to_train(xs))
                    if seed == keep_seed:
                        kid[(n, name)] = metrics.kid_to_train(xs)
                        kept[(n, name)] = xs
    return fd, kid, kept
