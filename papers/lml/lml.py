r"""Levenberg–Marquardt–Langevin (LML) diffusion sampling (Wang et al., ICCV 2025, arXiv 2505.24222).

The idea. A few-step diffusion sampler moves the state by a first-order increment :math:`g` (DDIM: the noise
prediction :math:`\hat\varepsilon`; a multistep DPM-Solver: its whole update beyond the linear term). LML
preconditions that increment with a Levenberg–Marquardt (damped Gauss–Newton) approximation of the Hessian
of :math:`-\log p_t`: the Hessian is replaced by the rank-one outer product :math:`v v^\top` of a
score-like vector :math:`v` (low-rank approximation, no extra network call) and damped by :math:`\lambda I`,

.. math:: \tilde g = \lambda\,(\lambda I + v v^\top)^{-1} g
                   = g - \frac{\langle g, v\rangle}{\lambda + \lVert v\rVert^2}\, v
          \qquad\text{(Sherman–Morrison)},

and the step keeps its length: :math:`g' = \tilde g\,\lVert g\rVert / \lVert\tilde g\rVert`. The official
code (``zituitui/LML-diffusion-sampler``, ``lm_correct``) takes :math:`v = \kappa\,g_{\text{prev}} +
(1-\kappa)\,g` with :math:`g_{\text{prev}}` the previous step's *uncorrected* increment (``prev_noise``;
:math:`v = g` at the first step). Every norm and inner product is per sample.

**What the default does.** With the official default :math:`\kappa = 0`, :math:`v = g` and
:math:`\tilde g = g\,\lambda/(\lambda + \lVert g\rVert^2)` is parallel to :math:`g`, so the renormalisation
returns :math:`g` exactly: LML(:math:`\kappa = 0`) *is* the base solver for every :math:`\lambda`
(:func:`lm_correct` reproduces this to rounding; claim C0). As :math:`\lambda\to\infty` the correction
also vanishes; as :math:`\lambda\to 0` with :math:`\kappa > 0` it removes :math:`g`'s component along
:math:`v` (a projection), then restores the length.

Where the correction is applied (official code):

* DDIM (``scheduling_ddim_lm.py``, "5.2 LM correction"): to :math:`\hat\varepsilon` in the direction term
  only, :math:`x_s = \alpha_s\hat x_0 + \sigma_s\,\hat\varepsilon'` with :math:`\hat x_0` from the
  uncorrected :math:`\hat\varepsilon` (:func:`ddim_lml`);
* multistep DPM-Solver (``scheduling_dpmsolver_multistep_lm.py``, orders 1–3, noise prediction
  ``algorithm_type="dpmsolver"`` in the CIFAR-10 script): to the whole increment,
  :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s + g'` (:func:`dpm_solver_multistep_lml`).

The multistep noise-prediction DPM-Solver-3 that the official CIFAR-10 script uses is not in
:mod:`common.diffusion.samplers`, so :func:`dpm_solver_multistep` implements it here (cross-checked against
diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver", solver_order=3)`` in the tests).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from common.diffusion.samplers import check_times, grid_coefficients, predict_x0

# --- the LM correction -----------------------------------------------------------------------------------


def lm_correct(g: torch.Tensor, prev: torch.Tensor | None = None, lam: float = 1e-3, kappa: float = 0.0,
               compute_dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    r"""The Levenberg–Marquardt correction of an increment ``g`` [B, ...] (per sample, over all other axes).

    .. math:: v = \kappa\,g_{\text{prev}} + (1-\kappa)\,g \;(v = g \text{ without } g_{\text{prev}}),\quad
              \tilde g = g - \frac{\langle g, v\rangle}{\lambda + \lVert v\rVert^2}\,v
              = \lambda(\lambda I + v v^\top)^{-1} g,\quad
              g' = \tilde g\,\frac{\lVert g\rVert}{\lVert\tilde g\rVert}.

    Costs O(d) per sample: three inner products and three axpy-like passes, no network call
    (:func:`correction_flops`). Raises ``ValueError`` for ``lam <= 0`` or ``kappa`` outside [0, 1].

    **Rounding.** :math:`\tilde g` is a difference of two nearly equal vectors when :math:`v \approx g` and
    :math:`\lambda \ll \lVert v\rVert^2` (always at kappa = 0): the rounding error of the input dtype is
    amplified by about :math:`\lVert v\rVert^2/\lambda` before the rescaling restores the length. The
    official code computes in the model's dtype (float32), so at its default kappa = 0 it is the base solver
    *plus amplified rounding noise*, not the base solver. ``compute_dtype=torch.float64`` (default) evaluates
    the formula in float64 (the method as written); ``None`` keeps the input dtype (the official arithmetic).
    The result has g's dtype.
    """
    if not lam > 0:
        raise ValueError(f"lam (the damping lambda) must be > 0, got {lam}")
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    if prev is not None and prev.shape != g.shape:
        raise ValueError(f"prev has shape {tuple(prev.shape)}, g has {tuple(g.shape)}")
    out_dtype = g.dtype
    if compute_dtype is not None:
        g = g.to(compute_dtype)
        prev = None if prev is None else prev.to(compute_dtype)
    v = g if prev is None else kappa * prev + (1.0 - kappa) * g
    dims = tuple(range(1, g.ndim))
    g_v = (g * v).sum(dim=dims, keepdim=True)
    v_v = (v * v).sum(dim=dims, keepdim=True)
    damped = g - v * (g_v / (lam + v_v))
    scale = g.square().sum(dim=dims, keepdim=True).sqrt() / damped.square().sum(dim=dims, keepdim=True).sqrt()
    return (damped * scale).to(out_dtype)


def correction_flops(dim: int) -> int:
    r"""Floating-point operations of one :func:`lm_correct` call per sample in dimension ``dim``.

    v (2d: scale and add; counted even when kappa = 0), <g,v>, ||v||^2, ||g||^2, ||g~||^2 (2d each),
    g - c v (2d), the rescaling (d): 11 d, plus O(1) scalar work (counted as 8).
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return 11 * dim + 8


