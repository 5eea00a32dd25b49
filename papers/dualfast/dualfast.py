r"""DualFast (Yu, Luo, Wang, Zhao, arXiv 2506.13058): dual-error disentanglement and the DualFast sampler.

What the text available to us says (and where)
-----------------------------------------------

The arXiv HTML (v1) is stored only as its opening (abstract, start of Sec. 1); Sections 3-4 could not be
read. What we use comes from the abstract, from a secondary review of the paper (themoonlight.io) and
from a third-party reading note of the PDF (a public literature note, "dualfast_2025"); every choice that
the text leaves open is ours and is named here and in the README.

* **Dual-error disentanglement (Sec. 3).** The sampling error of a transition from :math:`P(x_s)` to
  :math:`P(x_t)` is split by comparing three transitions: (i) an exact, error-free one, obtained from the data
  through :math:`q_{t|0}(x_t\mid x_0) = \mathcal N(\alpha_t x_0, \sigma_t^2 I)`; (ii) one with the
  approximation error only: the PF-ODE with the network and extremely small steps; (iii) one with both
  errors: the network and large steps. Errors are MSEs to a pseudo ground truth.
  Here (:func:`transition_errors`) the exact transition is the PF-ODE of the *exact* score of the training set
  (:class:`~common.diffusion.twins.DeltaTwin`, whose :math:`\varepsilon^*` we can evaluate), integrated with
  fine steps, so that :math:`E_{\rm approx}` = MSE((ii), (i)), :math:`E_{\rm disc}` = MSE((iii), (ii)) and
  :math:`E_{\rm total}` = MSE((iii), (i)) are all measured exactly; :func:`eps_error_curve` measures
  :math:`E\|\varepsilon_\theta(x_t, t) - \varepsilon^*(x_t, t)\|^2/d` at :math:`x_t \sim q_t(\text{train})`.
  The paper's stated dynamics (as the secondary sources report them): the approximation error *decreases
  as the noise level (the step t) increases*; the discretization error grows with the step size.

* **DualFast update (Sec. 4).** Because the approximation error is smaller at higher noise, the noise
  prediction at the current step is pushed away from (extrapolated against) the prediction at an earlier,
  higher-noise step :math:`\tau > t`, which costs no extra network call:

  .. math:: \tilde\varepsilon(x_t, t) = (1 + c_t)\,\varepsilon_\theta(x_t, t) - c_t\,\varepsilon_\theta(x_\tau, \tau),

  and :math:`\tilde\varepsilon` replaces :math:`\varepsilon_\theta` in the base solver, whose update is
  otherwise unchanged (DDIM, DPM-Solver(++), UniPC). The coefficient :math:`c_t` "grows as the process moves
  toward lower noise".

Our reading where the text is silent (see the README, Deviations):

* :math:`\tau` = the first time of the grid, :math:`t_0` (its prediction is cached from the first step, so the
  mixing costs no NFE and uses the prediction with the smallest approximation error on the trajectory);
* :math:`c_t = c\,(1 - t/t_0)`: zero at the first step, growing linearly to about c at the end;
* the substitution is done in the model's output, so every use of :math:`\varepsilon_\theta` by the solver
  (the current data prediction :math:`\hat x_0 = (x_t - \sigma_t\tilde\varepsilon)/\alpha_t` *and* the
  multistep history of DPM-Solver++(2M) / UniPC, which store earlier mixed predictions) sees the mixed value;
  for DDIM this is exactly the rule above;
* the scalar c is chosen per solver on a *fit* noise bank disjoint from every evaluation noise
  (:func:`select_coefficient`), from a fixed grid, by the mean MSE ratio over the evaluated step counts.

All samplers follow the signature of :mod:`common.diffusion.samplers`:
``sampler(model, x, ts, y=None, ..., return_trajectory=False, callback=None)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from common.diffusion import ddim, dpm_solver_pp_2m, metrics, time_grid, unipc
from common.diffusion.noise_bank import NoiseBank
from common.diffusion.reference import reference_endpoints
from common.diffusion.samplers import check_times, grid_coefficients

BASE_SOLVERS: dict[str, Callable] = {"ddim": ddim, "dpmpp2m": dpm_solver_pp_2m, "unipc": unipc}
C_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
TAU_READINGS = ("first", "previous")
HISTORY_READINGS = ("mixed", "raw", "first_order")


# --- the DualFast noise prediction ---------------------------------------------------------------------


def mixing_coefficient(t: float, t_tau: float, c: float) -> float:
    r""":math:`c_t = c\,(1 - t/\tau)`: 0 at :math:`t = \tau`, growing toward lower noise (our reading of Sec. 4)."""
    if t_tau <= 0:
        raise ValueError(f"tau must be > 0, got {t_tau}")
    return float(c) * (1.0 - float(t) / float(t_tau))


def _scalar_time(t) -> float:
    if torch.is_tensor(t):
        flat = t.flatten()
        if not bool((flat == flat[0]).all()):
            raise ValueError("DualFast needs one time per call (all rows at the same t)")
        return float(flat[0])
    return float(t)


class DualFastModel:
    r"""A model view whose ``eps`` is :math:`\tilde\varepsilon = (1 + c_t)\varepsilon_\theta(x_t, t) - c_t\,\varepsilon_\theta(x_\tau, \tau)`.

    One instance serves exactly one sampling run: the first call must be at ``t_tau`` (the grid's first time);
    its prediction is cached as :math:`\varepsilon_\theta(x_\tau, \tau)` and returned unchanged
    (:math:`c_\tau = 0`). NFE are counted by the wrapped model (the mixing adds none). ``tau="first"`` (our
    main reading) mixes with the first step's prediction; ``tau="previous"`` (a second reading, for the
    diagnostic of the README) with the raw prediction of the previous call. The coefficient is
    :math:`c_t = c\,(1 - t/t_0)` in both.
    """

    def __init__(self, model, t_tau: float, c: float, tau: str = "first"):
        if not np.isfinite(c):
            raise ValueError(f"c must be finite, got {c}")
        if tau not in TAU_READINGS:
            raise ValueError(f"tau must be one of {TAU_READINGS}, got {tau!r}")
        self.model, self.schedule = model, model.schedule
        self.t_tau, self.c, self.tau = float(t_tau), float(c), tau
        self.eps_tau: torch.Tensor | None = None
        self.eps_prev: torch.Tensor | None = None
        self.coefficients: list[float] = []

    def eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        return self.mix(self.model.eps(x, t, y), t)

    def mix(self, e: torch.Tensor, t) -> torch.Tensor:
        r""":math:`\tilde\varepsilon` from a raw prediction ``e`` made at time ``t`` (updates the cache)."""
        t = _scalar_time(t)
        if self.eps_tau is None:
            if abs(t - self.t_tau) > 1e-12:
                raise ValueError(f"the first call must be at tau = {self.t_tau}, got t = {t}")
            self.eps_tau = self.eps_prev = e
            self.coefficients.append(0.0)
            return e
        if e.shape != self.eps_tau.shape:
            raise ValueError("a DualFastModel serves one batch: the shape changed between calls")
        c_t = mixing_coefficient(t, self.t_tau, self.c)
        self.coefficients.append(c_t)
        e_ref = self.eps_tau if self.tau == "first" else self.eps_prev
        self.eps_prev = e
        return (1.0 + c_t) * e - c_t * e_ref


def _dualfast(base: Callable, model, x, ts, y=None, c: float = 0.3, return_trajectory: bool = False,
              callback: Callable | None = None, tau: str = "first", **kwargs):
    ts = torch.as_tensor(ts, dtype=torch.float64)
    view = DualFastModel(model, float(ts[0]), c, tau=tau)
    return base(view, x, ts, y, return_trajectory=return_trajectory, callback=callback, **kwargs)


def dualfast_ddim(model, x, ts, y=None, c: float = 0.3, return_trajectory: bool = False,
                  callback: Callable | None = None, tau: str = "first"):
    """DDIM (eta = 0) with the DualFast prediction :math:`\\tilde\\varepsilon` (one NFE per step)."""
    return _dualfast(ddim, model, x, ts, y, c, return_trajectory, callback, tau=tau)


def dualfast_dpm_solver_pp_2m(model, x, ts, y=None, c: float = 0.3, lower_order_final: bool = True,
                              return_trajectory: bool = False, callback: Callable | None = None,
                              tau: str = "first"):
    """DPM-Solver++(2M) with the DualFast prediction (data prediction formed from :math:`\\tilde\\varepsilon`)."""
    return _dualfast(dpm_solver_pp_2m, model, x, ts, y, c, return_trajectory, callback, tau=tau,
                     lower_order_final=lower_order_final)


def dualfast_unipc(model, x, ts, y=None, c: float = 0.3, order: int = 2, variant: str = "bh2",
                   return_trajectory: bool = False, callback: Callable | None = None, tau: str = "first"):
    """UniPC (UniP-2 + UniC, bh2) with the DualFast prediction."""
    return _dualfast(unipc, model, x, ts, y, c, return_trajectory, callback, tau=tau, order=order, variant=variant)


def dualfast_dpm_solver_pp_2m_reading(model, x, ts, y=None, c: float = 0.3, history: str = "mixed",
                                      tau: str = "first", lower_order_final: bool = True) -> torch.Tensor:
    r"""DPM-Solver++(2M) + DualFast under the readings of "substitute into the solver" that the text allows.

    With :math:`\hat x_0` from :math:`\varepsilon_\theta` (raw) and :math:`\tilde x_0` from
    :math:`\tilde\varepsilon` (mixed), the 2M step uses :math:`D_i`:

    * ``history="mixed"`` (our main reading, = :func:`dualfast_dpm_solver_pp_2m`):
      :math:`D = (1 + \tfrac{1}{2r})\tilde x_0^{(i)} - \tfrac{1}{2r}\tilde x_0^{(i-1)}`;
    * ``"raw"``: the history keeps the raw prediction, :math:`D = (1 + \tfrac{1}{2r})\tilde x_0^{(i)} - \tfrac{1}{2r}\hat x_0^{(i-1)}`;
    * ``"first_order"`` (the reading note: "into the first-order term"):
      :math:`D = \tilde x_0^{(i)} + \tfrac{1}{2r}(\hat x_0^{(i)} - \hat x_0^{(i-1)})`.

    ``tau`` as in :class:`DualFastModel`. One NFE per step, as the base solver.
    """
    if history not in HISTORY_READINGS:
        raise ValueError(f"history must be one of {HISTORY_READINGS}, got {history!r}")
    ts = check_times(ts)
    co = grid_coefficients(model.schedule, ts)
    alpha, sigma, lam = co["alpha"], co["sigma"], co["lambda"]
    view = DualFastModel(model, float(ts[0]), c, tau=tau)
    n = len(ts) - 1
    raw_prev = mixed_prev = None
    for i in range(n):
        e_raw = model.eps(x, co["t"][i], y)
        e_mix = view.mix(e_raw, co["t"][i])
        x0_raw, x0_mix = (x - sigma[i] * e_raw) / alpha[i], (x - sigma[i] * e_mix) / alpha[i]
        last_first_order = i == n - 1 and (sigma[i + 1] == 0.0 or (lower_order_final and n < 15))
        if raw_prev is None or last_first_order:
            d = x0_mix
        else:
            k = 1.0 / (2.0 * (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i]))
            if history == "mixed":
                d = (1 + k) * x0_mix - k * mixed_prev
            elif history == "raw":
                d = (1 + k) * x0_mix - k * raw_prev
            else:
                d = x0_mix + k * (x0_raw - raw_prev)
        x = (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] - sigma[i + 1] * alpha[i] / sigma[i]) * d
        raw_prev, mixed_prev = x0_raw, x0_mix
    return x


def reading_ratios(model, x_fit, y_fit, ref_fit, n: int, grid_c=C_GRID) -> dict[str, dict[str, dict[float, float]]]:
    """MSE(DualFast) / MSE(base) on the fit noises at n steps for every reading of the rule the text allows:
    DPM-Solver++(2M) with history in {mixed, raw, first_order} x tau in {first, previous}; UniPC (whose
    corrector reuses the prediction, so only the model view can be changed) with tau in {first, previous}.
    Returns {solver: {"<history>_<tau>": {c: ratio}}}."""
    out: dict = {"dpmpp2m": {}, "unipc": {}}
    ts = grid_for(n)
    with torch.no_grad():
        b = mse(dpm_solver_pp_2m(model, x_fit, ts, y_fit), ref_fit)
        for history in HISTORY_READINGS:
            for tau in TAU_READINGS:
                out["dpmpp2m"][f"{history}_{tau}"] = {
                    float(c): mse(dualfast_dpm_solver_pp_2m_reading(model, x_fit, ts, y_fit, c, history, tau), ref_fit) / b
                    for c in grid_c}
        b = mse(unipc(model, x_fit, ts, y_fit), ref_fit)
        for tau in TAU_READINGS:
            out["unipc"][f"mixed_{tau}"] = {float(c): mse(dualfast_unipc(model, x_fit, ts, y_fit, c=c, tau=tau), ref_fit) / b
                                            for c in grid_c}
    return out


DUALFAST_SOLVERS: dict[str, Callable] = {"ddim": dualfast_ddim, "dpmpp2m": dualfast_dpm_solver_pp_2m,
                                         "unipc": dualfast_unipc}


def sanity(model, x, ts, y=None) -> dict[str, float]:
    """max |DualFast(c = 0) - base| for every solver (must be 0 up to rounding: c = 0 switches DualFast off)."""
    out = {}
    with torch.no_grad():
        for name, base in BASE_SOLVERS.items():
            a = base(model, x, ts, y)
            b = DUALFAST_SOLVERS[name](model, x, ts, y, c=0.0)
            out[name] = float((a - b).abs().max())
    return out


# --- Part A: dual-error disentanglement ----------------------------------------------------------------


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error over samples and pixels (float64)."""
    return float(((a.double() - b.double()) ** 2).mean())


