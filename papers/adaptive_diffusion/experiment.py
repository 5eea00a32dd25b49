r"""The experiment: AdaptiveDiffusion against matched-NFE baselines on the digits model, per seed.

Per seed: one draw of :math:`x_T` and balanced labels (0..9 repeated, the "prompts"), the full N-step run
of the base solver from that :math:`x_T` (the reference, as the official ``compute_metrics_image.py``
compares with the original full-step images), AdaptiveDiffusion at each threshold :math:`\delta`, and,
at every sample's own NFE, uniform re-use, random skipping and the base solver with :math:`N_{\text{eff}}`
steps. All metrics are against the full-step output of the *same* :math:`x_T`.

PSNR: images in [-1, 1] (clamped, as saving an image does), data range 2, from one MSE pooled over all
pixels of the seed's samples (the official script averages torchmetrics' PSNR over batches of 16 uint8
images; a pooled MSE weighs the worst samples more). FD32 (the offline stand-in for FID): Fréchet distance of
the digits classifier's 32-D features, **between a method's outputs and the full-step outputs of the same
noises** (the official ``compute_metrics_image.py``: ``fid.compute_fid(adaptive_dir, original_dir)``), and,
as a diagnostic, to the train split.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as sps

from common.diffusion import ddim, dpm_solver_pp_2m, metrics
from common.diffusion.counting import CallCounter
from papers.adaptive_diffusion.grids import make_grid
from papers.adaptive_diffusion.skipping import (
    adaptive_sample,
    called_subgrid,
    ddim_rowwise,
    matched_baselines,
    scheduled_sample,
)

BASELINES = ("uniform", "random", "neff")


def delta_key(delta: float) -> str:
    """0.01 -> 'd0p01' (metric-name convention)."""
    return "d" + f"{delta:g}".replace(".", "p").replace("-", "m")


def noise_and_labels(seed: int, n_samples: int, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's x_T (its own generator) and balanced labels 0..9 repeated."""
    if n_samples < 10:
        raise ValueError(f"n_samples must be >= 10 (every label at least once), got {n_samples}")
    x_t = torch.randn(n_samples, dim, generator=torch.Generator().manual_seed(seed))
    return x_t, torch.arange(n_samples) % 10


def full_step(model, x_t, ts, y, solver: str) -> torch.Tensor:
    """The base solver on every step of ``ts`` (one NFE per step): the reference output."""
    if solver == "ddim":
        return ddim(model, x_t, ts, y)
    if solver == "dpmpp_2m":
        return dpm_solver_pp_2m(model, x_t, ts, y)
    raise ValueError(f"solver must be 'ddim' or 'dpmpp_2m', got {solver!r}")


def psnr_to(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB, range 2) of images clamped to [-1, 1]."""
    return metrics.psnr(x.clamp(-1, 1), ref.clamp(-1, 1), data_range=2.0)


def label_anova(nfe: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One-way ANOVA of the per-sample NFE across labels: (F, p). Constant NFE gives (nan, nan)."""
    groups = [nfe[labels == k].double().numpy() for k in torch.unique(labels).tolist()]
    if np.ptp(nfe.numpy()) == 0:
        return float("nan"), float("nan")
    res = sps.f_oneway(*groups)
    return float(res.statistic), float(res.pvalue)


def within_label_std(nfe: torch.Tensor, labels: torch.Tensor) -> float:
    """Pooled within-label standard deviation of the NFE (variation across noises for a fixed label)."""
    nfe = nfe.double()
    resid = torch.cat([nfe[labels == k] - nfe[labels == k].mean() for k in torch.unique(labels).tolist()])
    dof = len(nfe) - len(torch.unique(labels))
    return float((resid.pow(2).sum() / max(dof, 1)).sqrt())


def features(x: torch.Tensor) -> torch.Tensor:
    """The digits classifier's 32-D features of images clamped to [-1, 1] (as saved images are)."""
    return metrics.DigitsFeatures.load().features(x.clamp(-1, 1))


