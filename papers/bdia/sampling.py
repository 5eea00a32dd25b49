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


def bdia_edm(model, x: torch.Tensor, ts, y=None, gamma: float = 1.0) -> torch.Tensor:
    r"""BDIA-EDM: the BDIA combination around EDM's Heun step, at Heun's NFE (our reading of the paper's Sec. 5).

    In EDM coordinates (:math:`x_e = x/\alpha`, :math:`\sigma_e`), with :math:`d_i = (x_{e,i} - D(x_{e,i};\sigma_i))/\sigma_i`,
    the forward approximation :math:`F_i` is EDM's Heun step :math:`\sigma_i \to \sigma_{i+1}` (an Euler step
    when :math:`\sigma_{i+1} = 0`) and the backward one re-uses :math:`d_i` (no extra network call),
    :math:`B_i = x_{e,i} + (\sigma_{i-1} - \sigma_i)\,d_i`; then
    :math:`x_{e,i+1} = \gamma\,(x_{e,i-1} - B_i) + F_i` (the BDIA-DDIM form with DDIM replaced). The first step
    is plain Heun; ``gamma = 0`` is EDM Heun exactly. The paper's EDM tables were not retrieved, so whether
    its backward step is Euler (as here) or a second Heun evaluation is not known: this is the variant at
    exactly Heun's network-call count. Input and output are VP states (x = alpha x_e), as :func:`heun_edm`.
    """
    from common.diffusion.samplers import check_times, edm_derivative, grid_coefficients

    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, sig_e = c["alpha"], c["sigma"], c["edm_sigma"]
    x_e, x_e_prev = x / alpha[0], None
    for i in range(len(ts) - 1):
        d, _ = edm_derivative(model, x_e, c["t"][i], alpha[i], sigma[i], sig_e[i], y)
        forward = x_e + (sig_e[i + 1] - sig_e[i]) * d
        if sig_e[i + 1] > 0.0:
            d_next, _ = edm_derivative(model, forward, c["t"][i + 1], alpha[i + 1], sigma[i + 1], sig_e[i + 1], y)
            forward = x_e + (sig_e[i + 1] - sig_e[i]) * 0.5 * (d + d_next)
        if x_e_prev is None:
            x_next = forward
        else:
            backward = x_e + (sig_e[i - 1] - sig_e[i]) * d
            x_next = gamma * (x_e_prev - backward) + forward
        x_e_prev, x_e = x_e, x_next
    return alpha[-1] * x_e


def edm_samplers_for(gammas) -> dict:
    """{name: fn(model, x_T, ts, labels)}: EDM Heun and BDIA-EDM for each gamma (same NFE)."""
    from common.diffusion import heun_edm

    out = {"heun": lambda m, x, ts, y: heun_edm(m, x, ts, y)}
    for g in gammas:
        out["bdia_edm_g" + f"{g:g}".replace(".", "p")] = lambda m, x, ts, y, g=g: bdia_edm(m, x, ts, y, g)
    return out