def eps_error_curve(model, twin, x0: torch.Tensor, y, times, generator: torch.Generator) -> np.ndarray:
    r""":math:`E\|\varepsilon_\theta(x_t, t) - \varepsilon^*(x_t, t)\|^2 / d` at :math:`x_t = \alpha_t x_0 + \sigma_t z`
    (x0 from the training set, z ~ N(0, I) from ``generator``), for every t in ``times``."""
    out = []
    with torch.no_grad():
        for t in times:
            a, s = float(model.schedule.alpha(torch.tensor(t))), float(model.schedule.sigma(torch.tensor(t)))
            z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
            xt = a * x0.double() + s * z
            e_model = model.eps(xt.to(torch.float32), float(t), y).double()
            e_star = twin.eps(xt, float(t), y).double()
            out.append(float(((e_model - e_star) ** 2).mean()))
    return np.asarray(out)


def _fine_grid(t_from: float, t_to: float, substeps: int) -> torch.Tensor:
    """``substeps`` DDIM steps uniform in log-SNR between two times."""
    return time_grid(substeps, "logsnr", t_start=t_from, t_end=t_to)


def transition_errors(model, twin, x0: torch.Tensor, y, grid: torch.Tensor, generator: torch.Generator,
                      substeps: int = 10) -> dict[str, np.ndarray]:
    r"""E_approx, E_disc, E_total of every transition :math:`t_i \to t_{i+1}` of ``grid`` (Sec. 3's three transitions).

    Start :math:`x_{t_i} = \alpha_{t_i} x_0 + \sigma_{t_i} z` (exact marginal, x0 from the training set), then
    (i) exact: DDIM with ``substeps`` log-SNR steps on the exact score (``twin``), float64;
    (ii) approximation only: the same fine integration with the network;
    (iii) both: one DDIM step with the network.
    E_approx = MSE(ii, i), E_disc = MSE(iii, ii), E_total = MSE(iii, i).
    """
    grid = torch.as_tensor(grid, dtype=torch.float64)
    res = {"t": [], "approx": [], "disc": [], "total": []}
    with torch.no_grad():
        for i in range(len(grid) - 1):
            t, s = float(grid[i]), float(grid[i + 1])
            a, sg = float(model.schedule.alpha(torch.tensor(t))), float(model.schedule.sigma(torch.tensor(t)))
            z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
            xt = a * x0.double() + sg * z
            fine = _fine_grid(t, s, substeps)
            exact = ddim(twin, xt, fine, y)
            approx_only = ddim(model, xt.float(), fine, y).double()
            both = ddim(model, xt.float(), torch.tensor([t, s], dtype=torch.float64), y).double()
            res["t"].append(t)
            res["approx"].append(mse(approx_only, exact))
            res["disc"].append(mse(both, approx_only))
            res["total"].append(mse(both, exact))
    return {k: np.asarray(v) for k, v in res.items()}


