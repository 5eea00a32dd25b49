r"""AdaptiveDiffusion (Ye et al., NeurIPS 2024): skip noise predictions when the trajectory is locally stable.

A sampler of the probability-flow ODE spends one network call (NFE) per step on
:math:`\hat\varepsilon_i = \varepsilon_\theta(x_i, t_i, c)`. AdaptiveDiffusion keeps the solver and its grid
but, at some steps, **re-uses the last computed** :math:`\hat\varepsilon` instead of calling the network
(the paper's Eq. 5-6: :math:`x_{i-1} = f(t_i)\,x_i + g(t_i)\,\hat\varepsilon_{\text{cached}}`). Which steps are
skipped is decided on the fly, per sample ("per prompt"), from the latent trajectory alone.

**The third-order estimator** (paper Sec. 3.3, Eq. 10-12; official ``estimate_skipping`` in
``examples/AdaptiveDiffusion/acceleration/sparse_pipeline.py``). With the solver's states
:math:`z_1, z_2, \dots` (``z_k`` the output of step ``k-1``; :math:`z_0 = x_T` is never used) and the mean
absolute first difference

.. math:: d_k = \operatorname{mean}\,|z_k - z_{k-1}|,

the step after the one that produced :math:`z_{k+1}` is **skipped** iff

.. math:: \Big|\tfrac{d_{k+1} + d_{k-1}}{2} - d_k\Big| \le \delta\, d_k ,

i.e. the second difference of :math:`d` (a third-order difference of the latents) is small relative to the
first difference: the trajectory is close to linear, so the noise prediction barely changes (the paper's
bounded-difference argument, Theorem 1). Details exactly as the official code:

* the first 4 steps always call the network (``len(prev_latents) <= 3``); the first decision is made after
  step 3 (from :math:`d_2, d_3, d_4`) and concerns step 4;
* a call is forced when the last ``max_skip_steps`` (:math:`C_{max}`) decisions were all skips, but only
  once more than 4 decisions exist (``len(mask) > 4``), so the first run of skips (steps 4-8) may be
  :math:`C_{max} + 1` long; we keep this quirk;
* the mean in :math:`d_k` runs over the latent of **one** sample (the official ``generate.py`` runs with
  ``batch_size=1``), so every sample gets its own skipping path; the decision uses the state computed with
  the (possibly re-used) :math:`\hat\varepsilon`;
* defaults :math:`\delta` = ``threshold`` = 0.01, :math:`C_{max}` = ``max_skip_steps`` = 4.

**NFE accounting.** A sample's NFE is the number of steps at which its :math:`\hat\varepsilon` was computed
(a classifier-free-guided pair counts as one, as :class:`common.diffusion.Denoiser` does); the speedup is
:math:`N / \overline{\mathrm{NFE}}`, the ratio of network calls (the paper's MACs ratio; latency on a CPU
would add Python overhead we do not want to measure). Samples are run in one batch, but only the rows
that call the network at a step are passed to it, so the per-sample count is exactly what a batch-size-1
run would spend.

**Baselines at matched NFE** (each sample gets exactly its adaptive NFE k):

* uniform re-use (a DeepCache-like fixed interval): the network is called at steps
  :math:`\lfloor jN/k \rfloor`, :math:`j = 0..k-1`, and :math:`\hat\varepsilon` is re-used in between
  (:func:`uniform_schedule`);
* random skipping: the first :math:`\min(4, k)` steps called, the rest drawn at random (:func:`random_schedule`);
* DDIM with :math:`N_{\text{eff}} = k` steps on the same kind of grid.

**Why re-use inside DDIM is a coarser grid.** DDIM's step :math:`x_s = \alpha_s \hat x_0 + \sigma_s\hat\varepsilon`
with :math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t` leaves :math:`\hat x_0` unchanged when the
same :math:`\hat\varepsilon` is applied again, so skipping steps :math:`i+1..j-1` equals one DDIM step from
:math:`t_i` to :math:`t_j` (:func:`called_subgrid`). With DDIM, AdaptiveDiffusion is therefore an
*adaptive choice of a sub-grid* of the N-step grid, and uniform re-use is (almost) DDIM with k steps;
the claims test whether the trajectory-driven choice beats the fixed ones. With DPM-Solver++(2M) the
re-used :math:`\hat\varepsilon` enters the multistep history and the identity no longer holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.diffusion.samplers import check_times, ddim_step, grid_coefficients

SOLVERS = ("ddim", "dpmpp_2m")
N_WARMUP = 4  # steps 0..3 always call the network (official: ``len(self.prev_latents) <= 3``)


@dataclass
class SkipRun:
    """A sampling run with ε re-use: the final states ``x`` [B, D], the per-sample ``nfe`` [B] (int64)
    and ``calls`` [B, N] (True where the network was called at step i), both bookkeeping; ``counted`` [B]:
    the calls a :class:`CallCounter` saw for each sample (None when the model was not wrapped)."""

    x: torch.Tensor
    nfe: torch.Tensor
    calls: torch.Tensor
    counted: torch.Tensor | None = None


# --- the solvers, driven by a given (possibly cached) epsilon -----------------------------------------


class _Solver:
    """One update x_i -> x_{i+1} of DDIM or DPM-Solver++(2M) from a given ε (cached or fresh)."""

    def __init__(self, kind: str, c: dict):
        if kind not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {kind!r}")
        self.kind, self.c, self.x0_prev = kind, c, None

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s, lam = self.c["alpha"], self.c["sigma"], self.c["lambda"]
        x0 = (x - s[i] * eps) / a[i]
        if self.kind == "ddim":  # Song et al. 2021a, Eq. 12 with eta = 0
            return ddim_step(x0, eps, a[i], s[i], a[i + 1], s[i + 1])
        # DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2); first step first order; >= 15 steps keep 2nd order
        n = len(a) - 1
        last_first_order = i == n - 1 and (s[i + 1] == 0.0 or n < 15)
        if self.x0_prev is None or last_first_order:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self.x0_prev
        self.x0_prev = x0
        return (s[i + 1] / s[i]) * x + (a[i + 1] - s[i + 1] * a[i] / s[i]) * d


def _rows(y, mask):
    return None if y is None else y[mask]


# --- the third-order estimator ------------------------------------------------------------------------


class ThirdOrderEstimator:
    r"""Per-sample state of the official ``estimate_skipping`` (see the module docstring).

    ``diffs`` holds :math:`d_k` ([B] tensors), ``mask`` the decisions (True = call the network at the
    next step). :meth:`call_next` is the official return value: True forces/keeps a call, False skips.
    """

    def __init__(self, threshold: float = 0.01, max_skip_steps: int = 4, order: int = 3):
        if threshold < 0:
            raise ValueError(f"threshold (delta) must be >= 0, got {threshold}")
        if max_skip_steps < 1:
            raise ValueError(f"max_skip_steps (C_max) must be >= 1, got {max_skip_steps}")
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        self.threshold, self.max_skip_steps, self.order = float(threshold), int(max_skip_steps), order
        self.diffs: list[torch.Tensor] = []
        self.mask: list[torch.Tensor] = []

    @staticmethod
    def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d = mean |a - b| over each sample's coordinates, in float64 ([B])."""
        return (a.double() - b.double()).abs().flatten(1).mean(1)

    def stable(self, cur: torch.Tensor, prev: torch.Tensor, prev_prev: torch.Tensor) -> torch.Tensor:
        r"""The skip test. ``order=3`` (the paper): :math:`|(d_{k+1} + d_{k-1})/2 - d_k| \le \delta d_k`.
        Ablations (our reading of the paper's Sec. 4.4 comparison of difference orders):
        ``order=2``: :math:`|d_{k+1} - d_k| \le \delta d_k`; ``order=1``: :math:`d_{k+1} \le \delta d_k`."""
        if self.order == 3:
            return ((cur + prev_prev) / 2 - prev).abs() <= prev * self.threshold
        if self.order == 2:
            return (cur - prev).abs() <= prev * self.threshold
        return cur <= prev * self.threshold

    def call_next(self, latent: torch.Tensor, prev_latent: torch.Tensor) -> torch.Tensor:
        """Append d_{k+1} = mean|latent - prev_latent| and return the decision for the next step ([B] bool)."""
        prev, prev_prev = self.diffs[-1], self.diffs[-2]
        cur = self.mean_abs_diff(latent, prev_latent)
        self.diffs.append(cur)
        call = ~self.stable(cur, prev, prev_prev)
        if len(self.mask) > 4:  # official: ``len(self.mask) > 4 and not any(self.mask[-max_skip_steps:])``
            forced = ~torch.stack(self.mask[-self.max_skip_steps:]).any(0)
            call = call | forced
        self.mask.append(call)
        return call