def mlp_flops(net: torch.nn.Module) -> int:
    """Multiply-add flops (2 per weight) of every ``nn.Linear`` in ``net`` for one sample (biases and
    activations not counted: a lower bound on one network evaluation)."""
    total = sum(2 * m.in_features * m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear))
    if total == 0:
        raise ValueError("the network has no nn.Linear layer to count")
    return total


# --- DDIM + LML ------------------------------------------------------------------------------------------


def ddim_lml(model, x, ts, y=None, lam: float = 1e-3, kappa: float = 0.0,
             compute_dtype: torch.dtype | None = torch.float64, return_trajectory: bool = False,
             callback: Callable | None = None):
    r"""DDIM (eta = 0) with the LM-corrected noise in the direction term (official ``DDIMLMScheduler``):

    .. math:: \hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t,\quad
              x_s = \alpha_s\hat x_0 + \sigma_s\,\mathrm{LM}(\hat\varepsilon;\ \hat\varepsilon_{\text{prev}}, \lambda, \kappa),

    with :math:`\hat\varepsilon_{\text{prev}}` the previous step's uncorrected prediction. One NFE per step.
    """
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    trajectory, prev = [x], None
    for i in range(len(ts) - 1):
        x0, eps = predict_x0(model, x, c["t"][i], c["alpha"][i], c["sigma"][i], y)
        x = c["alpha"][i + 1] * x0 + c["sigma"][i + 1] * lm_correct(eps, prev, lam, kappa, compute_dtype)
        prev = eps
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][i + 1], "x": x, "x0": x0})
    return (x, trajectory) if return_trajectory else x


# --- multistep DPM-Solver (noise prediction) and DPM-Solver + LML -----------------------------------------