# --- Part B: solver vs solver + DualFast at equal NFE --------------------------------------------------


def grid_for(n: int, t_end: float | None = None) -> torch.Tensor:
    """The n-step sampling grid shared by every solver and its DualFast variant (log-SNR uniform, t = 1 -> t_min)."""
    return time_grid(n, "logsnr", t_end=t_end)


def reference(model, x, y, rtol: float = 1e-5, atol: float = 1e-7) -> torch.Tensor:
    """Pseudo ground truth: the float64 adaptive (RK45, log-SNR) PF-ODE endpoint of the same model from the same
    x_T (:func:`common.diffusion.reference.reference_endpoints`, disk-cached)."""
    return reference_endpoints(model, x, 1.0, model.schedule.t_min, y=y, rtol=rtol, atol=atol)


def twin_endpoint(twin, x, y=None, steps: int = 200) -> torch.Tensor:
    r"""The endpoint of the PF-ODE of the *exact* score (``twin``, e.g. the DeltaTwin of the training set) from the
    same x_T: float64 DDIM with ``steps`` log-SNR steps (the same grid ends as :func:`grid_for`). MSE to it is the
    total error (approximation + discretization) in the sense of Sec. 3; for a DeltaTwin the endpoint is
    (close to) a training digit, a memorised target that a generalising network need not approach."""
    return ddim(twin, x.double(), time_grid(steps, "logsnr"), y)