def fd_between(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """FD32 between two sample sets given by their features (the official metric compares the adaptive
    images with the full-step images: ``fid.compute_fid(root0, root1)``)."""
    return metrics.frechet_distance(feat_a, feat_b)


def fd_to_train_feat(feat: torch.Tensor) -> float:
    """FD32 of given features to the train split's (``metrics.fd_to_train`` without recomputing features)."""
    return metrics.frechet_distance(feat, metrics.train_features())


def run_seed(model, seed: int, n_samples: int, n_steps: int, thresholds, max_skip_steps: int = 4,
             solver: str = "ddim", order: int = 3, fd: bool = True, grid: str = "sd",
             neff_subgrid_at: float | None = None) -> dict:
    """All methods on one seed's x_T, on ``grid`` (:func:`~papers.adaptive_diffusion.grids.make_grid`).

    Keys: ``("ref", "x")``, ``("ref", "labels")``, ``("ref", "feat")``, ``("ref", "fd")`` (to train),
    ``("ref", "counted")``; per threshold ``(dk, "nfe")`` (the [B] tensor), ``(dk, "calls")`` ([B, N]), and for
    method in adaptive + :data:`BASELINES`: ``(dk, "psnr.<m>")``, ``(dk, "fd_full.<m>")`` (FD32 to the full-step
    outputs), ``(dk, "fd.<m>")`` (to train), ``(dk, "counted.<m>")`` (network calls per sample, counted by a
    :class:`~papers.adaptive_diffusion.CallCounter`), ``(dk, "x.<m>")``. With ``neff_subgrid_at`` = a threshold
    and DDIM, also ``(dk, "psnr.neff_subgrid")``: DDIM on k + 1 evenly spaced points of the N-step grid (the same
    start and end; a diagnostic variant of the N_eff baseline).
    """
    x_t, y = noise_and_labels(seed, n_samples)
    ts = make_grid(grid, model.schedule, n_steps, solver)
    rng = np.random.default_rng(seed)
    counter = CallCounter(model, y, n_samples)
    ids = torch.arange(n_samples)

    def neff_grid(k):
        return make_grid(grid, model.schedule, k, solver)

    out = {}
    with torch.no_grad():
        ref = full_step(counter, x_t, ts, ids, solver)
        out[("ref", "counted")] = counter.take()
        out[("ref", "x")], out[("ref", "labels")] = ref, y
        if fd:
            out[("ref", "feat")] = f_ref = features(ref)
            out[("ref", "fd")] = fd_to_train_feat(f_ref)
        for delta in thresholds:
            dk = delta_key(delta)
            run = adaptive_sample(counter, x_t, ts, ids, threshold=delta, max_skip_steps=max_skip_steps,
                                  solver=solver, order=order)
            run.counted = counter.take()
            base = matched_baselines(counter, x_t, ts, run.nfe, ids, solver=solver, rng=rng, grid=neff_grid)
            out[(dk, "nfe")], out[(dk, "calls")] = run.nfe, run.calls
            for name, r in [("adaptive", run)] + [(b, base[b]) for b in BASELINES]:
                out[(dk, f"psnr.{name}")] = psnr_to(r.x, ref)
                out[(dk, f"counted.{name}")] = r.counted
                out[(dk, f"x.{name}")] = r.x
                if fd:
                    f = features(r.x)
                    out[(dk, f"fd_full.{name}")] = fd_between(f, f_ref)
                    out[(dk, f"fd.{name}")] = fd_to_train_feat(f)
            if neff_subgrid_at is not None and delta == neff_subgrid_at and solver == "ddim":
                sub = [ts[torch.linspace(0, n_steps, k + 1, dtype=torch.float64).round().long()] for k in run.nfe.tolist()]
                out[(dk, "psnr.neff_subgrid")] = psnr_to(ddim_rowwise(model, x_t, sub, y), ref)
    return out


def subgrid_identity_error(model, seed: int, n_steps: int, threshold: float = 0.01, n_check: int = 8,
                           max_skip_steps: int = 4, grid: str = "sd") -> float:
    """Max |adaptive DDIM - plain DDIM on the called sub-grid| over ``n_check`` samples (float64 model
    not needed: both run the same float32 network at the same inputs up to rounding)."""
    x_t, y = noise_and_labels(seed, max(n_check, 10))
    x_t, y = x_t[:n_check], y[:n_check]
    ts = make_grid(grid, model.schedule, n_steps)
    worst = 0.0
    with torch.no_grad():
        run = adaptive_sample(model, x_t, ts, y, threshold=threshold, max_skip_steps=max_skip_steps)
        for b in range(n_check):
            sub = ddim(model, x_t[b:b + 1], called_subgrid(ts, run.calls[b]), y[b:b + 1])
            worst = max(worst, float((sub - run.x[b:b + 1]).abs().max()))
    return worst


def single_skip_cost(model, seed: int, n_samples: int, n_steps: int, positions, solver: str = "ddim",
                     grid: str = "sd") -> dict:
    """PSNR to the full-step output when only step i re-uses ε (all other steps call the network), for
    each i in ``positions``: where along the trajectory a skip is cheap or expensive."""
    x_t, y = noise_and_labels(seed, n_samples)
    ts = make_grid(grid, model.schedule, n_steps, solver)
    out = {}
    with torch.no_grad():
        ref = full_step(model, x_t, ts, y, solver)
        for i in positions:
            if not 1 <= i < n_steps:
                raise ValueError(f"position must lie in [1, {n_steps - 1}], got {i}")
            calls = torch.ones(n_steps, dtype=torch.bool)
            calls[i] = False
            out[i] = psnr_to(scheduled_sample(model, x_t, ts, calls, y, solver).x, ref)
    return out
