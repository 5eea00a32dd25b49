r"""Optimal Linear Subspace Search (OLSS; Duan, Wang, Chen, Huang, Qian, CIKM 2023): a learned few-step scheduler.

**The linear-subspace view (Sec. 3 of the paper).** A deterministic scheduler such as DDIM computes each
state as a linear combination of the previous state and the model's noise prediction,
:math:`x_{i+1} = a_i x_i + b_i \hat\varepsilon_i` with :math:`\hat\varepsilon_i = \hat\varepsilon(x_i, t_i)`.
Unrolled, every state lies in the span of the initial noise and all noise predictions so far:

.. math:: x_{i+1} \in \operatorname{span}\{x_T, \hat\varepsilon_0, \dots, \hat\varepsilon_i\}.

Existing schedulers fix the coefficients of that combination analytically; OLSS *learns* them.

**OLSS-P: least squares on a fixed path.** Run a slow teacher (DDIM with N = 100 steps) from M noises and
record its states :math:`x^{(m)}_k` and noise predictions :math:`\varepsilon^{(m)}_k` (k = 0..N). For an
n-step path :math:`0 = p_0 < p_1 < \dots < p_{n-1} < N` (:math:`p_n := N`, the teacher's endpoint) the
coefficients of step i solve the ordinary least-squares problem over all M runs and all pixels

.. math:: \min_{w_x, w_{e,0..i}} \sum_m \big\| x^{(m)}_{p_{i+1}} - w_x x^{(m)}_T - \textstyle\sum_{j\le i} w_{e,j}\,\varepsilon^{(m)}_{p_j} \big\|^2,

solved in float64 (the columns are nearly collinear: consecutive predictions differ little). The
official code (``OLSSSolver.solve_scheduer_parameters``) calls ``torch.linalg.lstsq``; here
:func:`least_squares` calls ``numpy.linalg.lstsq`` (SVD-based, float64). OLSS-P takes the uniform path
:math:`p_j = j\lfloor N/n\rfloor` (the official ``resolve_diffusion_process`` default), which for n | N
is exactly the grid of n-step DDIM, so OLSS-P vs DDIM isolates the learned coefficients.

**Sampling** (official ``OLSSScheduler.step``): from a new x_T, evaluate
:math:`\hat\varepsilon_i = \hat\varepsilon(x_i, t_{p_i})` and set
:math:`x_{i+1} = w_x[i]\,x_T + \sum_{j\le i} w_e[i, j]\,\hat\varepsilon_j`: n network calls.

**OLSS: path search.** Which n teacher times to keep is chosen greedily under a per-step error bound
:math:`\delta` (official ``search_path_with_error_limit``): from the current path point :math:`p_i`, the
next point is the *farthest* teacher index k whose one-step regression of :math:`x_k` on
:math:`[x_{p_i}, \varepsilon_{p_0}, \dots, \varepsilon_{p_i}]` has mean squared residual at most
:math:`\delta`, found by bisection over k (assuming the residual grows with k; the next index is always
allowed). A bound is feasible when the greedy path reaches N within n steps; the smallest feasible bound
is found by bisection over :math:`\delta` (30 halvings, official ``resolve_diffusion_process_graph``), and
the coefficients on that path are then fitted as in OLSS-P (with :math:`x_T` as the first column).

Fitting is per class label (the official README advises fitting on "similar prompts"): one path and one
coefficient table per label, each from M teacher runs of that label.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from common.diffusion import ddim, dpm_solver_pp_2m, metrics, time_grid
from common.diffusion.noise_bank import NoiseBank
from common.diffusion.trajectory import record_trajectory

# --- teacher ------------------------------------------------------------------------------------------


def teacher_grid(n_teacher: int = 100, t_start: float = 1.0) -> torch.Tensor:
    """The teacher's grid: ``n_teacher`` DDIM steps uniform in t from ``t_start`` to t_min (n + 1 times)."""
    return time_grid(n_teacher, "uniform_t", t_start=t_start)


