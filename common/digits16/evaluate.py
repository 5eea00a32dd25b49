r"""Sample quality of a 16×16 digits model: the metrics the quality gate (``common.digits16.gate``) and the probes read.

For each sampler key (``SAMPLERS``), n conditional samples from the same initial noise
:math:`x_T \sim N(0, I_{256})` (``torch.Generator().manual_seed(seed)``), labels ``arange(n) % 10``:

* ``off_subspace_share.<s>``: fraction of samples whose off-subspace energy fraction
  (:func:`common.digits16.data.off_subspace_fractions`) exceeds ``threshold`` = 0.05;
* ``off_subspace_fraction.<s>``: the pooled energy fraction (:func:`off_subspace_fraction`);
* ``label_accuracy.<s>``: the committed 8×8 digits classifier on ``to_digits8(samples)`` against the labels;
* ``fd_to_train.<s>``: FD32 of ``to_digits8(samples)`` to the train split (``common.diffusion.metrics``);
* ``fd_floor``: ``metrics.noise_floor()['fd_heldout_vs_train']`` (the real-vs-real FD, n = 297).
"""

from __future__ import annotations

import time

import torch

from common.diffusion import N_CLASSES, ddim, ddim_timesteps, dpm_solver_pp_2m, time_grid
from common.digits16.data import DIM16, off_subspace_fraction, off_subspace_fractions, to_digits8

SAMPLERS = {
    "dpm_solver_pp_2m_25": lambda model, x_T, y: dpm_solver_pp_2m(model, x_T, time_grid(25, "logsnr"), y),
    "ddim_25": lambda model, x_T, y: ddim(model, x_T, ddim_timesteps(25, "leading"), y),
}


@torch.no_grad()
def conditional_samples(model, n: int, sampler: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples [n, 256], labels [n]) from ``SAMPLERS[sampler]``, noise seeded by ``seed``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
    x_T = torch.randn(n, DIM16, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % N_CLASSES
    return SAMPLERS[sampler](model, x_T, y), y


def sample_quality(model, n: int = 500, seed: int = 2, samplers=tuple(SAMPLERS), threshold: float = 0.05) -> tuple[dict, dict]:
    """(metrics, samples): the metrics of the module docstring per sampler, and the samples {sampler: (x, y)}."""
    from common.diffusion import metrics as dm

    feats = dm.DigitsFeatures.load()
    out, samples = {"fd_floor": float(dm.noise_floor()["fd_heldout_vs_train"])}, {}
    for s in samplers:
        start = time.perf_counter()
        x, y = conditional_samples(model, n, s, seed)
        x8 = to_digits8(x)
        samples[s] = (x, y)
        out[f"n.{s}"] = n
        out[f"off_subspace_share.{s}"] = float((off_subspace_fractions(x) > threshold).double().mean())
        out[f"off_subspace_fraction.{s}"] = off_subspace_fraction(x)
        out[f"label_accuracy.{s}"] = float((feats.predict(x8) == y).double().mean())
        out[f"fd_to_train.{s}"] = float(dm.fd_to_train(x8))
        out[f"fraction_outside_range.{s}"] = float((x.abs() > 1.05).double().mean())
        out[f"sampling_seconds.{s}"] = round(time.perf_counter() - start, 1)
    return out, samples
