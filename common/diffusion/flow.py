r"""Flow-matching (FM-OT) time for the VP ε models: the coordinate maps, RK1/RK2 in FM time, float64 ground-truth paths.

**The model's flow ODE (FM-OT view of an ε-prediction model).** A model that predicts the noise of the VP
process :math:`x^{vp}_t = \alpha_t x_0 + \sigma_t\varepsilon` (:mod:`common.diffusion`) also defines the flow of
the conditional optimal-transport path (CondOT, Lipman et al. 2023; time :math:`\tau`, :math:`\tau = 1` at the data)

.. math:: x_\tau = \tau x_0 + (1 - \tau)\varepsilon, \qquad
          \frac{dx}{d\tau} = u_\tau(x) = \mathbb E[x_0 - \varepsilon \mid x_\tau = x] = \hat x_0 - \hat\varepsilon,

with :math:`\hat\varepsilon, \hat x_0` evaluated at the VP time :math:`t_\tau` and VP state :math:`x/s_\tau`, where
:math:`\alpha_{t_\tau}/\sigma_{t_\tau} = \tau/(1-\tau)` (so :math:`\tau = \mathrm{sigmoid}(\lambda_t)`) and
:math:`s_\tau = (1-\tau)/\sigma_{t_\tau} = 1/(\alpha_{t_\tau} + \sigma_{t_\tau})` (``Denoiser.flow_velocity``). A
model trained for VP times :math:`t \in [t_{min}, 1]` has its FM ODE on
:math:`\tau \in [\tau_0, \tau_1] = [\mathrm{sigmoid}(\lambda_1), \mathrm{sigmoid}(\lambda_{t_{min}})] \approx [0.0064,
0.990]` (:func:`flow_interval`); a solver in FM time starts from the same VP noise :math:`x_T`
(:math:`x_{\tau_0} = s_{\tau_0} x_T`, :func:`vp_to_flow`) and is scored on the VP state at :math:`t_{min}`
(:math:`x^{vp} = x_{\tau_1}/s_{\tau_1}`, :func:`flow_to_vp`), like DDIM and DPM-Solver++.

**Solvers.** :func:`rk_euler` (RK1) and :func:`rk_midpoint` (RK2) integrate :math:`dx/d\tau = u_\tau(x)` along
*increasing* FM times (:func:`uniform_flow_grid`, :func:`logsnr_flow_grid`); they take the FM state and return it.

**Ground-truth paths.** :func:`ground_truth`: ``scipy.integrate.solve_ivp`` (float64 model, whole batch as one
system) of the PF-ODE in log-SNR, sampled at K nodes and mapped to FM coordinates; between nodes :func:`hermite`
interpolates with the nodes' values and the model's velocities (cubic Hermite), which is differentiable in the
query times (Bespoke solvers, Shaul et al. 2024, learn those times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from common.diffusion.views import batch_times

# --- the FM-OT view of the ε model --------------------------------------------------------------------


def flow_interval(model, t_start: float = 1.0, t_end: float | None = None) -> tuple[float, float]:
    r"""The FM times :math:`(\tau_0, \tau_1) = (\mathrm{sigmoid}(\lambda_{t_{start}}), \mathrm{sigmoid}(\lambda_{t_{end}}))`
    of the VP interval ``t_start -> t_end`` (default t_min)."""
    t_end = model.schedule.t_min if t_end is None else t_end
    if not 1.0 >= t_start > t_end > 0:
        raise ValueError(f"need 1 >= t_start > t_end > 0, got {t_start}, {t_end}")
    return float(model.flow_r_of_t(t_start)), float(model.flow_r_of_t(t_end))


def flow_scale(model, tau) -> torch.Tensor:
    r""":math:`s_\tau = 1/(\alpha_{t_\tau} + \sigma_{t_\tau})`: the FM-OT state is :math:`s_\tau` times the VP state."""
    return model.flow_time_and_scale(torch.as_tensor(tau, dtype=torch.float64))[1]


def vp_to_flow(model, x_vp: torch.Tensor, tau: float) -> torch.Tensor:
    return x_vp * float(flow_scale(model, tau))


def flow_to_vp(model, x: torch.Tensor, tau: float) -> torch.Tensor:
    return x / float(flow_scale(model, tau))


def velocity(model, x: torch.Tensor, tau, y=None) -> torch.Tensor:
    r"""FM-OT velocity :math:`u_\tau(x) = \hat x_0 - \hat\varepsilon` at :math:`(x/s_\tau, t_\tau)` (one network call);
    ``tau`` may be a tensor that carries gradients."""
    return model.flow_velocity(x, batch_times(tau, x), y)


# --- RK1 (Euler) and RK2 (midpoint) in FM time --------------------------------------------------------


def uniform_flow_grid(lo: float, hi: float, n_steps: int) -> torch.Tensor:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.linspace(lo, hi, n_steps + 1, dtype=torch.float64)


def logsnr_flow_grid(lo: float, hi: float, n_steps: int) -> torch.Tensor:
    r"""FM times uniform in log-SNR: :math:`\tau_i = \mathrm{sigmoid}(\lambda_i)`, :math:`\lambda_i` uniform between
    :math:`\mathrm{logit}(lo)` and :math:`\mathrm{logit}(hi)` (the VP log-SNR grid of DPM-Solver, in FM time).

    A stronger fixed grid for RK2 than the uniform FM grid on a VP-trained model (bespoke_solvers: a baseline
    added by the referee; the paper's base solver uses the uniform grid)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 < lo < hi < 1:
        raise ValueError(f"need 0 < lo < hi < 1 (FM times), got {lo}, {hi}")
    lam = torch.linspace(math.log(lo / (1 - lo)), math.log(hi / (1 - hi)), n_steps + 1, dtype=torch.float64)
    grid = torch.sigmoid(lam)
    grid[0], grid[-1] = lo, hi
    return grid


def _step_done(i, a, b, x, u, trajectory, return_trajectory, callback):
    if return_trajectory:
        trajectory.append(x)
    if callback is not None:
        callback({"i": i, "t": a, "t_next": b, "x": x, "u": u})


def rk_euler(model, x: torch.Tensor, taus: torch.Tensor, y=None, return_trajectory: bool = False,
             callback: Callable | None = None):
    """Euler (RK1) in FM time along increasing ``taus``: x += h u(x, tau); one NFE per step.

    ``return_trajectory`` also returns the FM states at every time of ``taus``; ``callback(info)`` is called
    after every step with ``{"i", "t", "t_next", "x", "u"}`` (u: the velocity at the step's start)."""
    trajectory = [x]
    for i, (a, b) in enumerate(zip(taus[:-1].tolist(), taus[1:].tolist(), strict=True)):
        u = velocity(model, x, a, y)
        x = x + (b - a) * u
        _step_done(i, a, b, x, u, trajectory, return_trajectory, callback)
    return (x, trajectory) if return_trajectory else x


def rk_midpoint(model, x: torch.Tensor, taus: torch.Tensor, y=None, return_trajectory: bool = False,
                callback: Callable | None = None):
    """Explicit midpoint (RK2) in FM time: x += h u(x + h/2 u(x, tau), tau + h/2); two NFE per step.

    ``return_trajectory`` / ``callback`` as :func:`rk_euler` (u: the velocity at the step's start)."""
    trajectory = [x]
    for i, (a, b) in enumerate(zip(taus[:-1].tolist(), taus[1:].tolist(), strict=True)):
        h = b - a
        u = velocity(model, x, a, y)
        z = x + 0.5 * h * u
        x = x + h * velocity(model, z, a + 0.5 * h, y)
        _step_done(i, a, b, x, u, trajectory, return_trajectory, callback)
    return (x, trajectory) if return_trajectory else x


# --- ground-truth paths --------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    r"""Float64 reference paths in FM coordinates at K nodes uniform in log-SNR :math:`\lambda = \mathrm{logit}(\tau)`:
    ``x[k]`` (the state), ``dx[k]`` (:math:`dx/d\lambda = u_\tau(x)\,\tau(1-\tau)`), B paths.

    ``nfe_rows`` counts per-sample network evaluations spent making them (solve_ivp + node velocities).
    """

    lambdas: torch.Tensor
    x: torch.Tensor
    dx: torch.Tensor
    nfe_rows: int

    @property
    def endpoint(self) -> torch.Tensor:
        return self.x[-1]

    @property
    def taus(self) -> torch.Tensor:
        return torch.sigmoid(self.lambdas)

    def subset(self, idx) -> "GroundTruth":
        return GroundTruth(self.lambdas, self.x[:, idx], self.dx[:, idx], self.nfe_rows)


def ground_truth(model64, x_vp: torch.Tensor, y, t_start: float = 1.0, t_end: float | None = None, n_nodes: int = 65,
                 rtol: float = 1e-5, atol: float = 1e-7, method: str = "RK45") -> GroundTruth:
    r"""Reference paths from the VP noise ``x_vp`` at ``t_start`` to ``t_end`` (default t_min).

    The probability-flow ODE is integrated in log-SNR, :math:`dx^{vp}/d\lambda = \sigma^2 x^{vp} - \sigma\hat\varepsilon`
    (``common.diffusion.samplers.pf_ode_lambda_rhs``; float64 ``solve_ivp``, the whole batch one system), and read
    at ``n_nodes`` uniform :math:`\lambda`; the states are mapped to FM coordinates (:math:`x = s_\tau x^{vp}`) and
    the model's FM velocity is evaluated there. ``model64`` should be the float64 copy of the network.
    """
    from scipy.integrate import solve_ivp

    from common.diffusion.samplers import pf_ode_lambda_rhs

    if n_nodes < 2:
        raise ValueError(f"n_nodes must be >= 2, got {n_nodes}")
    sched = model64.schedule
    t_end = sched.t_min if t_end is None else t_end
    lam0, lam1 = float(sched.lambda_(t_start)), float(sched.lambda_(t_end))
    lambdas = torch.linspace(lam0, lam1, n_nodes, dtype=torch.float64)
    x0 = x_vp.detach().double()
    shape = x0.shape

    def rhs(lam, flat):
        return pf_ode_lambda_rhs(model64, torch.from_numpy(flat).reshape(shape), lam, y).reshape(-1).numpy()

    with torch.no_grad():
        sol = solve_ivp(rhs, (lam0, lam1), x0.reshape(-1).numpy(), method=method, rtol=rtol, atol=atol,
                        t_eval=lambdas.numpy())
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        x_vp_nodes = torch.from_numpy(np.ascontiguousarray(sol.y.T)).reshape(n_nodes, *shape)
        x_vp_nodes[0] = x0
        taus = torch.sigmoid(lambdas)
        xs = x_vp_nodes * flow_scale(model64, taus)[:, None, None]
        dxs = torch.stack([velocity(model64, xs[k], taus[k], y) * float(taus[k] * (1 - taus[k]))
                           for k in range(n_nodes)])
    return GroundTruth(lambdas, xs, dxs, nfe_rows=int(sol.nfev + n_nodes) * shape[0])


def hermite(gt: GroundTruth, tau: torch.Tensor) -> torch.Tensor:
    r"""Cubic Hermite interpolation of the ground-truth paths at one FM time ``tau`` (0-d tensor, may carry grad),
    in the node variable :math:`\lambda = \mathrm{logit}(\tau)`:
    :math:`x = h_{00}x_k + h_{10}\Delta\,x'_k + h_{01}x_{k+1} + h_{11}\Delta\,x'_{k+1}` on the node interval."""
    tau = torch.as_tensor(tau, dtype=torch.float64)
    lam = torch.log(tau) - torch.log1p(-tau)
    nodes = gt.lambdas
    k = int(torch.clamp(torch.searchsorted(nodes, lam.detach().reshape(1)) - 1, 0, len(nodes) - 2))
    d = nodes[k + 1] - nodes[k]
    w = ((lam - nodes[k]) / d).clamp(0.0, 1.0)
    h00 = 2 * w**3 - 3 * w**2 + 1
    h10 = w**3 - 2 * w**2 + w
    h01 = -2 * w**3 + 3 * w**2
    h11 = w**3 - w**2
    return h00 * gt.x[k] + h10 * d * gt.dx[k] + h01 * gt.x[k + 1] + h11 * d * gt.dx[k + 1]