def adaptive_sample(model, x: torch.Tensor, ts, y=None, threshold: float = 0.01, max_skip_steps: int = 4,
                    solver: str = "ddim", order: int = 3) -> SkipRun:
    r"""AdaptiveDiffusion: ``solver`` along decreasing ``ts`` with per-sample ε re-use (module docstring).

    Mirrors the official denoising loop: steps 0..3 always call the network and, from step 2 on, record
    :math:`d_k`; after every step :math:`i \ge 3` the estimator decides whether step :math:`i+1` calls the
    network (``mask[-1]``) or re-uses the cached :math:`\hat\varepsilon`.
    """
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    n_steps, batch = len(ts) - 1, x.shape[0]
    est = ThirdOrderEstimator(threshold, max_skip_steps, order)
    step = _Solver(solver, c)
    eps_cache = torch.zeros_like(x)
    calls = torch.zeros(batch, n_steps, dtype=torch.bool)
    prev_latents: list[torch.Tensor] = []
    for i in range(n_steps):
        if len(prev_latents) <= N_WARMUP - 1:
            call = torch.ones(batch, dtype=torch.bool)
            if len(prev_latents) > 1:
                est.diffs.append(est.mean_abs_diff(prev_latents[-1], prev_latents[-2]))
        else:
            call = est.mask[-1]
        if call.any():
            eps_cache[call] = model.eps(x[call], c["t"][i], _rows(y, call))
        calls[:, i] = call
        x = step.step(i, x, eps_cache)
        if len(prev_latents) >= N_WARMUP - 1:
            est.call_next(x, prev_latents[-1])
        prev_latents.append(x)
    return SkipRun(x, calls.sum(1), calls)