def stable_diffusion_start(schedule) -> float:
    r"""The time t at which this model's :math:`\alpha_t` equals Stable Diffusion's :math:`\alpha_T`.

    SD (the paper's models) uses the "scaled_linear" schedule, :math:`\beta_k = (\sqrt{8.5\cdot10^{-4}} +
    \tfrac{k}{999}(\sqrt{0.012} - \sqrt{8.5\cdot10^{-4}}))^2`, k = 0..999, so sampling starts from N(0, I) at
    :math:`\alpha_T = (\prod_k (1 - \beta_k))^{1/2} \approx 0.068`; the digits model's linear schedule ends at
    :math:`\alpha_T \approx 0.0064`, ten times smaller. Starting at this t gives the paper's conditioning
    :math:`\sigma_T/\alpha_T \approx 15` (against 157 at t = 1).
    """
    betas = np.linspace(8.5e-4**0.5, 0.012**0.5, 1000) ** 2
    alpha_T = float(np.sqrt(np.prod(1.0 - betas)))
    lam = np.log(alpha_T / np.sqrt(1.0 - alpha_T**2))
    return float(schedule.t_from_lambda(torch.tensor(lam, dtype=torch.float64)))


def record_teacher(model, x_T: torch.Tensor, y: torch.Tensor | None, n_teacher: int = 100, t_start: float = 1.0):
    """Teacher trajectories (DDIM, ``n_teacher`` steps) from x_T: ``(times [N+1], states [N+1, M, D], eps [N, M, D])``,
    float64 (the official ``SchedulerWrapper`` records the same x and eps)."""
    traj = record_trajectory(ddim, model, x_T.double(), teacher_grid(n_teacher, t_start), y)
    return traj.times, traj.states.double(), traj.eps_at_states().double()


# --- least squares (float64) --------------------------------------------------------------------------


def least_squares(basis: list[torch.Tensor], target: torch.Tensor) -> tuple[np.ndarray, float]:
    r"""Float64 OLS of ``target`` [M, D] on the columns ``basis`` (a list of k tensors [M, D]).

    Every (run, pixel) pair is one regression row: :math:`X \in \mathbb{R}^{MD\times k}`,
    :math:`w = \arg\min \|X w - \mathrm{vec}(x)\|^2` (``numpy.linalg.lstsq``, minimum-norm if rank-deficient).
    Returns ``(w [k], mean squared residual over the MD rows)``.
    """
    if not basis:
        raise ValueError("basis must hold at least one column")
    X = np.stack([b.detach().double().reshape(-1).numpy() for b in basis], axis=1)
    t = target.detach().double().reshape(-1).numpy()
    if X.shape[0] != t.shape[0]:
        raise ValueError(f"basis rows {X.shape[0]} != target rows {t.shape[0]}")
    w, *_ = np.linalg.lstsq(X, t, rcond=None)
    return w, float(np.mean((X @ w - t) ** 2))


# --- the scheduler ------------------------------------------------------------------------------------


@dataclass
class OLSSScheduler:
    """An n-step linear scheduler: eval times ``times[i]``, coefficients ``wx[i]`` and ``we[i, :i+1]``.

    ``path`` holds the teacher indices of the eval times; ``fit_mse[i]`` the in-sample residual of step i.
    """

    path: list[int]
    times: np.ndarray
    wx: np.ndarray
    we: np.ndarray
    fit_mse: np.ndarray

    @property
    def n_steps(self) -> int:
        return len(self.path)


def check_path(path, n_teacher: int) -> list[int]:
    path = [int(p) for p in path]
    if not path or path[0] != 0:
        raise ValueError(f"a path starts at teacher index 0, got {path}")
    if any(b <= a for a, b in pairwise(path)) or path[-1] >= n_teacher:
        raise ValueError(f"a path is strictly increasing and below N = {n_teacher}, got {path}")
    return path


