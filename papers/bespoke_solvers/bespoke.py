r"""Bespoke solvers (Shaul et al., ICLR 2024): a learned scale-time transform of an RK1/RK2 solver.

**The model's flow ODE (FM-OT view of an ε-prediction model).** The committed digits model predicts the noise
of the VP process :math:`x^{vp}_t = \alpha_t x_0 + \sigma_t\varepsilon` (``common.diffusion``). The same network
defines the flow of the conditional optimal-transport path (CondOT, Lipman et al. 2023; time :math:`\tau`,
:math:`\tau = 1` at the data)

.. math:: x_\tau = \tau x_0 + (1 - \tau)\varepsilon, \qquad
          \frac{dx}{d\tau} = u_\tau(x) = \mathbb E[x_0 - \varepsilon \mid x_\tau = x] = \hat x_0 - \hat\varepsilon,

with :math:`\hat\varepsilon, \hat x_0` evaluated at the VP time :math:`t_\tau` and VP state :math:`x/s_\tau`, where
:math:`\alpha_{t_\tau}/\sigma_{t_\tau} = \tau/(1-\tau)` (so :math:`\tau = \mathrm{sigmoid}(\lambda_t)`) and
:math:`s_\tau = (1-\tau)/\sigma_{t_\tau} = 1/(\alpha_{t_\tau} + \sigma_{t_\tau})` (``Denoiser.flow_velocity``). The
model is trained for VP times :math:`t \in [t_{min}, 1]`, so the FM ODE runs on
:math:`\tau \in [\tau_0, \tau_1] = [\mathrm{sigmoid}(\lambda_1), \mathrm{sigmoid}(\lambda_{t_{min}})] \approx [0.0064,
0.990]`; every solver here starts from the same VP noise :math:`x_T` (:math:`x_{\tau_0} = s_{\tau_0} x_T`) and is
scored on the VP state at :math:`t_{min}` (:math:`x^{vp} = x_{\tau_1}/s_{\tau_1}`), like DDIM and DPM-Solver++.

**Scale-time transformation (paper Sec. 2).** For smooth :math:`t_r` (increasing, :math:`t_0 = \tau_0`,
:math:`t_1 = \tau_1`) and :math:`s_r > 0` (:math:`s_0 = 1`), :math:`\bar x(r) = s_r\,x(t_r)`, :math:`r \in [0, 1]`,
solves the transformed ODE

.. math:: \frac{d\bar x}{dr} = \bar u_r(\bar x) = \frac{\dot s_r}{s_r}\bar x + \dot t_r s_r\, u_{t_r}(\bar x / s_r),

and :math:`x(\tau_1) = \bar x(1)/s_1`. A **Bespoke solver** applies a base solver with n uniform steps
(:math:`h = 1/n`) to this ODE and maps back. Written in the original coordinates (:math:`x_i = \bar x_i/s_i`), the
steps are

* Bespoke-RK1 (Euler on :math:`\bar u`):
  :math:`x_{i+1} = \big[(s_i + h\dot s_i)\,x_i + h\,\dot t_i s_i\,u_{t_i}(x_i)\big] / s_{i+1}`;
* Bespoke-RK2 (midpoint on :math:`\bar u`):
  :math:`z_i = \big[(s_i + \tfrac h2\dot s_i)\,x_i + \tfrac h2\dot t_i s_i\,u_{t_i}(x_i)\big]/s_{i+\frac12}`,
  :math:`x_{i+1} = \big[s_i x_i + h\,(\dot s_{i+\frac12} z_i + \dot t_{i+\frac12} s_{i+\frac12}\,u_{t_{i+\frac12}}(z_i))\big]/s_{i+1}`.

The learnable parameters are the values :math:`t_j, \dot t_j, s_j, \dot s_j` at the solver's grid points
(j = 0..n for RK1, j = 0, ½, 1, ..., n for RK2) *as independent numbers* (not derivatives of one function),
constrained as in the paper: :math:`t` increasing from :math:`\tau_0` to :math:`\tau_1` (normalised cumulative sums
of absolute values), :math:`\dot t_j > 0` (absolute values), :math:`s_j > 0` (exponentials, :math:`s_0 = 1`),
:math:`\dot s_j` free. The identity transform (:math:`t_r` linear, :math:`s \equiv 1`) turns Bespoke-RKk into plain
RKk on the uniform FM grid: it is the initialisation, so training starts at the RK baseline.

**Loss: the RMSE bound (paper Sec. 3).** With the ground-truth path :math:`x(t)` (float64 reference solution),
the local truncation errors :math:`d_{i+1} = \mathrm{rmse}\big(x(t_{i+1}),\ \mathrm{step}_i(x(t_i))\big)` and a
Lipschitz bound :math:`L_i` of step i (computed from the parameters with a constant :math:`L_\tau` for the
Lipschitz constant of u), the global error obeys
:math:`\mathrm{rmse}(x(\tau_1), x_n) \le \sum_{i=0}^{n-1} M_{i+1} d_{i+1}` with :math:`M_i = \prod_{k=i}^{n-1} L_k`
(:math:`M_n = 1`). The loss is this bound averaged over ground-truth paths:

.. math:: \mathcal L_{\rm RMSE\text{-}B}(\theta) = \mathbb E_{x_T} \sum_{i=0}^{n-1} M_{i+1}(\theta)\, d_{i+1}(\theta; x_T).

Lipschitz bounds of the steps (triangle inequality on the formulas above, with :math:`\mathrm{Lip}(u) \le L_\tau`):
RK1: :math:`L_i = (|s_i + h\dot s_i| + h\dot t_i s_i L_\tau)/s_{i+1}`; RK2:
:math:`L^z_i = (|s_i + \tfrac h2\dot s_i| + \tfrac h2\dot t_i s_i L_\tau)/s_{i+\frac12}`,
:math:`L_i = \big(s_i + h(|\dot s_{i+\frac12}| + \dot t_{i+\frac12}s_{i+\frac12}L_\tau)L^z_i\big)/s_{i+1}`.

Which parts were read from the paper and which were reconstructed is stated in the paper's README (the paper's
Sec. 2-3 text was not retrievable offline; the step formulas and Lipschitz bounds above are derived here from
the scale-time definition).

**Ground-truth paths.** ``scipy.integrate.solve_ivp`` (DOP853, float64 model, whole batch as one system) in FM
time, sampled at K nodes; between nodes :func:`hermite` interpolates with the nodes' values and the model's
velocities (cubic Hermite), which is differentiable in the (learnable) query times.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.diffusion import ddim, dpm_solver_pp_2m, metrics, time_grid
from common.diffusion.flow import (
    GroundTruth,
    flow_interval,
    flow_to_vp,
    ground_truth,
    hermite,
    logsnr_flow_grid,
    rk_euler,
    rk_midpoint,
    uniform_flow_grid,
    velocity,
    vp_to_flow,
)

# --- the Bespoke parameterisation -----------------------------------------------------------------------


class BespokeSolver(nn.Module):
    r"""An n-step Bespoke-RK1 or -RK2 solver on the FM interval [lo, hi] (see the module docstring).

    Grid points j = 0..m with m = n (RK1) or 2n (RK2; point j is r = j / m, so odd j are the midpoints).
    Raw parameters (float64), initialised at the identity transform:

    * ``raw_dt`` [m]: :math:`t_j = lo + (hi - lo)\,\mathrm{cumsum}(|raw|)_j / \sum|raw|` (monotone, fixed ends);
    * ``raw_tdot`` [m + 1]: :math:`\dot t_j = |raw|` (init hi - lo);
    * ``raw_log_s`` [m]: :math:`s_0 = 1`, :math:`s_j = \exp(raw_{j-1})` for j >= 1 (init 1);
    * ``raw_sdot`` [m + 1]: :math:`\dot s_j = raw` (init 0).
    """

    def __init__(self, n_steps: int, order: int = 2, lo: float = 0.0, hi: float = 1.0):
        super().__init__()
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (RK1) or 2 (RK2), got {order}")
        if not 0 < lo < hi < 1:
            raise ValueError(f"need 0 < lo < hi < 1 (FM times), got {lo}, {hi}")
        self.n_steps, self.order, self.lo, self.hi = int(n_steps), int(order), float(lo), float(hi)
        m = self.n_points - 1
        f64 = torch.float64
        self.raw_dt = nn.Parameter(torch.ones(m, dtype=f64))
        self.raw_tdot = nn.Parameter(torch.full((m + 1,), hi - lo, dtype=f64))
        self.raw_log_s = nn.Parameter(torch.zeros(m, dtype=f64))
        self.raw_sdot = nn.Parameter(torch.zeros(m + 1, dtype=f64))

    @property
    def n_points(self) -> int:
        return self.order * self.n_steps + 1

    @property
    def nfe(self) -> int:
        return self.order * self.n_steps

    def n_used_parameters(self) -> int:
        r"""Free numbers the solver uses: t (m - 1 interior), :math:`\dot t, \dot s` (m, the last point's unused),
        s (m). RK2 with n = 10: 8n - 1 = 79 (the paper's "80 learnable parameters")."""
        m = self.n_points - 1
        return (m - 1) + m + m + m

    def grid(self) -> dict[str, torch.Tensor]:
        """The constrained parameters t, tdot, s, sdot at the m + 1 grid points (float64, differentiable)."""
        inc = self.raw_dt.abs()
        frac = torch.cat([inc.new_zeros(1), torch.cumsum(inc, 0) / inc.sum()])
        t = self.lo + (self.hi - self.lo) * frac
        s = torch.cat([self.raw_log_s.new_zeros(1), self.raw_log_s]).exp()
        return {"t": t, "tdot": self.raw_tdot.abs(), "s": s, "sdot": self.raw_sdot}

    def step_times(self) -> torch.Tensor:
        """t at the integer points r_i = i / n (i = 0..n): where the solver's states live."""
        return self.grid()["t"][:: self.order]

    # --- one step and the whole solve ---------------------------------------------------------------------
    def step(self, model, x: torch.Tensor, i: int, y=None, g: dict | None = None) -> torch.Tensor:
        """Step i (from r_i to r_{i+1}) of the Bespoke solver on the state x at t_i (module docstring)."""
        g = self.grid() if g is None else g
        t, td, s, sd = g["t"], g["tdot"], g["s"], g["sdot"]
        h = 1.0 / self.n_steps
        if self.order == 1:
            j = i
            u = velocity(model, x, t[j], y)
            return ((s[j] + h * sd[j]) * x + h * td[j] * s[j] * u) / s[j + 1]
        j = 2 * i
        u = velocity(model, x, t[j], y)
        z = ((s[j] + 0.5 * h * sd[j]) * x + 0.5 * h * td[j] * s[j] * u) / s[j + 1]
        uz = velocity(model, z, t[j + 1], y)
        return (s[j] * x + h * (sd[j + 1] * z + td[j + 1] * s[j + 1] * uz)) / s[j + 2]

    def solve(self, model, x: torch.Tensor, y=None) -> torch.Tensor:
        """Run all n steps from x at lo (FM coordinates); returns the state at hi."""
        g = self.grid()
        for i in range(self.n_steps):
            x = self.step(model, x, i, y, g)
        return x

    def lipschitz(self, lipschitz_u: float = 1.0, g: dict | None = None) -> torch.Tensor:
        """[n] Lipschitz bounds L_i of the steps (module docstring), with Lip(u) <= ``lipschitz_u``."""
        g = self.grid() if g is None else g
        td, s, sd = g["tdot"], g["s"], g["sdot"]
        h, L = 1.0 / self.n_steps, float(lipschitz_u)
        if self.order == 1:
            return ((s[:-1] + h * sd[:-1]).abs() + h * td[:-1] * s[:-1] * L) / s[1:]
        j = torch.arange(0, 2 * self.n_steps, 2)
        lz = ((s[j] + 0.5 * h * sd[j]).abs() + 0.5 * h * td[j] * s[j] * L) / s[j + 1]
        return (s[j] + h * (sd[j + 1].abs() + td[j + 1] * s[j + 1] * L) * lz) / s[j + 2]


# --- the loss and training -----------------------------------------------------------------------------


def rmse_bound_loss(solver: BespokeSolver, model, gt: GroundTruth, y=None, lipschitz_u: float = 1.0,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    r""":math:`\mathcal L_{\rm RMSE-B} = \mathrm{mean}_b \sum_i M_{i+1} d_{i+1}` (module docstring) on the paths of ``gt``.

    Each step starts from the ground truth at its own :math:`t_i`, so the n local errors are independent
    network calls (2n NFE per path for RK2). Returns (loss, {"local": [n] mean local errors, "M": [n]}).
    """
    g = solver.grid()
    ts = g["t"][:: solver.order]
    xs = [hermite(gt, ts[i]) for i in range(solver.n_steps + 1)]
    local = []
    for i in range(solver.n_steps):
        pred = solver.step(model, xs[i].to(dtype), i, y, g)
        err = (xs[i + 1] - pred.double()).pow(2).mean(dim=-1).sqrt()  # per-path RMSE
        local.append(err.mean())
    local = torch.stack(local)
    lips = solver.lipschitz(lipschitz_u, g)
    # M_{i+1} = prod_{k=i+1}^{n-1} L_k  (M_n = 1)
    suffix = torch.flip(torch.cumprod(torch.flip(lips, [0]), 0), [0])
    M = torch.cat([suffix[1:], suffix.new_ones(1)])
    return (M * local).sum(), {"local": local.detach(), "M": M.detach()}


def train_bespoke(model, gt: GroundTruth, y, n_steps: int, order: int = 2, n_iter: int = 150, batch_size: int = 16,
                  lr: float = 2e-3, lipschitz_u: float = 1.0, rng: np.random.Generator | None = None,
                  progress: bool = False) -> tuple[BespokeSolver, dict]:
    """Adam on the RMSE-bound loss over minibatches of ground-truth paths (the model stays frozen).

    Returns the solver and a log: ``loss`` per iteration and ``nfe_rows`` = per-sample forward network
    evaluations spent (a backward through the network is counted separately in ``backward_rows``).
    """
    if n_iter < 0 or batch_size < 1:
        raise ValueError(f"need n_iter >= 0 and batch_size >= 1, got {n_iter}, {batch_size}")
    rng = np.random.default_rng(0) if rng is None else rng
    lo, hi = float(gt.taus[0]), float(gt.taus[-1])
    solver = BespokeSolver(n_steps, order, lo, hi)
    opt = torch.optim.Adam(solver.parameters(), lr=lr)
    n_paths = gt.x.shape[1]
    batch_size = min(batch_size, n_paths)
    losses, rows = [], 0
    iterator = range(n_iter)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"bespoke-RK{order} n={n_steps}", leave=False)
    for _ in iterator:
        idx = torch.from_numpy(rng.choice(n_paths, size=batch_size, replace=False))
        loss, _ = rmse_bound_loss(solver, model, gt.subset(idx), None if y is None else y[idx], lipschitz_u)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        rows += solver.nfe * batch_size
    return solver, {"loss": losses, "nfe_rows": rows, "backward_rows": rows}


# --- the evaluation -------------------------------------------------------------------------------------


def evaluate_solvers(model, solvers: dict, x_vp: torch.Tensor, y, reference_vp: torch.Tensor, nfe: int,
                     lo: float, hi: float) -> dict:
    """RMSE and PSNR (data range 2) to the reference VP endpoint of every method at ``nfe`` network calls.

    ``solvers`` maps a name to a trained :class:`BespokeSolver` with that NFE; the baselines (RK1/RK2 on the uniform
    FM grid, RK2 on the log-SNR FM grid, DDIM on the uniform-t grid, DPM-Solver++(2M) on the uniform-t and log-SNR
    grids) are run here, all
    from the same ``x_vp``. The NFE of every run is measured with the model's counter.
    """
    if nfe % 2:
        raise ValueError(f"nfe must be even (RK2 spends 2 per step), got {nfe}")
    out = {}

    def score(name, fn):
        model.reset_nfe()
        with torch.no_grad():
            x_end = fn()
        out[name] = {"rmse": metrics.rmse(x_end, reference_vp), "psnr": metrics.psnr(x_end, reference_vp),
                     "nfe": model.reset_nfe()}

    x_flow = vp_to_flow(model, x_vp, lo)
    score("rk1", lambda: flow_to_vp(model, rk_euler(model, x_flow, uniform_flow_grid(lo, hi, nfe), y), hi))
    score("rk2", lambda: flow_to_vp(model, rk_midpoint(model, x_flow, uniform_flow_grid(lo, hi, nfe // 2), y), hi))
    score("rk2_logsnr",
          lambda: flow_to_vp(model, rk_midpoint(model, x_flow, logsnr_flow_grid(lo, hi, nfe // 2), y), hi))
    score("ddim", lambda: ddim(model, x_vp, time_grid(nfe, "uniform_t"), y))
    score("dpmpp2m_uniform_t", lambda: dpm_solver_pp_2m(model, x_vp, time_grid(nfe, "uniform_t"), y))
    score("dpmpp2m_logsnr", lambda: dpm_solver_pp_2m(model, x_vp, time_grid(nfe, "logsnr"), y))
    for name, solver in solvers.items():
        if solver.nfe != nfe:
            raise ValueError(f"solver {name!r} spends {solver.nfe} NFE, not {nfe}")
        score(name, lambda s=solver: flow_to_vp(model, s.solve(model, x_flow, y), hi))
    return out


# --- the experiment ----------------------------------------------------------------------------------

#: Per-sample network evaluations of the digits model's training (``digits_eps_ci`` manifest: 12,000 Adam steps
#: of batch 256), counted like Bespoke's training: one forward + one backward = 3 forward-equivalents per row.
FORWARD_EQUIVALENTS_PER_BACKWARD_ROW = 3


def model_training_rows(manifest: dict) -> int:
    """Forward-equivalent per-sample evaluations of the model's own training: steps x batch x 3."""
    tr = manifest["training"]
    return int(tr["steps"]) * int(tr["batch_size"]) * FORWARD_EQUIVALENTS_PER_BACKWARD_ROW


def run_seed(model, model64, seed: int, steps=(5,), n_fit: int = 32, n_eval: int = 48, n_iter: int = 70,
             batch_size: int = 12, lr: float = 3e-2, lipschitz_u: float = 1.0, n_nodes: int = 65,
             gt_rtol: float = 1e-5, gt_atol: float = 1e-7, with_fd: bool = True, progress: bool = False) -> dict:
    """One seed: a :class:`~common.diffusion.noise_bank.NoiseBank` (fit and evaluation banks disjoint), ground truth on
    both, one Bespoke-RK2 per n in ``steps`` trained on the fit bank, every method scored on the evaluation bank
    at NFE 2n; the baselines also at NFE 4n (the "2x NFE" comparison). ``with_fd``: FD32 to the train digits of the
    ground-truth endpoints and of the largest Bespoke solver's samples (same noises). Returns name -> value."""
    from common.diffusion.noise_bank import NoiseBank

    bank = NoiseBank(seed)
    x_fit, y_fit = bank.fit(n_fit)
    x_eval, y_eval = bank.evaluation(n_eval)
    lo, hi = flow_interval(model)
    gt_fit = ground_truth(model64, x_fit, y_fit, n_nodes=n_nodes, rtol=gt_rtol, atol=gt_atol)
    gt_eval = ground_truth(model64, x_eval, y_eval, n_nodes=2, rtol=gt_rtol, atol=gt_atol)
    ref = flow_to_vp(model64, gt_eval.endpoint, hi)
    out = {"disjoint_banks": bank.check_disjoint(n_fit, n_eval), "gt.fit_rows": gt_fit.nfe_rows}
    rng = np.random.default_rng(seed)
    for n in steps:
        # the identity initialisation is RK2 on the uniform FM grid (a check of the step formulas)
        init = BespokeSolver(n, 2, lo, hi)
        with torch.no_grad():
            x_flow = vp_to_flow(model, x_eval, lo)
            a = init.solve(model, x_flow, y_eval)
            b = rk_midpoint(model, x_flow, uniform_flow_grid(lo, hi, n), y_eval)
        out[f"n{n}.init_minus_rk2_maxabs"] = float((a - b).abs().max())
        solver, log = train_bespoke(model, gt_fit, y_fit, n, 2, n_iter=n_iter, batch_size=batch_size, lr=lr,
                                    lipschitz_u=lipschitz_u, rng=rng, progress=progress)
        out[f"n{n}.loss_first"] = float(np.mean(log["loss"][: max(1, n_iter // 20)]))
        out[f"n{n}.loss_last"] = float(np.mean(log["loss"][-max(1, n_iter // 20):]))
        out[f"n{n}.train_rows"] = gt_fit.nfe_rows + FORWARD_EQUIVALENTS_PER_BACKWARD_ROW * log["nfe_rows"]
        out[f"n{n}.n_parameters"] = solver.n_used_parameters()
        out[f"n{n}.grid_t"] = solver.grid()["t"].detach()[::2].tolist()
        for nfe, solvers in ((2 * n, {"bespoke_rk2": solver}), (4 * n, {})):
            res = evaluate_solvers(model, solvers, x_eval, y_eval, ref, nfe, lo, hi)
            for name, r in res.items():
                for key, v in r.items():
                    out[f"nfe{nfe}.{name}.{key}"] = v
            if solvers:
                out[f"n{n}.bespoke_nfe"] = res["bespoke_rk2"]["nfe"]
        if with_fd and n == max(steps):  # sample quality of the largest Bespoke solver against the ground truth's
            with torch.no_grad():
                x_end = flow_to_vp(model, solver.solve(model, vp_to_flow(model, x_eval, lo), y_eval), hi)
            out["fd.top_nfe"] = solver.nfe
            out["fd.gt"] = metrics.fd_to_train(ref.float())
            out["fd.bespoke_top"] = metrics.fd_to_train(x_end)
    return out


def run_experiment(model, model64, seeds, progress: bool = False, **kwargs) -> dict:
    """:func:`run_seed` for every seed; returns name -> list over seeds."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("need at least one seed")
    iterator = seeds
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(seeds, desc="seeds")
    per_seed = [run_seed(model, model64, s, progress=progress, **kwargs) for s in iterator]
    return {k: [r[k] for r in per_seed] for k in per_seed[0]}