# --- fixed schedules at a given NFE -------------------------------------------------------------------


def uniform_schedule(n_steps: int, nfe: int) -> torch.Tensor:
    r"""Call the network at steps :math:`\lfloor jN/k \rfloor`, j = 0..k-1 (step 0 always), re-use ε between."""
    if not 1 <= nfe <= n_steps:
        raise ValueError(f"nfe must lie in [1, {n_steps}], got {nfe}")
    calls = torch.zeros(n_steps, dtype=torch.bool)
    calls[(torch.arange(nfe) * n_steps) // nfe] = True
    return calls


def random_schedule(n_steps: int, nfe: int, rng: np.random.Generator, n_warmup: int = N_WARMUP) -> torch.Tensor:
    """The first min(n_warmup, nfe) steps called (as AdaptiveDiffusion), the remaining calls at random steps."""
    if not 1 <= nfe <= n_steps:
        raise ValueError(f"nfe must lie in [1, {n_steps}], got {nfe}")
    calls = torch.zeros(n_steps, dtype=torch.bool)
    w = min(n_warmup, nfe)
    calls[:w] = True
    rest = rng.choice(np.arange(w, n_steps), size=nfe - w, replace=False)
    calls[torch.as_tensor(rest, dtype=torch.long)] = True
    return calls


def scheduled_sample(model, x: torch.Tensor, ts, calls: torch.Tensor, y=None, solver: str = "ddim") -> SkipRun:
    """``solver`` with ε re-used wherever ``calls`` [N] or [B, N] is False (``calls[..., 0]`` must be True)."""
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    n_steps, batch = len(ts) - 1, x.shape[0]
    calls = torch.as_tensor(calls, dtype=torch.bool)
    if calls.ndim == 1:
        calls = calls.expand(batch, -1)
    if calls.shape != (batch, n_steps):
        raise ValueError(f"calls must have shape [{n_steps}] or [{batch}, {n_steps}], got {tuple(calls.shape)}")
    if not calls[:, 0].all():
        raise ValueError("the first step must call the network (there is no ε to re-use)")
    step = _Solver(solver, c)
    eps_cache = torch.zeros_like(x)
    for i in range(n_steps):
        call = calls[:, i]
        if call.any():
            eps_cache[call] = model.eps(x[call], c["t"][i], _rows(y, call))
        x = step.step(i, x, eps_cache)
    return SkipRun(x, calls.sum(1), calls.clone())


def called_subgrid(ts, calls_row: torch.Tensor) -> torch.Tensor:
    """The times at which one sample called the network, plus the final time: with DDIM, ε re-use on ``ts``
    equals plain DDIM on this sub-grid (module docstring)."""
    ts = check_times(ts)
    idx = torch.nonzero(torch.as_tensor(calls_row, dtype=torch.bool)).flatten()
    return torch.cat([ts[idx], ts[-1:]])


# --- matched-NFE comparison ---------------------------------------------------------------------------


def ddim_rowwise(model, x: torch.Tensor, grids, y=None) -> torch.Tensor:
    """Plain DDIM where row b follows its own decreasing grid ``grids[b]`` (all times > 0), in one batch:
    at step j only the rows with more than j steps call the network, each at its own time (a [B'] tensor
    of times), so row b spends exactly ``len(grids[b]) - 1`` network calls, as ``ddim(model, x[b], grids[b])``."""
    grids = [check_times(g) for g in grids]
    if len(grids) != x.shape[0]:
        raise ValueError(f"need one grid per row, got {len(grids)} for {x.shape[0]} rows")
    if any(float(g[-1]) == 0.0 for g in grids):
        raise ValueError("ddim_rowwise needs grids that end at t > 0")
    steps = torch.tensor([len(g) - 1 for g in grids])
    times = torch.ones(len(grids), int(steps.max()) + 1, dtype=torch.float64)
    for b, g in enumerate(grids):
        times[b, : len(g)] = g
    sched = model.schedule
    x = x.clone()
    for j in range(int(steps.max())):
        rows = steps > j
        t, s = times[rows, j], times[rows, j + 1]
        a_t, s_t = sched.alpha(t).to(x.dtype)[:, None], sched.sigma(t).to(x.dtype)[:, None]
        a_s, s_s = sched.alpha(s).to(x.dtype)[:, None], sched.sigma(s).to(x.dtype)[:, None]
        eps = model.eps(x[rows], t, _rows(y, rows))
        x[rows] = a_s * ((x[rows] - s_t * eps) / a_t) + s_s * eps
    return x


def matched_baselines(model, x: torch.Tensor, ts, nfe: torch.Tensor, y=None, solver: str = "ddim",
                      rng: np.random.Generator | None = None, grid=None) -> dict[str, SkipRun]:
    r"""Uniform re-use, random skipping and the base solver with :math:`N_{\text{eff}}` steps, each sample
    at exactly its own NFE ``nfe[b]``. ``grid(k)`` gives the k-step grid of the :math:`N_{\text{eff}}`
    baseline (default: uniform in t with the endpoints of ``ts``, the kind of grid ``ts`` is here).

    Returns ``{"uniform", "random", "neff"}`` -> SkipRun; the N_eff run's ``calls`` marks its first k steps
    (bookkeeping only: :class:`CallCounter` counts the calls each sample really made).
    Re-use runs all samples in one batch (each row its own schedule); DDIM with N_eff steps runs row-wise
    (:func:`ddim_rowwise`), DPM-Solver++(2M) per group of equal NFE, checked against the model's counter.
    """
    from common.diffusion.samplers import dpm_solver_pp_2m, time_grid

    ts = check_times(ts)
    n_steps = len(ts) - 1
    nfe = torch.as_tensor(nfe, dtype=torch.long)
    if nfe.shape != (x.shape[0],) or nfe.min() < 1 or nfe.max() > n_steps:
        raise ValueError(f"nfe must be a [B] tensor of values in [1, {n_steps}]")
    if grid is None:
        def grid(k):
            return time_grid(k, "uniform_t", t_start=float(ts[0]), t_end=float(ts[-1]))
    rng = np.random.default_rng(0) if rng is None else rng
    ks = nfe.tolist()
    take = getattr(model, "take", None)
    if take is not None:
        take()  # count only the baselines' own calls
    out = {}
    for name, make in (("uniform", lambda k: uniform_schedule(n_steps, k)), ("random", lambda k: random_schedule(n_steps, k, rng))):
        out[name] = scheduled_sample(model, x, ts, torch.stack([make(k) for k in ks]), y, solver)
        out[name].counted = None if take is None else take()
    neff_calls = torch.arange(n_steps)[None, :] < nfe[:, None]
    if solver == "ddim":
        x_neff = ddim_rowwise(model, x, [grid(k) for k in ks], y)
    else:
        x_neff = torch.empty_like(x)
        for k in torch.unique(nfe).tolist():
            rows = nfe == k
            before = getattr(model, "nfe", None)
            x_neff[rows] = dpm_solver_pp_2m(model, x[rows], grid(k), _rows(y, rows))
            if before is not None and model.nfe - before != k:
                raise RuntimeError(f"{solver} with {k} steps spent {model.nfe - before} network calls")
    out["neff"] = SkipRun(x_neff, neff_calls.sum(1), neff_calls, None if take is None else take())
    return out


def max_consecutive_skips(calls: torch.Tensor) -> int:
    """The longest run of re-used steps (False entries) in any row of ``calls`` [B, N] or [N]."""
    calls = torch.as_tensor(calls, dtype=torch.bool)
    if calls.ndim == 1:
        calls = calls[None]
    run = torch.zeros(calls.shape[0], dtype=torch.long)
    best = 0
    for i in range(calls.shape[1]):
        run = torch.where(calls[:, i], torch.zeros_like(run), run + 1)
        best = max(best, int(run.max()))
    return best