def total_variance(x: torch.Tensor) -> float:
    """Sum over pixels of the variance over samples (the trace of the sample covariance)."""
    return float(x.double().var(0).sum())


def select_coefficient(model, x_fit, y_fit, ref_fit, steps, grid_c=C_GRID) -> dict[str, dict]:
    """For every solver, the c of ``grid_c`` with the smallest mean (over ``steps``) of MSE(DualFast) / MSE(base)
    on the fit noises. Returns {solver: {"c": c, "ratios": {c: mean ratio}, "per_n": {c: {n: ratio}}}}."""
    out = {}
    with torch.no_grad():
        for name, base in BASE_SOLVERS.items():
            base_mse = {n: mse(base(model, x_fit, grid_for(n), y_fit), ref_fit) for n in steps}
            ratios, per_n = {}, {}
            for c in grid_c:
                r = [mse(DUALFAST_SOLVERS[name](model, x_fit, grid_for(n), y_fit, c=c), ref_fit) / base_mse[n]
                     for n in steps]
                ratios[float(c)] = float(np.mean(r))
                per_n[float(c)] = dict(zip(steps, r, strict=True))
            best = min(ratios, key=ratios.get)
            out[name] = {"c": best, "ratios": ratios, "per_n": per_n}
    return out


def run_seed(model, seed: int, coefficients: dict[str, float], steps=(5, 10), n_eval: int = 128,
             with_fd: bool = True, rtol: float = 1e-5, twin=None, twin_steps: int = 200) -> dict:
    """Every solver and its DualFast variant on one seed's evaluation bank (same x_T, labels, grid and NFE).

    Keys: ``{solver}.n{n}.{base|dualfast}.{mse,fd,nfe,totvar}`` and ``{solver}.n{n}.gain`` (1 - MSE ratio); with
    ``twin`` also ``.mse_twin`` (MSE to :func:`twin_endpoint`) and ``reference.mse_twin``."""
    bank = NoiseBank(seed, dtype=torch.float32)
    x, y = bank.evaluation(n_eval)
    out = {}
    with torch.no_grad():
        ref = reference(model, x, y, rtol=rtol)
        tw = twin_endpoint(twin, x, y, twin_steps) if twin is not None else None
        out["reference.totvar"] = total_variance(ref)
        if tw is not None:
            out["reference.mse_twin"] = mse(ref, tw)
        for name, base in BASE_SOLVERS.items():
            for n in steps:
                ts = grid_for(n)
                for variant, fn in (("base", base), ("dualfast", None)):
                    model.reset_nfe()
                    if fn is None:
                        xs = DUALFAST_SOLVERS[name](model, x, ts, y, c=coefficients[name])
                    else:
                        xs = fn(model, x, ts, y)
                    key = f"{name}.n{n}.{variant}"
                    out[f"{key}.nfe"] = model.reset_nfe()
                    out[f"{key}.mse"] = mse(xs, ref)
                    out[f"{key}.totvar"] = total_variance(xs)
                    if tw is not None:
                        out[f"{key}.mse_twin"] = mse(xs, tw)
                    if with_fd:
                        out[f"{key}.fd"] = metrics.fd_to_train(xs.float())
                out[f"{name}.n{n}.gain"] = 1.0 - out[f"{name}.n{n}.dualfast.mse"] / out[f"{name}.n{n}.base.mse"]
        if with_fd:
            out["reference.fd"] = metrics.fd_to_train(ref.float())
    return out


def run_experiment(model, seeds, coefficients, progress: bool = False, **kwargs) -> dict:
    """{metric: [value per seed]} over ``seeds`` (see :func:`run_seed`)."""
    from tqdm.auto import tqdm

    out: dict = {}
    for seed in tqdm(list(seeds), disable=not progress, desc="seeds"):
        for key, value in run_seed(model, seed, coefficients, **kwargs).items():
            out.setdefault(key, []).append(value)
    return out