def multistep_orders(n_steps: int, order: int = 3, lower_order_final: bool = True, final_zero: bool = False) -> list[int]:
    """The order of every step of diffusers' ``DPMSolverMultistepScheduler``: warm-up 1, 2, ..., then
    ``order``; with ``lower_order_final`` and fewer than 15 steps the last step is first order and the one
    before at most second order; a final step to t = 0 is first order."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    orders = [min(i + 1, order) for i in range(n_steps)]
    short = lower_order_final and n_steps < 15
    if short and n_steps >= 2:
        orders[-2] = min(orders[-2], 2)
    if short or final_zero:
        orders[-1] = 1
    return orders


def dpm_solver_increment(eps_hist: list[torch.Tensor], lam: list[float], sigma_next: float, alpha_next: float,
                         alpha_now: float, sigma_now: float, order: int) -> torch.Tensor:
    r"""The increment :math:`g = x_t - \tfrac{\alpha_t}{\alpha_s}x_s` of one multistep DPM-Solver step
    (Lu et al. 2022a, Eq. 3.7 / App. B; diffusers' "dpmsolver", ``solver_type="midpoint"``), with
    :math:`h = \lambda_t - \lambda_s`, :math:`m_0, m_1, m_2` the newest noise predictions and
    :math:`r_0 = h_0/h`, :math:`r_1 = h_1/h` the ratios of the previous log-SNR steps:

    * order 1: :math:`g = -\sigma_t(e^h - 1)\,m_0` (DDIM);
    * order 2: :math:`g = -\sigma_t(e^h - 1)\,(m_0 + \tfrac12 D_1)`, :math:`D_1 = (m_0 - m_1)/r_0`;
    * order 3: :math:`g = -\sigma_t(e^h - 1)m_0 - \sigma_t(\tfrac{e^h - 1}{h} - 1)D_1
      - \sigma_t(\tfrac{e^h - 1 - h}{h^2} - \tfrac12)D_2` with :math:`\Delta_0 = (m_0 - m_1)/r_0`,
      :math:`\Delta_1 = (m_1 - m_2)/r_1`, :math:`D_1 = \Delta_0 + \tfrac{r_0}{r_0 + r_1}(\Delta_0 - \Delta_1)`,
      :math:`D_2 = (\Delta_0 - \Delta_1)/(r_0 + r_1)`.

    ``lam`` holds the log-SNRs ``[..., lambda_{s_1}, lambda_s, lambda_t]`` (the last ``order + 1`` used).
    :math:`\sigma_t(e^h - 1) = \alpha_t\sigma_s/\alpha_s - \sigma_t` is used so that a final t = 0 is finite.
    """
    m0 = eps_hist[-1]
    lead = alpha_next * sigma_now / alpha_now - sigma_next  # sigma_t (e^h - 1)
    if order == 1:
        return -lead * m0
    h = lam[-1] - lam[-2]
    r0 = (lam[-2] - lam[-3]) / h
    delta0 = (m0 - eps_hist[-2]) / r0
    if order == 2:
        return -lead * (m0 + 0.5 * delta0)
    r1 = (lam[-3] - lam[-4]) / h
    delta1 = (eps_hist[-2] - eps_hist[-3]) / r1
    d1 = delta0 + (r0 / (r0 + r1)) * (delta0 - delta1)
    d2 = (delta0 - delta1) / (r0 + r1)
    em1 = math.expm1(h)
    return -lead * m0 - sigma_next * (em1 / h - 1.0) * d1 - sigma_next * ((em1 - h) / h**2 - 0.5) * d2


def dpm_solver_multistep(model, x, ts, y=None, order: int = 3, lower_order_final: bool = True,
                         correction: Callable | None = None, return_trajectory: bool = False,
                         callback: Callable | None = None):
    r"""Multistep DPM-Solver-k with noise prediction (Lu et al. 2022a; diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver", solver_order=k)``), one NFE per step:
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s + g` with :math:`g` from :func:`dpm_solver_increment`.

    ``correction(g, prev_g)`` (optional) replaces the increment (``prev_g``: the previous step's
    *uncorrected* increment, None at the first step); this is where LML hooks in.
    """
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, lam = c["alpha"], c["sigma"], c["lambda"]
    n = len(ts) - 1
    orders = multistep_orders(n, order, lower_order_final, final_zero=sigma[-1] == 0.0)
    trajectory, history, prev_g = [x], [], None
    for i in range(n):
        x0, eps = predict_x0(model, x, c["t"][i], alpha[i], sigma[i], y)
        history = (history + [eps])[-3:]
        k = min(orders[i], len(history))
        g = dpm_solver_increment(history, lam[max(0, i - 2): i + 2], sigma[i + 1], alpha[i + 1], alpha[i], sigma[i], k)
        step = g if correction is None else correction(g, prev_g)
        x = (alpha[i + 1] / alpha[i]) * x + step
        prev_g = g
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][i + 1], "x": x, "x0": x0})
    return (x, trajectory) if return_trajectory else x


def dpm_solver_multistep_lml(model, x, ts, y=None, lam: float = 1e-3, kappa: float = 0.0, order: int = 3,
                             lower_order_final: bool = True, compute_dtype: torch.dtype | None = torch.float64,
                             return_trajectory: bool = False,
                             callback: Callable | None = None):
    """DPM-Solver-k (multistep, noise prediction) + LML on the whole increment (official
    ``DPMSolverMultistepLMScheduler`` with ``lm=True``): :math:`x_t = (\\alpha_t/\\alpha_s)x_s + \\mathrm{LM}(g)`."""
    return dpm_solver_multistep(model, x, ts, y, order, lower_order_final,
                                correction=lambda g, prev: lm_correct(g, prev, lam, kappa, compute_dtype),
                                return_trajectory=return_trajectory, callback=callback)


# --- experiment helpers ------------------------------------------------------------------------------------

#: solver name -> (base sampler, LML sampler)
SOLVERS = {
    "ddim": ("ddim", ddim_lml),
    "dpm3": (lambda m, x, ts, y=None: dpm_solver_multistep(m, x, ts, y, order=3), dpm_solver_multistep_lml),
}


def base_sampler(name: str) -> Callable:
    from common.diffusion import samplers as S

    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    base = SOLVERS[name][0]
    return getattr(S, base) if isinstance(base, str) else base


def lml_sampler(name: str) -> Callable:
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    return SOLVERS[name][1]


def sweep_grid(lams, kappas) -> list[tuple[float, float]]:
    """All (lambda, kappa) pairs, lambda varying fastest."""
    return [(float(la), float(ka)) for ka in kappas for la in lams]


def select_best(scores: dict[tuple[float, float], float]) -> tuple[float, float]:
    """The (lambda, kappa) with the lowest score (ties: the first in insertion order). NaN scores lose."""
    if not scores:
        raise ValueError("no scores to select from")
    items = [(k, v if np.isfinite(v) else np.inf) for k, v in scores.items()]
    return min(items, key=lambda kv: kv[1])[0]


def solver_grid(nfe: int, schedule=None) -> torch.Tensor:
    """The official CIFAR-10 script's grid: diffusers' DPM-Solver "linspace" timesteps, final time t_min
    (``final_sigmas_type="sigma_min"``), nfe + 1 times; every method of a comparison uses the same grid."""
    from common.diffusion.samplers import ddim_timesteps

    return ddim_timesteps(nfe, "linspace", final="t_min", schedule=schedule, scheduler="dpm_solver")


def run_sampler(model, name: str, x, ts, y, lam: float | None = None, kappa: float | None = None,
                compute_dtype: torch.dtype | None = torch.float64) -> tuple[torch.Tensor, int]:
    """(samples, network calls) of the base solver ``name`` (lam None) or of its LML version."""
    model.reset_nfe()
    with torch.no_grad():
        if lam is None:
            out = base_sampler(name)(model, x, ts, y)
        else:
            out = lml_sampler(name)(model, x, ts, y, lam=lam, kappa=kappa, compute_dtype=compute_dtype)
    return out, model.reset_nfe()


def sweep(model, x, y, nfe: int, solver: str, lams, kappas, score: Callable, fp32_lams=(1e-3, 1e-1, 10.0)) -> dict:
    """Score (lower is better) of the base solver and of LML at every (lambda, kappa) on one noise bank.

    Returns ``{"base": s, "grid": {(lam, kappa): s}, "fp32_kappa0": {lam: s}}``: the last row is the
    official float32 arithmetic at kappa = 0 at ``fp32_lams`` (see :func:`lm_correct`), never a selection
    candidate.
    """
    ts = solver_grid(nfe, model.schedule)
    base, _ = run_sampler(model, solver, x, ts, y)
    out = {"base": score(base), "grid": {}, "fp32_kappa0": {}}
    for lam, kappa in sweep_grid(lams, kappas):
        z, _ = run_sampler(model, solver, x, ts, y, lam, kappa)
        out["grid"][(lam, kappa)] = score(z)
    for lam in fp32_lams:
        z, _ = run_sampler(model, solver, x, ts, y, float(lam), 0.0, compute_dtype=None)
        out["fp32_kappa0"][float(lam)] = score(z)
    return out


#: The official README's tuned lambda for CIFAR-10 DPM-Solver-3 + LML (kappa = 0, the scripts' default), per NFE.
OFFICIAL_LAMBDA = {5: 8e-4, 6: 8e-4, 7: 1e-3, 8: 1e-3, 9: 1e-3, 10: 8e-4, 12: 1e-3, 15: 1e-3, 20: 5e-4,
                   30: 3e-4, 50: 1e-4, 100: 5e-5}


def run_experiment(model, seeds, nfes, lams, kappas, n_val: int, n_eval: int, n_ref: int,
                   select_per_seed: bool = False, baselines=("dpmpp3m", "unipc"), progress: bool = False,
                   ref_rtol: float = 1e-6, fp32_lams=(1e-3,), official: bool = False) -> dict:
    r"""Pick (lambda*, kappa*) on a validation bank by FD to the train digits, evaluate on disjoint banks.

    * Validation: the *fit* stream of :class:`~common.diffusion.noise_bank.NoiseBank` (``n_val`` noises)
      of ``seeds[0]`` (``select_per_seed=False``: one choice for all seeds) or of every seed.
    * Evaluation: the *evaluation* stream (``n_eval`` noises) of every seed; base solver, LML at the
      selected pair, and the baselines (DPM-Solver++(3M), UniPC-bh2 order 2), all on the same grid
      (:func:`solver_grid`) and noises; FD to the train digits and, on the first ``n_ref`` noises, RMSE to
      the float64 reference ODE endpoint (:func:`common.diffusion.reference.reference_endpoints`).

    ``fp32_lams``: the lambdas of the sweep's official-float32 kappa = 0 row (:func:`sweep`).
    ``official``: also evaluate ``dpm3_official``, DPM-Solver-3 + LML as the official scripts run it (kappa = 0,
    the README's lambda for the NFE, :data:`OFFICIAL_LAMBDA`, in float32), on the same evaluation noises.
    Returns ``{"sweeps": {(seed, nfe, solver): sweep dict}, "metrics": {name: per-seed list}}``; metric
    names are ``nfe{n}.{method}.{fd|rmse|nfe}`` and ``nfe{n}.{solver}.lml_{lam|kappa}``.
    """
    from tqdm.auto import tqdm

    from common.diffusion import samplers as S
    from common.diffusion.metrics import fd_to_train, rmse
    from common.diffusion.noise_bank import NoiseBank
    from common.diffusion.reference import reference_endpoints

    extra = {"dpmpp3m": S.dpm_solver_pp_3m, "unipc": S.unipc}
    metrics: dict[str, list] = {}

    def put(name, value):
        metrics.setdefault(name, []).append(value)

    sweeps, chosen = {}, {}
    work = [(s, n, sol) for s in (seeds if select_per_seed else seeds[:1]) for n in nfes for sol in SOLVERS]
    for s, n, sol in tqdm(work, desc="sweep", disable=not progress):
        xv, yv = NoiseBank(s).fit(n_val)
        sw = sweep(model, xv, yv, n, sol, lams, kappas, score=fd_to_train, fp32_lams=fp32_lams)
        sweeps[(s, n, sol)] = sw
        chosen[(s, n, sol)] = select_best(sw["grid"])
    for s in tqdm(seeds, desc="evaluate", disable=not progress):
        bank = NoiseBank(s)
        xe, ye = bank.evaluation(n_eval)
        put("disjoint_banks", bool(bank.check_disjoint(n_val, n_eval)))
        for n in nfes:
            ts = solver_grid(n, model.schedule)
            with torch.no_grad():
                ref = reference_endpoints(model, xe[:n_ref], float(ts[0]), float(ts[-1]), y=ye[:n_ref],
                                          rtol=ref_rtol, atol=ref_rtol * 1e-2)
            outs = {}
            for sol in SOLVERS:
                lam, kappa = chosen[(s if select_per_seed else seeds[0], n, sol)]
                put(f"nfe{n}.{sol}.lml_lam", lam)
                put(f"nfe{n}.{sol}.lml_kappa", kappa)
                outs[sol] = run_sampler(model, sol, xe, ts, ye)
                outs[f"{sol}_lml"] = run_sampler(model, sol, xe, ts, ye, lam, kappa)
            if official:
                outs["dpm3_official"] = run_sampler(model, "dpm3", xe, ts, ye, OFFICIAL_LAMBDA[n], 0.0,
                                                    compute_dtype=None)
            for name in baselines:
                model.reset_nfe()
                with torch.no_grad():
                    outs[name] = (extra[name](model, xe, ts, ye), model.reset_nfe())
            for name, (z, calls) in outs.items():
                put(f"nfe{n}.{name}.fd", fd_to_train(z))
                put(f"nfe{n}.{name}.rmse", rmse(z[:n_ref].double(), ref))
                put(f"nfe{n}.{name}.nfe", calls)
    return {"sweeps": sweeps, "metrics": metrics}


def kappa0_deviation(model, x, y, nfe: int, solver: str, lam: float, compute_dtype) -> float:
    """max |LML(kappa = 0) - base| over all entries of the samples (claim C0; float64 arithmetic: rounding
    only; the official float32 arithmetic: amplified rounding, see :func:`lm_correct`)."""
    ts = solver_grid(nfe, model.schedule)
    base, _ = run_sampler(model, solver, x, ts, y)
    lml, _ = run_sampler(model, solver, x, ts, y, lam, 0.0, compute_dtype=compute_dtype)
    return float((lml.double() - base.double()).abs().max())
