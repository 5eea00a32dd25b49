r"""Samplers for the probability-flow ODE of a VP diffusion model: DDIM, DPM-Solver++(2M/3M), singlestep DPM-Solver(++)-1/2/3, UniPC, PNDM, EDM Euler/Heun.

Samplers only call ``model.eps(x, t, y)`` and read ``model.schedule`` (the protocol of
:mod:`common.diffusion.views`), so the pretrained model, a guided :class:`~common.diffusion.views.Denoiser`
and the analytic twins all run through the same code; x0 and the EDM derivative are formed here from eps.

Conventions (in the spirit of k-diffusion's ``sampling.py``):

* ``ts`` is a 1-D float64 tensor of continuous times, **decreasing** for sampling: ``x`` lives at
  ``ts[0]`` and the sampler returns the state at ``ts[-1]``. A grid may start mid-way (teleportation,
  inversion round trips). The time ``t = 0`` is allowed as the *last* entry only and means the clean
  data (alpha = 1, sigma = 0, EDM sigma = 0): the last step then returns the model's x0 prediction,
  as diffusers does with ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"`` and EDM with its
  final sigma = 0.
* ``return_trajectory=True`` also returns the list of states at every time of ``ts``;
  ``callback(info)`` is called after every step with ``{"i", "t", "t_next", "x", "x0"}``.
* No sampler wraps itself in ``torch.no_grad()``: callers that do not differentiate through the
  sampler should (the pretrained model's parameters are frozen already).

The probability-flow ODE (Song et al. 2021, Eq. 13) of :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`
is, in the EDM coordinates :math:`x_e = x/\alpha`, :math:`\sigma_e = \sigma/\alpha = e^{-\lambda}`,
simply :math:`dx_e/d\sigma_e = \hat\varepsilon` (Karras et al. 2022, Eq. 4 with s = alpha), and in log-SNR
time :math:`dx/d\lambda = \sigma^2 x - \sigma\hat\varepsilon` (Lu et al. 2022, Eq. 3.3 rewritten with
:math:`d\log\alpha/d\lambda = \sigma^2`). DDIM is its exact first-order exponential integrator in
:math:`\lambda`; DPM-Solver++(2M) its second-order multistep version; Euler/Heun are the EDM solvers.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from common.diffusion.schedule import VPSchedule

# --- time grids ---------------------------------------------------------------------------------------


def _schedule_of(model=None, schedule: VPSchedule | None = None) -> VPSchedule:
    if schedule is not None:
        return schedule
    if model is not None and getattr(model, "schedule", None) is not None:
        return model.schedule
    return VPSchedule()


def time_grid(
    n_steps: int,
    kind: str = "logsnr",
    t_start: float = 1.0,
    t_end: float | None = None,
    rho: float = 7.0,
    schedule: VPSchedule | None = None,
    append_zero: bool = False,
) -> torch.Tensor:
    r"""A decreasing grid of ``n_steps + 1`` continuous times from ``t_start`` to ``t_end`` (default t_min).

    * ``"uniform_t"``: uniform in t (DPM-Solver's "time_uniform");
    * ``"logsnr"``: uniform in :math:`\lambda_t` (DPM-Solver's "logSNR", Lu et al. 2022, Sec. 3.3);
    * ``"edm"``: Karras et al. 2022, Eq. 5: :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{n}
      (\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho` in EDM sigma, mapped back to t.

    ``append_zero=True`` appends t = 0 (the clean data; one more step, which returns x0, as in EDM).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    schedule = _schedule_of(schedule=schedule)
    t_end = schedule.t_min if t_end is None else float(t_end)
    if not t_start > t_end > 0:
        raise ValueError(f"need t_start > t_end > 0, got {t_start}, {t_end}")
    u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    if kind == "uniform_t":
        ts = t_start + u * (t_end - t_start)
    elif kind == "logsnr":
        lam_0, lam_1 = schedule.lambda_(t_start), schedule.lambda_(t_end)
        ts = schedule.t_from_lambda(lam_0 + u * (lam_1 - lam_0))
    elif kind == "edm":
        s_max, s_min = schedule.edm_sigma(t_start) ** (1 / rho), schedule.edm_sigma(t_end) ** (1 / rho)
        ts = schedule.t_from_edm_sigma((s_max + u * (s_min - s_max)) ** rho)
    else:
        raise ValueError(f"kind must be 'uniform_t', 'logsnr' or 'edm', got {kind!r}")
    ts[0], ts[-1] = t_start, t_end  # exact endpoints despite the round trip through lambda
    if append_zero:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return ts


def diffusers_discrete_steps(
    n_steps: int, spacing: str = "leading", num_train_timesteps: int = 1000, scheduler: str = "ddim"
) -> np.ndarray:
    """The integer timesteps of diffusers' DDIM/DPM-Solver schedulers (Lin et al. 2024, Table 2 spacings).

    Only "leading" differs between the two: DDIM takes k T // n for k = n-1..0, DPM-Solver k (T // (n + 1))
    for k = n..1.
    """
    if n_steps < 1 or n_steps > num_train_timesteps:
        raise ValueError(f"n_steps must be in [1, {num_train_timesteps}], got {n_steps}")
    if scheduler not in ("ddim", "dpm_solver"):
        raise ValueError(f"scheduler must be 'ddim' or 'dpm_solver', got {scheduler!r}")
    T = num_train_timesteps
    if spacing == "leading":
        if scheduler == "ddim":
            return (np.arange(0, n_steps) * (T // n_steps)).round()[::-1].astype(np.int64)
        return (np.arange(1, n_steps + 1) * (T // (n_steps + 1))).round()[::-1].astype(np.int64)
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n_steps)).astype(np.int64) - 1
    if spacing == "linspace":  # DDIM includes step 0, DPM-Solver drops it
        if scheduler == "ddim":
            return np.linspace(0, T - 1, n_steps).round()[::-1].astype(np.int64)
        return np.linspace(0, T - 1, n_steps + 1).round()[::-1][:-1].astype(np.int64)
    raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")


def ddim_timesteps(
    n_steps: int,
    spacing: str = "leading",
    final: str = "t_min",
    schedule: VPSchedule | None = None,
    scheduler: str = "ddim",
) -> torch.Tensor:
    """diffusers' discrete timesteps as continuous times t = (n + 1) / T, plus the final time.

    ``final="t_min"`` matches diffusers' DDIM with ``set_alpha_to_one=False`` (final alpha_cumprod =
    alphas_cumprod[0]) and DPM-Solver with ``final_sigmas_type="sigma_min"``; ``final="zero"`` matches
    ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"`` (the last step returns x0).

    Note: with ``spacing="leading"`` the last discrete step is 0 (t = t_min), so ``final="t_min"`` gives a
    zero-length last step; diffusers spends that network call too (DDIM then returns x unchanged up to
    rounding). diffusers' DDIM steps from timestep k to k - T // n_steps, which is the next listed
    timestep only when n_steps divides T (always true for "leading"); DPM-Solver steps to the next listed
    timestep, like our samplers. ``scheduler="dpm_solver"`` selects DPM-Solver's "leading" ratio.
    """
    schedule = _schedule_of(schedule=schedule)
    steps = diffusers_discrete_steps(n_steps, spacing, schedule.num_train_timesteps, scheduler)
    steps = torch.from_numpy(steps.copy())
    ts = schedule.t_of_step(steps)
    if final == "t_min":
        last = schedule.t_min
    elif final == "zero":
        last = 0.0
    else:
        raise ValueError(f"final must be 't_min' or 'zero', got {final!r}")
    return torch.cat([ts, torch.tensor([last], dtype=torch.float64)])


def check_times(ts, increasing: bool = False) -> torch.Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError("ts must be a 1-D tensor of at least two times")
    steps = ts[1:] - ts[:-1]
    if (increasing and torch.any(steps < 0)) or (not increasing and torch.any(steps > 0)):
        raise ValueError(f"ts must be {'increasing' if increasing else 'decreasing'}")
    if torch.any(ts[:-1] <= 0) or ts[-1] < 0 or ts.max() > 1:
        raise ValueError("times must lie in (0, 1]; t = 0 is allowed only as the last entry")
    return ts


# --- schedule coefficients, with t = 0 meaning the clean data -----------------------------------------


def alpha_sigma(schedule: VPSchedule, t: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) as python floats; t = 0 gives (1, 0)."""
    if float(t) == 0.0:
        return 1.0, 0.0
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def edm_sigma(schedule: VPSchedule, t: float) -> float:
    return 0.0 if float(t) == 0.0 else float(schedule.edm_sigma(t))


def grid_coefficients(schedule: VPSchedule, ts: torch.Tensor) -> dict[str, list[float]]:
    """alpha, sigma, lambda and EDM sigma at every time of ``ts`` (python floats, computed once per call,
    so that the per-step overhead of a sampler is a few scalar operations). t = 0: alpha = 1, sigma = 0,
    lambda = inf, EDM sigma = 0."""
    positive = ts > 0
    safe = torch.where(positive, ts, torch.ones_like(ts))
    one, zero = torch.ones_like(ts), torch.zeros_like(ts)
    alpha = torch.where(positive, schedule.alpha(safe), one)
    sigma = torch.where(positive, schedule.sigma(safe), zero)
    lam = torch.where(positive, schedule.lambda_(safe), torch.full_like(ts, float("inf")))
    sig_e = torch.where(positive, schedule.edm_sigma(safe), zero)
    return {"t": ts.tolist(), "alpha": alpha.tolist(), "sigma": sigma.tolist(), "lambda": lam.tolist(), "edm_sigma": sig_e.tolist()}


def predict_x0(model, x: torch.Tensor, t: float, alpha: float, sigma: float, y=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from one network evaluation at time t: x0 = (x - sigma_t eps) / alpha_t."""
    eps = model.eps(x, t, y)
    return (x - sigma * eps) / alpha, eps


def _finish(x, trajectory, return_trajectory):
    return (x, trajectory) if return_trajectory else x


# --- DDIM ---------------------------------------------------------------------------------------------


def ddim_step(x0, eps, alpha_t, sigma_t, alpha_s, sigma_s, eta=0.0, generator=None):
    r"""DDIM update t -> s (Song et al. 2021a, Eq. 12):
    :math:`x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - \eta_s^2}\,\hat\varepsilon + \eta_s z` with
    :math:`\eta_s = \eta\,(\sigma_s/\sigma_t)\sqrt{1 - \alpha_t^2/\alpha_s^2}` (Eq. 16); eta = 0 is deterministic."""
    if eta == 0.0 or sigma_s == 0.0:
        return alpha_s * x0 + sigma_s * eps
    noise_std = eta * (sigma_s / sigma_t) * max(1.0 - alpha_t**2 / alpha_s**2, 0.0) ** 0.5
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return alpha_s * x0 + (sigma_s**2 - noise_std**2) ** 0.5 * eps + noise_std * z


def _ddim_loop(model, x, ts, y, eta, generator, return_trajectory, callback):
    c = grid_coefficients(model.schedule, ts)
    trajectory = [x]
    for i in range(len(ts) - 1):
        t, s = c["t"][i], c["t"][i + 1]
        x0, eps = predict_x0(model, x, t, c["alpha"][i], c["sigma"][i], y)
        x = ddim_step(x0, eps, c["alpha"][i], c["sigma"][i], c["alpha"][i + 1], c["sigma"][i + 1], eta, generator)
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": x0})
    return _finish(x, trajectory, return_trajectory)


def ddim(model, x, ts, y=None, eta: float = 0.0, generator: torch.Generator | None = None,
         return_trajectory: bool = False, callback: Callable | None = None):
    """DDIM sampling along decreasing ``ts`` (one NFE per step); eta > 0 adds DDPM-like noise."""
    return _ddim_loop(model, x, check_times(ts), y, eta, generator, return_trajectory, callback)


def ddim_invert(model, x0, ts_increasing, y=None, return_trajectory: bool = False, callback: Callable | None = None):
    """DDIM inversion (Song et al. 2021a, Sec. 4.3; Dhariwal & Nichol 2021, App. F): the same update
    along *increasing* times, with eps evaluated at the current (lower-noise) time."""
    ts = check_times(ts_increasing, increasing=True)
    if float(ts[0]) == 0.0:
        raise ValueError("inversion must start at t > 0 (use schedule.t_min for clean data)")
    return _ddim_loop(model, x0, ts, y, 0.0, None, return_trajectory, callback)


# --- DPM-Solver++(2M) ---------------------------------------------------------------------------------


def dpm_solver_pp_2m(model, x, ts, y=None, lower_order_final: bool = True,
                     return_trajectory: bool = False, callback: Callable | None = None):
    r"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), data prediction, multistep, one NFE per step.

    With :math:`h_i = \lambda_{t_{i+1}} - \lambda_{t_i}` and :math:`r_i = h_{i-1}/h_i`:
    :math:`D_i = (1 + \tfrac{1}{2r_i})\hat x_0^{(i)} - \tfrac{1}{2r_i}\hat x_0^{(i-1)}` (first step:
    :math:`D_0 = \hat x_0^{(0)}`), and
    :math:`x_{t_{i+1}} = \tfrac{\sigma_{i+1}}{\sigma_i} x_{t_i} - \alpha_{i+1}(e^{-h_i} - 1) D_i`, written as
    :math:`\tfrac{\sigma_{i+1}}{\sigma_i}x + (\alpha_{i+1} - \sigma_{i+1}\alpha_i/\sigma_i) D_i` so that a
    final t = 0 (sigma = 0) gives exactly :math:`D_i`. The last step is first order when it ends at t = 0
    or, with ``lower_order_final`` (diffusers' default), when there are fewer than 15 steps.
    """
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, lam = c["alpha"], c["sigma"], c["lambda"]
    n = len(ts) - 1
    trajectory, x0_prev = [x], None
    for i in range(n):
        x0, _ = predict_x0(model, x, c["t"][i], alpha[i], sigma[i], y)
        last_first_order = i == n - 1 and (sigma[i + 1] == 0.0 or (lower_order_final and n < 15))
        if x0_prev is None or last_first_order:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] - sigma[i + 1] * alpha[i] / sigma[i]) * d
        x0_prev = x0
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][i + 1], "x": x, "x0": x0})
    return _finish(x, trajectory, return_trajectory)


def dpm_solver_pp_3m(model, x, ts, y=None, lower_order_final: bool = True,
                     return_trajectory: bool = False, callback: Callable | None = None):
    r"""DPM-Solver++(3M) (Lu et al. 2022b, Sec. 4 and App. B), data prediction, multistep, one NFE per step.

    With :math:`h = \lambda_{i+1} - \lambda_i`, :math:`r_0 = (\lambda_i - \lambda_{i-1})/h` and
    :math:`r_1 = (\lambda_{i-1} - \lambda_{i-2})/h`, the scaled backward differences of the data predictions
    :math:`\Delta_0 = (\hat x_0^{(i)} - \hat x_0^{(i-1)})/r_0`, :math:`\Delta_1 = (\hat x_0^{(i-1)} - \hat x_0^{(i-2)})/r_1`
    give :math:`D_1 = \Delta_0 + \tfrac{r_0}{r_0 + r_1}(\Delta_0 - \Delta_1)` (:math:`\approx h\,\hat x_0'`) and
    :math:`D_2 = (\Delta_0 - \Delta_1)/(r_0 + r_1)` (:math:`\approx h^2\hat x_0''/2`). Integrating this
    Taylor expansion exactly against the exponential kernel of the ODE in :math:`\lambda` gives

    .. math:: x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i}x_i
              + \alpha_{i+1}\big(\varphi_1\hat x_0^{(i)} + \varphi_2 D_1 - \varphi_3 D_2\big),\qquad
              \varphi_1 = 1 - e^{-h},\ \varphi_2 = 1 - \varphi_1/h,\ \varphi_3 = (h - \varphi_1)/h^2 - \tfrac12.

    The first two steps use orders 1 and 2 (the history is short; order 2 is DPM-Solver++(2M) in
    diffusers' "midpoint" form, :math:`\alpha_{i+1}\varphi_1(\hat x_0^{(i)} + \Delta_0/2)`). The last step is
    first order when it ends at t = 0 or, with ``lower_order_final`` (diffusers' default), when there are
    fewer than 15 steps; the step before it is then second order, as in diffusers'
    ``DPMSolverMultistepScheduler(solver_order=3)``.
    """
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, lam = c["alpha"], c["sigma"], c["lambda"]
    n = len(ts) - 1
    trajectory, history = [x], []
    for i in range(n):
        x0, _ = predict_x0(model, x, c["t"][i], alpha[i], sigma[i], y)
        history = (history + [x0])[-3:]
        short = lower_order_final and n < 15
        order = min(len(history), 3)
        if i == n - 1 and (sigma[i + 1] == 0.0 or short):
            order = 1
        elif i == n - 2 and short:
            order = min(order, 2)
        if order == 1:
            x = (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] - sigma[i + 1] * alpha[i] / sigma[i]) * x0
        else:
            h = lam[i + 1] - lam[i]
            phi1 = -math.expm1(-h)  # 1 - e^{-h}
            r0 = (lam[i] - lam[i - 1]) / h
            delta0 = (history[-1] - history[-2]) / r0
            if order == 2:  # DPM-Solver++(2M) in diffusers' "midpoint" form
                x = (sigma[i + 1] / sigma[i]) * x + alpha[i + 1] * phi1 * (x0 + 0.5 * delta0)
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                delta1 = (history[-2] - history[-3]) / r1
                d1 = delta0 + (r0 / (r0 + r1)) * (delta0 - delta1)
                d2 = (delta0 - delta1) / (r0 + r1)
                phi2 = 1.0 - phi1 / h
                phi3 = (h - phi1) / h**2 - 0.5
                x = (sigma[i + 1] / sigma[i]) * x + alpha[i + 1] * (phi1 * x0 + phi2 * d1 - phi3 * d2)
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][i + 1], "x": x, "x0": x0})
    return _finish(x, trajectory, return_trajectory)


# --- DPM-Solver-2/3 and DPM-Solver++(2S/3S), singlestep ------------------------------------------------


def singlestep_orders(n_steps: int, order: int = 3, lower_order_final: bool = True, final_zero: bool = False) -> list[int]:
    """The order of every grid interval of a singlestep solver (diffusers' ``get_order_list``).

    A macro step of order k spans k consecutive intervals of the grid: [1, 2, 3] is one third-order step
    whose two intermediate points are grid points. With ``lower_order_final`` the last macro step is
    shortened so the grid is covered exactly (e.g. n = 6, k = 3: [1, 2, 3, 1, 2, 1]); a final step to
    t = 0 is first order.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    cycle = list(range(1, order + 1))
    if not lower_order_final:
        orders = cycle * (n_steps // order)
        if len(orders) != n_steps:
            raise ValueError(f"without lower_order_final, n_steps ({n_steps}) must be a multiple of the order ({order})")
    elif order == 3:
        tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[n_steps % 3]
        orders = cycle * (n_steps // 3 - (n_steps % 3 == 0)) + tail
    elif order == 2:
        orders = cycle * (n_steps // 2 - (n_steps % 2 == 0)) + ([1, 1] if n_steps % 2 == 0 else [1])
    else:
        orders = [1] * n_steps
    if final_zero:
        orders[-1] = 1
    return orders


def dpm_solver_singlestep(model, x, ts, y=None, order: int = 3, algorithm: str = "dpmsolver",
                          solver_type: str = "midpoint", lower_order_final: bool = True,
                          return_trajectory: bool = False, callback: Callable | None = None):
    r"""Singlestep DPM-Solver-k (Lu et al. 2022a, Algorithms 1-2; ``algorithm="dpmsolver"``, noise
    prediction) and DPM-Solver++(kS) (Lu et al. 2022b; ``"dpmsolver++"``, data prediction), one NFE per
    grid point, as diffusers' ``DPMSolverSinglestepScheduler``.

    The grid is split into macro steps by :func:`singlestep_orders`; a macro step from :math:`s` (state
    :math:`x_s`) of order k evaluates the model at :math:`s` and at its k - 1 intermediate grid points, each
    reached from :math:`x_s` by the lower-order formula, and ends with the order-k formula. With
    :math:`h = \lambda_t - \lambda_s`, the model outputs :math:`m_s, m_{u_1}, m_{u_2}` at :math:`r_1 h, r_2 h`
    and :math:`D_1^{(j)} = (m_{u_j} - m_s)/r_j`, for data prediction

    .. math:: x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \alpha_t\varphi_1 m_s + \alpha_t c\,D_1 (+ \text{a } D_2 \text{ term}),
              \quad \varphi_1 = 1 - e^{-h},

    with ``solver_type="midpoint"``: order 2 :math:`c = \varphi_1/2`, order 3 :math:`c = 1 - \varphi_1/h` on
    :math:`D_1^{(2)}` alone (the paper's DPM-Solver-3 final update); ``"heun"``: :math:`c = 1 - \varphi_1/h`
    and, at order 3, the full second-order Taylor term with
    :math:`D_1 = (r_2 D_1^{(1)} - r_1 D_1^{(2)})/(r_2 - r_1)`, :math:`D_2 = 2(D_1^{(2)} - D_1^{(1)})/(r_2 - r_1)`.
    Noise prediction swaps :math:`(\sigma, \alpha, -h)` for :math:`(\alpha, \sigma, h)` (Lu et al. 2022a, Eq. 3.7).
    """
    if algorithm not in ("dpmsolver", "dpmsolver++"):
        raise ValueError(f"algorithm must be 'dpmsolver' or 'dpmsolver++', got {algorithm!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, lam = c["alpha"], c["sigma"], c["lambda"]
    n = len(ts) - 1
    orders = singlestep_orders(n, order, lower_order_final, final_zero=sigma[-1] == 0.0)
    data = algorithm == "dpmsolver++"
    trajectory, outs, start, j = [x], [], x, 0
    for i in range(n):
        x0, eps = predict_x0(model, x, c["t"][i], alpha[i], sigma[i], y)
        k = orders[i]
        if k == 1:
            start, j, outs = x, i, []
        outs.append(x0 if data else eps)
        t1 = i + 1
        if data:  # x_t = sigma_t/sigma_s x_s + alpha_t * (...)
            lead = (sigma[t1] / sigma[j]) * start
            base = alpha[t1] - sigma[t1] * alpha[j] / sigma[j]  # alpha_t (1 - e^{-h}), finite at sigma_t = 0
        else:  # x_t = alpha_t/alpha_s x_s - sigma_t * (...)
            lead = (alpha[t1] / alpha[j]) * start
            base = -(alpha[t1] * sigma[j] / alpha[j] - sigma[t1])  # -sigma_t (e^h - 1), finite at sigma_t = 0
        x = lead + base * outs[0]
        if k > 1:
            h = lam[t1] - lam[j]
            scale = alpha[t1] if data else sigma[t1]
            e = math.expm1(-h) if data else math.expm1(h)  # e^{-h} - 1  |  e^h - 1
            phi2 = (e / (-h if data else h) - 1.0) * (-1.0 if data else 1.0)  # 1 - phi1/h  |  (e^h - 1)/h - 1
            sign = 1.0 if data else -1.0
            rs = [(lam[j + m] - lam[j]) / h for m in range(1, k)]
            d1s = [(outs[m] - outs[0]) / rs[m - 1] for m in range(1, k)]
            if k == 2:
                coef = -0.5 * e if data else 0.5 * e
                coef = coef if solver_type == "midpoint" else phi2
                x = x + sign * scale * coef * d1s[0]
            elif solver_type == "midpoint":
                x = x + sign * scale * phi2 * d1s[1]
            else:
                r1, r2 = rs
                d1 = (r2 * d1s[0] - r1 * d1s[1]) / (r2 - r1)
                d2 = 2.0 * (d1s[1] - d1s[0]) / (r2 - r1)
                if data:  # + alpha_t (phi2 D1 - ((e^{-h} - 1 + h)/h^2 - 1/2) D2)
                    x = x + scale * (phi2 * d1 - ((e + h) / h**2 - 0.5) * d2)
                else:  # - sigma_t (phi2 D1 + ((e^h - 1 - h)/h^2 - 1/2) D2)
                    x = x - scale * (phi2 * d1 + ((e - h) / h**2 - 0.5) * d2)
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][t1], "x": x, "x0": x0})
    return _finish(x, trajectory, return_trajectory)


# --- UniPC --------------------------------------------------------------------------------------------


def _unipc_system(rks: list[float], h: float, variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    r"""UniPC's linear system for data prediction (Zhao et al. 2023, Eq. 8 and Algorithm 2 / 3).

    With :math:`\tilde h = -h`, :math:`\varphi_1 = e^{\tilde h} - 1` and the recursion
    :math:`\varphi_{k+1} = \varphi_k/\tilde h - 1/(k+1)!` (starting at :math:`\varphi_1/\tilde h - 1`), the
    rows are :math:`R_{k} = r^{k-1}` for the nodes :math:`r = (r_1, \dots, r_{p-1}, 1)` and
    :math:`b_k = k!\,\varphi_{k+1}/B(h)`, with :math:`B(h) = \tilde h` ("bh1") or :math:`e^{\tilde h} - 1` ("bh2").
    Returns (R, b, B(h)) in float64.
    """
    hh = -h
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    nodes = np.asarray([*rks, 1.0], dtype=np.float64)
    phi = math.expm1(hh) / hh - 1.0
    factorial, rows, rhs = 1.0, [], []
    for k in range(1, len(nodes) + 1):
        rows.append(nodes ** (k - 1))
        rhs.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1.0 / factorial
    return np.stack(rows), np.asarray(rhs), b_h


def unipc(model, x, ts, y=None, order: int = 2, variant: str = "bh2", lower_order_final: bool = True,
          corrector: bool = True, return_trajectory: bool = False, callback: Callable | None = None):
    r"""UniPC (Zhao et al. 2023): the UniP-p multistep predictor with the UniC corrector, data prediction,
    one NFE per step (the corrector reuses the evaluation the next predictor step needs anyway).

    Step i → i+1, with :math:`h = \lambda_{i+1} - \lambda_i`, history nodes
    :math:`r_k = (\lambda_{i-k} - \lambda_i)/h` and differences :math:`D_k = (\hat x_0^{(i-k)} - \hat x_0^{(i)})/r_k`:

    * UniP-p (Algorithm 2): :math:`x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i}x_i - \alpha_{i+1}(e^{-h} - 1)\hat x_0^{(i)}
      - \alpha_{i+1}B(h)\sum_{k<p}\rho^p_k D_k`, with :math:`\rho^p` solving the first p-1 rows of
      :func:`_unipc_system` (p = 2: :math:`\rho = 1/2`);
    * UniC (Algorithm 3): once :math:`\hat x_0^{(i+1)}` is evaluated at the predicted state, the state is
      recomputed from :math:`x_i` with one more node (r = 1, :math:`D = \hat x_0^{(i+1)} - \hat x_0^{(i)}`) and
      :math:`\rho^c` solving the full system (order 1: :math:`\rho = 1/2`). The network is *not* called at the
      corrected state: the next step uses the evaluation at the predicted one.

    The order warms up (1, 2, ...); with ``lower_order_final`` (diffusers' default) the order of step i is at
    most n - i; a step to t = 0 is always first order (its :math:`h` is infinite). No correction follows
    the last step. Matches diffusers' ``UniPCMultistepScheduler(predict_x0=True, solver_type=variant)``.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, lam = c["alpha"], c["sigma"], c["lambda"]
    n = len(ts) - 1
    trajectory, x0s, x_prev, last_order = [x], [], None, 0
    for i in range(n):
        x0, _ = predict_x0(model, x, c["t"][i], alpha[i], sigma[i], y)
        if corrector and x_prev is not None:  # UniC: correct x_i from x_{i-1} with the new evaluation
            h = lam[i] - lam[i - 1]
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, last_order)]
            diffs = [(x0s[-1 - k] - x0s[-1]) / r for k, r in zip(range(1, last_order), rks, strict=True)]
            R, b, b_h = _unipc_system(rks, h, variant)
            rho = [0.5] if last_order == 1 else np.linalg.solve(R, b).tolist()
            res = sum((r * d for r, d in zip(rho[:-1], diffs, strict=True)), torch.zeros_like(x)) + rho[-1] * (x0 - x0s[-1])
            x = (sigma[i] / sigma[i - 1]) * x_prev + alpha[i] * (-math.expm1(-h)) * x0s[-1] - alpha[i] * b_h * res
        x0s = (x0s + [x0])[-order:]
        p = min(order, len(x0s), n - i if lower_order_final else order)
        if sigma[i + 1] == 0.0:
            p = 1
        x_prev = x
        if p == 1:
            x = (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] - sigma[i + 1] * alpha[i] / sigma[i]) * x0
        else:
            h = lam[i + 1] - lam[i]
            rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)]
            diffs = [(x0s[-1 - k] - x0) / r for k, r in zip(range(1, p), rks, strict=True)]
            R, b, b_h = _unipc_system(rks, h, variant)
            rho = [0.5] if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            res = sum((r * d for r, d in zip(rho, diffs, strict=True)), torch.zeros_like(x))
            x = (sigma[i + 1] / sigma[i]) * x + alpha[i + 1] * (-math.expm1(-h)) * x0 - alpha[i + 1] * b_h * res
        last_order = p
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][i + 1], "x": x, "x0": x0})
    return _finish(x, trajectory, return_trajectory)


# --- PNDM (PRK warm-up + PLMS) ------------------------------------------------------------------------


def pndm_timesteps(
    n_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
    final: str = "t_min",
    schedule: VPSchedule | None = None,
) -> torch.Tensor:
    """The grid diffusers' ``PNDMScheduler`` steps through, as continuous times t = (k + 1) / T, plus the final time.

    diffusers lists k = j (T // n) + ``steps_offset`` for j = n-1..0 ("leading"; Stable Diffusion uses
    ``steps_offset=1``) or the "trailing" steps, and always steps from k to k - T // n; the last step
    (k - T // n < 0) goes to ``alphas_cumprod[0]`` (``final="t_min"``, ``set_alpha_to_one=False``) or to the
    clean data (``final="zero"``, ``set_alpha_to_one=True``; the last step then returns x0). "linspace", and
    "trailing" when n does not divide T, list steps that k - T // n does not reach (diffusers then evaluates
    the model off its own grid), so they are refused here.
    """
    schedule = _schedule_of(schedule=schedule)
    T = schedule.num_train_timesteps
    if spacing == "leading":
        steps = diffusers_discrete_steps(n_steps, "leading", T, "ddim") + int(steps_offset)
    elif spacing == "trailing":
        if T % n_steps or steps_offset:
            raise ValueError("'trailing' PNDM steps are consistent only when n_steps divides T (and steps_offset = 0)")
        steps = diffusers_discrete_steps(n_steps, "trailing", T, "ddim")
    else:
        raise ValueError(f"spacing must be 'leading' or 'trailing', got {spacing!r}")
    if steps.max() >= T:
        raise ValueError(f"steps_offset {steps_offset} pushes the first step past T - 1")
    ts = schedule.t_of_step(torch.from_numpy(steps.copy()))
    if final == "t_min":
        last = schedule.t_min
    elif final == "zero":
        last = 0.0
    else:
        raise ValueError(f"final must be 't_min' or 'zero', got {final!r}")
    return torch.cat([ts, torch.tensor([last], dtype=torch.float64)])


# Adams–Bashforth weights on (eps_i, eps_{i-1}, ...) for 1 to 4 past evaluations (PNDM, Eq. 12).
_PLMS_WEIGHTS = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _pndm_transfer(x, eps, alpha_t, sigma_t, alpha_s, sigma_s):
    r"""PNDM's transfer part :math:`\phi(x_t, \varepsilon, t, s)` (Liu et al. 2022, Eq. 9): the DDIM step
    :math:`x_s = \tfrac{\alpha_s}{\alpha_t}x_t + (\sigma_s - \alpha_s\sigma_t/\alpha_t)\varepsilon`, exact for a
    constant :math:`\varepsilon` (diffusers writes the same coefficient as
    :math:`-(\bar\alpha_s - \bar\alpha_t)/(\bar\alpha_t\sqrt{1 - \bar\alpha_s} + \sqrt{\bar\alpha_t(1 - \bar\alpha_t)\bar\alpha_s})`)."""
    return (alpha_s / alpha_t) * x + (sigma_s - alpha_s * sigma_t / alpha_t) * eps


def pndm(model, x, ts, y=None, skip_prk_steps: bool = False, return_trajectory: bool = False,
         callback: Callable | None = None):
    r"""PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"), as diffusers'
    ``PNDMScheduler`` (epsilon prediction): a linear multistep method on :math:`\hat\varepsilon` whose
    "gradient" part is combined by the transfer :math:`\phi` (:func:`_pndm_transfer`, the DDIM step).

    * PLMS (Eq. 12), one NFE per step: :math:`e'_i = \tfrac1{24}(55e_i - 59e_{i-1} + 37e_{i-2} - 9e_{i-3})`,
      :math:`x_{i+1} = \phi(x_i, e'_i, t_i, t_{i+1})`, with :math:`e_j = \hat\varepsilon(x_j, t_j)` at the grid points.
      Its weights are Adams–Bashforth's for equal steps whatever the grid: PLMS is AB4 in EDM sigma
      (:math:`\phi` integrates :math:`dx_e/d\sigma_e = \hat\varepsilon` exactly for constant eps) on a grid
      uniform in :math:`\sigma_e`, and second order on other smooth grids (the weights ignore the step ratios).
    * ``skip_prk_steps=False`` (F-PNDM, Algorithm 2): the first three intervals are pseudo Runge–Kutta steps
      (Eq. 13), four NFE each, with the midpoint :math:`t_m = (t_i + t_{i+1})/2`:
      :math:`e_1 = \hat\varepsilon(x_i, t_i)`, :math:`e_2 = \hat\varepsilon(\phi(x_i, e_1, t_i, t_m), t_m)`,
      :math:`e_3 = \hat\varepsilon(\phi(x_i, e_2, t_i, t_m), t_m)`, :math:`e_4 = \hat\varepsilon(\phi(x_i, e_3, t_i, t_{i+1}), t_{i+1})`,
      :math:`x_{i+1} = \phi(x_i, \tfrac16(e_1 + 2e_2 + 2e_3 + e_4), t_i, t_{i+1})`; only :math:`e_1` enters the
      PLMS history, so every later step is PLMS-4. NFE = n + 9 for n intervals (n >= 4).
    * ``skip_prk_steps=True`` (Stable Diffusion's setting, diffusers' warm-up): the first interval is a pseudo
      improved Euler step, :math:`x_{1} = \phi(x_0, \tfrac12(e_0 + \hat\varepsilon(\phi(x_0, e_0, t_0, t_1), t_1)), t_0, t_1)`
      (the evaluation at the Euler point does not enter the history), then PLMS with 2, 3 and 4 past
      evaluations (AB2, AB3, AB4). NFE = n + 1.

    diffusers' grid is :func:`pndm_timesteps`; its midpoint is the integer step k - (T // n) // 2, which is
    :math:`t_m` whenever T // n is even (with an odd T // n diffusers moves the state to k - (T//n)//2 but
    evaluates the model one step lower, which this sampler does not reproduce). The callback's ``x0`` is the
    data prediction from :math:`e_i` at :math:`(x_i, t_i)`.
    """
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, tt = c["alpha"], c["sigma"], c["t"]
    n = len(ts) - 1
    n_prk = 0 if skip_prk_steps else 3
    if n_prk and n < 4:
        raise ValueError(f"PNDM with pseudo Runge-Kutta warm-up needs at least 4 steps, got {n}")
    trajectory, history = [x], []
    for i in range(n):
        a0, s0, a1, s1 = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        eps = model.eps(x, tt[i], y)
        x0 = (x - s0 * eps) / a0
        history = (history + [eps])[-4:]
        if i < n_prk:  # pseudo Runge-Kutta (PNDM, Eq. 13)
            tm = 0.5 * (tt[i] + tt[i + 1])
            am, sm = alpha_sigma(model.schedule, tm)
            e2 = model.eps(_pndm_transfer(x, eps, a0, s0, am, sm), tm, y)
            e3 = model.eps(_pndm_transfer(x, e2, a0, s0, am, sm), tm, y)
            e4 = model.eps(_pndm_transfer(x, e3, a0, s0, a1, s1), tt[i + 1], y)
            e_comb = (eps + 2.0 * e2 + 2.0 * e3 + e4) / 6.0
        elif skip_prk_steps and i == 0:  # pseudo improved Euler (diffusers' warm-up)
            e2 = model.eps(_pndm_transfer(x, eps, a0, s0, a1, s1), tt[i + 1], y)
            e_comb = 0.5 * (eps + e2)
        else:  # pseudo linear multistep (PNDM, Eq. 12)
            weights = _PLMS_WEIGHTS[len(history)]
            e_comb = sum(w * e for w, e in zip(weights, reversed(history), strict=True))
        x = _pndm_transfer(x, e_comb, a0, s0, a1, s1)
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "t": tt[i], "t_next": tt[i + 1], "x": x, "x0": x0})
    return _finish(x, trajectory, return_trajectory)


# --- EDM Euler and Heun -------------------------------------------------------------------------------


def edm_derivative(model, x_e, t: float, alpha: float, sigma: float, sigma_e: float, y=None):
    """(dx_e/dsigma_e, x0) = ((x_e - D(x_e; sigma_e)) / sigma_e, D), D = x0 at (alpha x_e, t)."""
    x0, _ = predict_x0(model, alpha * x_e, t, alpha, sigma, y)
    return (x_e - x0) / sigma_e, x0


def _edm_solve(model, x, ts, y, heun: bool, return_trajectory, callback):
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    alpha, sigma, sig_e = c["alpha"], c["sigma"], c["edm_sigma"]
    x_e = x / alpha[0]
    trajectory = [x]
    for i in range(len(ts) - 1):
        d, x0 = edm_derivative(model, x_e, c["t"][i], alpha[i], sigma[i], sig_e[i], y)
        x_next = x_e + (sig_e[i + 1] - sig_e[i]) * d
        if heun and sig_e[i + 1] > 0.0:  # Karras et al. 2022, Algorithm 1, lines 9-11
            d_next, _ = edm_derivative(model, x_next, c["t"][i + 1], alpha[i + 1], sigma[i + 1], sig_e[i + 1], y)
            x_next = x_e + (sig_e[i + 1] - sig_e[i]) * 0.5 * (d + d_next)
        x_e = x_next
        if return_trajectory or callback is not None:
            trajectory.append(alpha[i + 1] * x_e)
        if callback is not None:
            callback({"i": i, "t": c["t"][i], "t_next": c["t"][i + 1], "x": trajectory[-1], "x0": x0})
    return _finish(alpha[-1] * x_e, trajectory, return_trajectory)


def euler_edm(model, x, ts, y=None, return_trajectory: bool = False, callback: Callable | None = None):
    r"""Euler on :math:`dx_e/d\sigma_e = (x_e - D(x_e;\sigma_e))/\sigma_e` (Karras et al. 2022, Eq. 4, s = alpha);
    one NFE per step. Input and output are VP states x = alpha x_e."""
    return _edm_solve(model, x, ts, y, False, return_trajectory, callback)


def heun_edm(model, x, ts, y=None, return_trajectory: bool = False, callback: Callable | None = None):
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1, deterministic): two NFE per step, except a
    final step to t = 0 (sigma_e = 0), which is an Euler step; so 2N - 1 NFE with ``append_zero``."""
    return _edm_solve(model, x, ts, y, True, return_trajectory, callback)


# --- float64 reference solution -----------------------------------------------------------------------


def pf_ode_lambda_rhs(model, x: torch.Tensor, lam: float, y=None) -> torch.Tensor:
    r"""dx/dlambda = sigma^2 x - sigma eps(x, t(lambda)), with alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda)."""
    t = float(model.schedule.t_from_lambda(lam))
    sigma = float(torch.sigmoid(torch.tensor(-2.0 * lam, dtype=torch.float64))) ** 0.5
    return sigma**2 * x - sigma * model.eps(x, t, y)


def reference_ode(model, x, t_start: float, t_end: float, rtol: float = 1e-7, atol: float = 1e-9,
                  method: str = "RK45", y=None, variable: str = "lambda"):
    r"""Float64 ``scipy.integrate.solve_ivp`` solution of the probability-flow ODE from t_start to t_end.

    ``variable="lambda"`` integrates :math:`dx/d\lambda = \sigma^2 x - \sigma\hat\varepsilon` in the VP state;
    ``variable="edm"`` integrates :math:`dx_e/d\sigma_e = \hat\varepsilon` in EDM coordinates. The whole
    batch is one ODE system (shared adaptive steps). For a true float64 reference the model should be
    float64 too (``load_digits_eps(dtype=torch.float64)``): a float32 network's rounding noise (~1e-7)
    otherwise limits the attainable accuracy. Returns a float64 tensor of x's shape. (Argument order as
    agreed in the interface: rtol, atol, method follow the times; the labels come by keyword ``y=``.)
    """
    from scipy.integrate import solve_ivp

    sched = model.schedule
    if y is not None and not (isinstance(y, torch.Tensor) and not y.is_floating_point()):
        raise ValueError("y must be a LongTensor of labels or None (pass it by keyword: y=...)")
    if not (0 < t_end <= 1 and 0 < t_start <= 1):
        raise ValueError("t_start and t_end must lie in (0, 1]")
    shape = x.shape
    x64 = x.detach().to(torch.float64)

    if variable == "lambda":
        span = (float(sched.lambda_(t_start)), float(sched.lambda_(t_end)))
        y0 = x64

        def rhs(u, flat):
            state = torch.from_numpy(flat).reshape(shape)
            return pf_ode_lambda_rhs(model, state, u, y).reshape(-1).numpy()
    elif variable == "edm":
        span = (float(sched.edm_sigma(t_start)), float(sched.edm_sigma(t_end)))
        y0 = x64 / float(sched.alpha(t_start))

        def rhs(u, flat):
            state = torch.from_numpy(flat).reshape(shape)
            t = float(sched.t_from_edm_sigma(u))
            return model.eps(float(sched.alpha(t)) * state, t, y).to(torch.float64).reshape(-1).numpy()
    else:
        raise ValueError(f"variable must be 'lambda' or 'edm', got {variable!r}")

    with torch.no_grad():
        sol = solve_ivp(rhs, span, y0.reshape(-1).numpy(), method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
    return out if variable == "lambda" else out * float(sched.alpha(t_end))