def uniform_path(n_teacher: int, n_steps: int) -> list[int]:
    """OLSS-P's path: teacher indices 0, N//n, 2 N//n, ... (n of them; official default)."""
    if not 1 <= n_steps <= n_teacher:
        raise ValueError(f"need 1 <= n_steps <= n_teacher, got {n_steps}, {n_teacher}")
    return list(range(0, n_teacher, n_teacher // n_steps))[:n_steps]


def fit_coefficients(times: torch.Tensor, states: torch.Tensor, eps: torch.Tensor, path, fit_mode: str = "teacher",
                     model=None, y: torch.Tensor | None = None) -> OLSSScheduler:
    r"""Least-squares coefficients on a given path (OLSS-P; OLSS after its path search).

    ``states`` [N+1, M, D] and ``eps`` [N, M, D] are the teacher's; step i regresses
    ``states[p_{i+1}]`` (``states[N]`` for the last step) on ``[states[0], eps[p_0], ..., eps[p_i]]``.

    ``fit_mode="teacher"`` (default) is the official, teacher-forced fit above. ``fit_mode="closed_loop"`` is
    the referee's diagnostic (README, Review), **not the official code**: step i is refitted on the sampler's
    *own* noise predictions. With :math:`\tilde x_0 = x_T` (the fit noises, ``states[0]``) and the already
    fitted steps 0..i-1 run on them,

    .. math:: \tilde\varepsilon_j = \hat\varepsilon(\tilde x_j, t_{p_j}),\qquad
              \tilde x_{j+1} = w_x[j]\,x_T + \textstyle\sum_{l\le j} w_e[j, l]\,\tilde\varepsilon_l,

    step i solves :math:`\min_w \sum_m \| x^{(m)}_{p_{i+1}} - w_x x^{(m)}_T - \sum_{j\le i} w_{e,j}
    \tilde\varepsilon^{(m)}_j \|^2`: same path, same teacher targets, same fit noises, same n network calls
    at sampling; ``fit_mse[i]`` is then the in-sample rollout error of step i. It needs ``model`` (and the
    labels ``y`` of the fit runs, if conditional) and costs n extra network calls on the fit noises.
    """
    if fit_mode not in ("teacher", "closed_loop"):
        raise ValueError(f"fit_mode must be 'teacher' or 'closed_loop', got {fit_mode!r}")
    if fit_mode == "closed_loop" and model is None:
        raise ValueError("fit_mode='closed_loop' needs the model")
    n_teacher = eps.shape[0]
    if states.shape[0] != n_teacher + 1 or len(times) != n_teacher + 1:
        raise ValueError("need N + 1 times and states for N noise predictions")
    path = check_path(path, n_teacher)
    n = len(path)
    targets = path[1:] + [n_teacher]
    eval_times = np.asarray(times)[path].astype(np.float64)
    wx, we, mse = np.zeros(n), np.zeros((n, n)), np.zeros(n)
    x_T = states[0]
    x, eps_own = x_T, []
    for i in range(n):
        if fit_mode == "teacher":
            cols = [eps[p] for p in path[: i + 1]]
        else:
            eps_own.append(model.eps(x, float(eval_times[i]), y).double())
            cols = eps_own
        w, mse[i] = least_squares([x_T] + cols, states[targets[i]])
        wx[i], we[i, : i + 1] = w[0], w[1:]
        if fit_mode == "closed_loop":
            x = float(wx[i]) * x_T
            for j in range(i + 1):
                x = x + float(we[i, j]) * eps_own[j]
    return OLSSScheduler(path, eval_times, wx, we, mse)


# --- path search --------------------------------------------------------------------------------------


class TrajectoryGram:
    r"""Gram matrix of all teacher vectors, for the many small regressions of the path search.

    Columns: states ``0..N`` then noise predictions ``0..N-1`` (each flattened over runs and pixels, R = MD
    rows); :math:`G = Z^\top Z` in float64. The regression of column t on columns B then costs a
    |B| x |B| solve: :math:`w = G_{BB}^{-1} G_{Bt}`, residual
    :math:`(G_{tt} - 2 w^\top G_{Bt} + w^\top G_{BB} w)/R`. The search only compares these residuals with a
    bound; the final coefficients are fitted by :func:`least_squares` on the raw rows.
    """

    def __init__(self, states: torch.Tensor, eps: torch.Tensor):
        self.n_teacher = eps.shape[0]
        if states.shape[0] != self.n_teacher + 1:
            raise ValueError("need N + 1 states for N noise predictions")
        z = torch.cat([states, eps]).double().reshape(2 * self.n_teacher + 1, -1).numpy()
        self.rows = z.shape[1]
        self.gram = z @ z.T
        self._cache: dict = {}

    def state(self, k: int) -> int:
        return k

    def noise(self, k: int) -> int:
        return self.n_teacher + 1 + k

    def residual(self, basis: list[int], target: int) -> float:
        """Mean squared residual of regressing column ``target`` on columns ``basis`` (memoised: the bisection
        over the bound repeats the same regressions)."""
        key = (tuple(basis), target)
        if key not in self._cache:
            self._cache[key] = self._residual(basis, target)
        return self._cache[key]

    def _residual(self, basis: list[int], target: int) -> float:
        g_bb = self.gram[np.ix_(basis, basis)]
        g_bt = self.gram[basis, target]
        w = np.linalg.lstsq(g_bb, g_bt, rcond=None)[0]
        res = self.gram[target, target] - 2.0 * w @ g_bt + w @ g_bb @ w
        return max(float(res), 0.0) / self.rows


def step_error(gram: TrajectoryGram, path: list[int], k: int) -> float:
    """Residual of reaching teacher index k from the path's last point: x_k on [x_{p_last}, eps_{p_0..p_last}]
    (official ``search_next_step_with_error_limit``: the current teacher state, not x_T, is the first column)."""
    return gram.residual([gram.state(path[-1])] + [gram.noise(p) for p in path], gram.state(k))


def next_index_under_bound(gram: TrajectoryGram, path: list[int], max_error: float) -> int:
    """The farthest teacher index k > p_last with step error <= ``max_error`` (bisection over k, assuming the
    error grows with k; p_last + 1 is always allowed, as in the official search)."""
    lo, hi = path[-1] + 1, gram.n_teacher
    while hi > lo:
        mid = (lo + hi + 1) // 2
        if step_error(gram, path, mid) > max_error:
            hi = mid - 1
        else:
            lo = mid
    return lo


def greedy_path(gram: TrajectoryGram, n_steps: int, max_error: float) -> list[int] | None:
    """Greedy path under a per-step error bound: the path (<= n_steps points) reaching N, or None."""
    path = [0]
    for _ in range(n_steps):
        k = next_index_under_bound(gram, path, max_error)
        if k == gram.n_teacher:
            return path
        path.append(k)
    return None


def fill_path(path: list[int], n_steps: int, n_teacher: int) -> list[int]:
    """Split the longest gaps (at their midpoints) until the path has ``n_steps`` points (a greedy path at the
    smallest feasible bound may reach N in fewer steps; the official code assumes it does not)."""
    path = list(path)
    while len(path) < n_steps:
        ends = path[1:] + [n_teacher]
        gaps = [b - a for a, b in zip(path, ends, strict=True)]
        j = int(np.argmax(gaps))
        if gaps[j] < 2:
            raise ValueError("cannot fill the path: no gap left to split")
        path.insert(j + 1, path[j] + gaps[j] // 2)
    return path


def search_path(states, eps, n_steps: int, n_iter: int = 30) -> tuple[list[int], float]:
    """OLSS's path: bisection over the per-step error bound for the smallest bound whose greedy path reaches
    the endpoint within ``n_steps`` steps. Returns ``(path, bound)``.

    The bracket starts at ``[0, e_1]`` with ``e_1`` the error of the one-step jump 0 -> N, which is
    feasible (the official code uses a fixed [0, 10], scaled for Stable Diffusion's latents); it is
    doubled until the greedy search succeeds.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    gram = TrajectoryGram(states, eps)
    lo, hi = 0.0, step_error(gram, [0], gram.n_teacher)
    for _ in range(60):
        if greedy_path(gram, n_steps, hi) is not None:
            break
        hi *= 2.0
    else:
        raise RuntimeError("no feasible error bound found")
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        if greedy_path(gram, n_steps, mid) is None:
            lo = mid
        else:
            hi = mid
    return fill_path(greedy_path(gram, n_steps, hi), n_steps, gram.n_teacher), hi


def fit_olss(times, states, eps, n_steps: int, search: bool = True, n_iter: int = 30, fit_mode: str = "teacher",
             model=None, y=None) -> OLSSScheduler:
    """OLSS (``search=True``: path search, then least squares) or OLSS-P (uniform path, least squares).

    The path search is always the official, teacher-based one; ``fit_mode`` only changes how the coefficients
    on the path are fitted (:func:`fit_coefficients`; ``"closed_loop"`` is the referee's diagnostic)."""
    if search:
        path, _ = search_path(states, eps, n_steps, n_iter)
    else:
        path = uniform_path(eps.shape[0], n_steps)
    return fit_coefficients(times, states, eps, path, fit_mode, model, y)


def ddim_coefficients(times, schedule) -> tuple[np.ndarray, np.ndarray]:
    r"""DDIM on the grid ``times`` (n + 1 times) written in OLSS's basis: ``(wx [n], we [n, n])``.

    DDIM's step :math:`x_{i+1} = r_i x_i + c_i\hat\varepsilon_i` with :math:`r_i = \alpha_{i+1}/\alpha_i`,
    :math:`c_i = \sigma_{i+1} - \alpha_{i+1}\sigma_i/\alpha_i` unrolls to
    :math:`x_{i+1} = (\prod_{j\le i} r_j)\,x_T + \sum_{j\le i} (\prod_{j<l\le i} r_l)\,c_j\,\hat\varepsilon_j`:
    DDIM is one member of OLSS's linear family, so the least-squares fit can only do better in-sample.
    """
    t = torch.as_tensor(times, dtype=torch.float64)
    a, s = schedule.alpha(t).numpy(), schedule.sigma(t).numpy()
    n = len(t) - 1
    r = a[1:] / a[:-1]
    c = s[1:] - a[1:] * s[:-1] / a[:-1]
    wx, we = np.zeros(n), np.zeros((n, n))
    for i in range(n):
        wx[i] = np.prod(r[: i + 1])
        for j in range(i + 1):
            we[i, j] = np.prod(r[j + 1 : i + 1]) * c[j]
    return wx, we


def apply_coefficients(states, eps, path, wx, we) -> np.ndarray:
    """In-sample MSE of each step of coefficients (wx, we) on the teacher's rows (for the optimality check)."""
    n_teacher, n = eps.shape[0], len(path)
    targets = list(path[1:]) + [n_teacher]
    out = np.zeros(n)
    for i in range(n):
        pred = wx[i] * states[0] + sum(we[i, j] * eps[path[j]] for j in range(i + 1))
        out[i] = float(((pred - states[targets[i]]) ** 2).mean())
    return out


def olss_sample(model, x_T: torch.Tensor, y, scheduler: OLSSScheduler) -> torch.Tensor:
    r"""Sample with a fitted scheduler: :math:`x_{i+1} = w_x[i] x_T + \sum_{j\le i} w_e[i,j]\hat\varepsilon(x_j, t_j)`
    (n network calls; official ``OLSSScheduler.step``)."""
    x, eps_seen = x_T, []
    for i in range(scheduler.n_steps):
        eps_seen.append(model.eps(x, float(scheduler.times[i]), y))
        x = float(scheduler.wx[i]) * x_T
        for j in range(i + 1):
            x = x + float(scheduler.we[i, j]) * eps_seen[j]
    return x


# --- per-class fitting ---------------------------------------------------------------------------------


def fit_per_label(times, states, eps, labels: torch.Tensor, n_steps: int, search: bool, n_iter: int = 30,
                  fit_mode: str = "teacher", model=None, paths: dict | None = None) -> dict:
    """{label: OLSSScheduler}, each fitted on the teacher runs (columns of states/eps) with that label.

    ``fit_mode="closed_loop"`` (the referee's diagnostic, needs ``model``) fits the coefficients on the sampler's
    own predictions (:func:`fit_coefficients`); ``paths`` ({label: path}) reuses already searched paths instead of
    searching again (the search does not depend on ``fit_mode``)."""
    out = {}
    for c in torch.unique(labels).tolist():
        rows = labels == c
        if paths is not None:
            out[int(c)] = fit_coefficients(times, states[:, rows], eps[:, rows], paths[int(c)], fit_mode, model, labels[rows])
        else:
            out[int(c)] = fit_olss(times, states[:, rows], eps[:, rows], n_steps, search, n_iter, fit_mode, model,
                                   labels[rows])
    return out


def sample_per_label(model, x_T: torch.Tensor, y: torch.Tensor, schedulers: dict) -> torch.Tensor:
    """Sample every noise with its label's scheduler, all labels in one batch (per-row times and coefficients:
    n network calls for the whole batch, as :func:`olss_sample` per label up to float rounding)."""
    labels = [int(c) for c in y.tolist()]
    missing = sorted(set(labels) - set(schedulers))
    if missing:
        raise ValueError(f"no scheduler was fitted for labels {missing}")
    n = {schedulers[c].n_steps for c in set(labels)}
    if len(n) != 1:
        raise ValueError(f"the schedulers have different step counts {sorted(n)}")
    n = n.pop()
    times = torch.from_numpy(np.stack([schedulers[c].times for c in labels]))  # [B, n] float64
    wx = torch.from_numpy(np.stack([schedulers[c].wx for c in labels])).to(x_T.dtype)  # [B, n]
    we = torch.from_numpy(np.stack([schedulers[c].we for c in labels])).to(x_T.dtype)  # [B, n, n]
    x, eps_seen = x_T, []
    for i in range(n):
        eps_seen.append(model.eps(x, times[:, i], y))
        x = wx[:, i : i + 1] * x_T
        for j in range(i + 1):
            x = x + we[:, i, j : j + 1] * eps_seen[j]
    return x


# --- the experiment: one seed = one fit bank + one disjoint evaluation bank ---------------------------


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error over all samples and pixels (float64)."""
    return float(((a.double() - b.double()) ** 2).mean())


def run_seed(model, seed: int, fit_sizes=(9, 32), steps=(5, 10), n_eval: int = 256, n_teacher: int = 100,
             n_iter: int = 30, with_fd: bool = False, t_start: float = 1.0, closed_loop_steps=None,
             closed_loop_fit_sizes=(32,)) -> dict:
    """All methods on one seed's noise bank; returns {metric name: value} (names without the seed).

    The fit bank gives ``max(fit_sizes)`` teacher runs per label (nested: M = 9 uses the first 9 of each
    label); every method is evaluated on the same ``n_eval`` held-out noises and labels, as MSE to the
    teacher's endpoint from the same x_T (and FD32 to the train split when ``with_fd``).

    For n in ``closed_loop_steps`` (default: all ``steps``) and M in ``closed_loop_fit_sizes`` the coefficients of
    OLSS-P and OLSS are also fitted closed-loop on the same paths (the referee's diagnostic, not the official code;
    :func:`fit_coefficients`), recorded as ``steps{n}.M{m}.{olss_p,olss}_closed_loop.*``.
    """
    closed_loop_steps = steps if closed_loop_steps is None else closed_loop_steps
    bank = NoiseBank(seed, dtype=torch.float64)
    n_classes = bank.n_classes
    x_fit, y_fit = bank.fit(n_classes * max(fit_sizes))
    x_ev, y_ev = bank.evaluation(n_eval)
    out = {"disjoint_banks": bank.check_disjoint(len(x_fit), n_eval)}
    with torch.no_grad():
        times, states, eps = record_teacher(model, x_fit, y_fit, n_teacher, t_start)
        teacher_end = ddim(model, x_ev, teacher_grid(n_teacher, t_start), y_ev)
        if with_fd:
            out["teacher.fd"] = metrics.fd_to_train(teacher_end)
        baselines = {
            "ddim": lambda n: ddim(model, x_ev, time_grid(n, "uniform_t", t_start=t_start), y_ev),
            "dpmpp2m_uniform": lambda n: dpm_solver_pp_2m(model, x_ev, time_grid(n, "uniform_t", t_start=t_start), y_ev),
            "dpmpp2m_logsnr": lambda n: dpm_solver_pp_2m(model, x_ev, time_grid(n, "logsnr", t_start=t_start), y_ev),
        }
        for n in steps:
            for name, fn in baselines.items():
                model.reset_nfe()
                xs = fn(n)
                out[f"steps{n}.{name}.nfe"] = model.reset_nfe()
                out[f"steps{n}.{name}.mse"] = mse(xs, teacher_end)
                if with_fd:
                    out[f"steps{n}.{name}.fd"] = metrics.fd_to_train(xs)
            for m in fit_sizes:
                idx = torch.arange(n_classes * m)  # first m runs of every label (labels cycle)
                for name, search in (("olss_p", False), ("olss", True)):
                    sched = fit_per_label(times, states[:, idx], eps[:, idx], y_fit[idx], n, search, n_iter)
                    model.reset_nfe()
                    xs = sample_per_label(model, x_ev, y_ev, sched)
                    key = f"steps{n}.M{m}.{name}"
                    out[f"{key}.nfe"] = model.reset_nfe()
                    out[f"{key}.mse"] = mse(xs, teacher_end)
                    if m == min(fit_sizes):  # generalisation gap of the few-shot fit: the same metric on its own fit noises
                        out[f"{key}.fit_mse"] = mse(sample_per_label(model, x_fit[idx], y_fit[idx], sched), states[-1, idx])
                    out[f"{key}.mean_path_end"] = float(np.mean([s.path[-1] for s in sched.values()]))
                    # what the teacher-basis regression promises for the endpoint (its last step's residual)
                    out[f"{key}.lsq_final_residual"] = float(np.mean([s.fit_mse[-1] for s in sched.values()]))
                    if with_fd:
                        out[f"{key}.fd"] = metrics.fd_to_train(xs)
                    if name == "olss_p":  # least-squares optimality against DDIM's own coefficients
                        gaps = []
                        for c, s in sched.items():
                            rows = y_fit[idx] == c
                            wx, we = ddim_coefficients(times[s.path + [n_teacher]], model.schedule)
                            ddim_res = apply_coefficients(states[:, idx][:, rows], eps[:, idx][:, rows], s.path, wx, we)
                            gaps.append(float(np.max(s.fit_mse - ddim_res)))
                        out[f"{key}.lsq_minus_ddim_max"] = max(gaps)
                    if n in closed_loop_steps and m in closed_loop_fit_sizes:
                        paths = {c: s.path for c, s in sched.items()}
                        sched_cl = fit_per_label(times, states[:, idx], eps[:, idx], y_fit[idx], n, search, n_iter,
                                                 fit_mode="closed_loop", model=model, paths=paths)
                        model.reset_nfe()
                        xs = sample_per_label(model, x_ev, y_ev, sched_cl)
                        key_cl = f"{key}_closed_loop"
                        out[f"{key_cl}.nfe"] = model.reset_nfe()
                        out[f"{key_cl}.mse"] = mse(xs, teacher_end)
                        # in-sample rollout endpoint error (= the last step's closed-loop residual)
                        out[f"{key_cl}.fit_mse"] = float(np.mean([s.fit_mse[-1] for s in sched_cl.values()]))
                        if with_fd:
                            out[f"{key_cl}.fd"] = metrics.fd_to_train(xs)
    return out


def run_experiment(model, seeds, settings: dict, progress: bool = False, **kwargs) -> dict:
    """{f"{setting}.{metric}": [value per seed]} for every setting ({name: t_start}) and seed (see :func:`run_seed`)."""
    from tqdm.auto import tqdm

    out: dict = {}
    jobs = [(name, t0, seed) for name, t0 in settings.items() for seed in seeds]
    for name, t0, seed in tqdm(jobs, disable=not progress, desc="settings x seeds"):
        for key, value in run_seed(model, seed, t_start=t0, **kwargs).items():
            out.setdefault(f"{name}.{key}", []).append(value)
    return out
