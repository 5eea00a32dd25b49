"""The single-item capacitated lot-sizing problem (CLSP): instances, the exact MIP, repair and the LP.

Cooper, Choi and Büyüktahtakın (2024), "Toward TransfORmers: Revolutionizing the Solution of Mixed
Integer Programs with Transformers" (arXiv 2402.13380), Section 2 (the CLSP), following Yilmaz and
Büyüktahtakın (2023, LSTM-Opt). Over ``T`` periods with demand ``d_t``, capacity ``c_t``, unit production
cost ``p_t``, unit holding cost ``h_t`` and setup cost ``f_t``:

    min   sum_t  p_t x_t + h_t s_t + f_t y_t                                        (1)
    s.t.  s_{t-1} + x_t - s_t = d_t          t = 1..T,  s_0 = 0                      (2)
          x_t <= c_t y_t                     t = 1..T                                (3)
          x_t, s_t >= 0,  y_t in {0, 1}                                              (4)

``y_t`` says whether the machine is set up (produces) in period ``t``. Once ``y`` is fixed, (1)-(4) is an
LP in ``(x, s)``: the learned models predict ``y`` and an LP finishes the solution, so the MIP's
branch and bound is replaced by one forward pass and one LP.

A setup vector ``y`` admits a feasible plan iff cumulative open capacity covers cumulative demand at
every period (stock can be carried forward but not backward, and ``s_0 = 0``)::

    sum_{k<=t} c_k y_k  >=  sum_{k<=t} d_k     for every t.                          (5)

:func:`repair_setups` restores (5) when a prediction violates it (the paper's post-processing step).

Instances are procedural (Atamtürk and Muñoz (2004) style; the exact parameter grid of the paper was
not available to us): integer demands, per-period capacities around ``kappa`` times the mean demand,
setup costs around ``setup_ratio`` times the holding cost. Everything takes an explicit ``rng``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from common.mip import MIPResult, solve_lp, solve_milp

__all__ = ["dp_optimum", "Instances", "generate_instances", "is_feasible", "solve_clsp_mip", "solve_fixed_setup_lp",
           "repair_setups", "plan_cost", "features", "N_FEATURES"]

DEMAND_RANGE = (10, 100)   # integer demands, uniform
MEAN_DEMAND = 0.5 * (DEMAND_RANGE[0] + DEMAND_RANGE[1])


@dataclass
class Instances:
    """A batch of ``n`` CLSP instances over ``T`` periods; every array has shape ``(n, T)``."""

    demand: np.ndarray
    capacity: np.ndarray
    production_cost: np.ndarray
    holding_cost: np.ndarray
    setup_cost: np.ndarray

    def __post_init__(self):
        shapes = {a.shape for a in self.arrays()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"all instance arrays must share one (n, T) shape, got {sorted(shapes)}")

    def arrays(self):
        return (self.demand, self.capacity, self.production_cost, self.holding_cost, self.setup_cost)

    @property
    def n(self) -> int:
        return self.demand.shape[0]

    @property
    def T(self) -> int:
        return self.demand.shape[1]

    def __getitem__(self, index) -> Instances:
        return Instances(*(np.atleast_2d(a[index]) for a in self.arrays()))

    def to_dict(self, prefix: str = "") -> dict:
        names = ("demand", "capacity", "production_cost", "holding_cost", "setup_cost")
        return {prefix + k: v for k, v in zip(names, self.arrays(), strict=True)}

    @classmethod
    def from_dict(cls, data, prefix: str = "") -> Instances:
        names = ("demand", "capacity", "production_cost", "holding_cost", "setup_cost")
        return cls(*(np.asarray(data[prefix + k], dtype=float) for k in names))


def is_feasible(demand, capacity, setups) -> np.ndarray:
    """Condition (5) for each row: does the setup vector leave enough cumulative capacity? Returns bools."""
    demand, capacity, setups = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (demand, capacity, setups))
    slack = np.cumsum(capacity * setups, axis=1) - np.cumsum(demand, axis=1)
    return np.all(slack >= -1e-9, axis=1)


def generate_instances(n: int, T: int, rng: np.random.Generator, *, kappa=(1.5, 2.0, 3.0),
                       setup_ratio=(200.0, 1000.0)) -> Instances:
    """``n`` feasible random CLSP instances over ``T`` periods (rejection of infeasible draws).

    Per instance: a capacity factor ``kappa`` and a setup/holding ratio are drawn from the grids; then per
    period ``d_t ~ U{10..100}``, ``c_t = round(kappa * mean_d * U[0.8, 1.2])``, ``h_t, p_t ~ U[0.8, 1.2]``,
    ``f_t = ratio * U[0.8, 1.2]``. Instances violating (5) with every period open are redrawn.
    """
    if n < 1 or T < 1:
        raise ValueError(f"n and T must be positive, got n={n}, T={T}")
    kappa, setup_ratio = np.asarray(kappa, float), np.asarray(setup_ratio, float)
    if np.any(kappa <= 0) or np.any(setup_ratio <= 0):
        raise ValueError("kappa and setup_ratio must be positive")
    out = []
    while sum(len(b[0]) for b in out) < n:
        m = n
        k = rng.choice(kappa, size=(m, 1))
        r = rng.choice(setup_ratio, size=(m, 1))
        d = rng.integers(DEMAND_RANGE[0], DEMAND_RANGE[1] + 1, size=(m, T)).astype(float)
        c = np.round(k * MEAN_DEMAND * rng.uniform(0.8, 1.2, size=(m, T)))
        h = rng.uniform(0.8, 1.2, size=(m, T))
        p = rng.uniform(0.8, 1.2, size=(m, T))
        f = r * rng.uniform(0.8, 1.2, size=(m, T))
        ok = is_feasible(d, c, np.ones_like(d))
        out.append((d[ok], c[ok], p[ok], h[ok], f[ok]))
    stacked = [np.concatenate([b[i] for b in out])[:n] for i in range(5)]
    return Instances(*stacked)


def _balance_constraints(T: int, demand: np.ndarray, n_vars: int, x_col: int, s_col: int):
    """Rows of (2): ``x_t + s_{t-1} - s_t = d_t`` over a variable vector with ``x``/``s`` blocks at the given columns."""
    rows = np.arange(T)
    A = sparse.lil_matrix((T, n_vars))
    A[rows, x_col + rows] = 1.0
    A[rows, s_col + rows] = -1.0
    A[rows[1:], s_col + rows[:-1]] = 1.0
    return A.tocsr(), demand, demand


def solve_clsp_mip(inst: Instances, index: int = 0, *, time_limit: float | None = None,
                   mip_rel_gap: float = 0.0) -> tuple[MIPResult, np.ndarray]:
    """Solve (1)-(4) for one instance with HiGHS; returns the result and ``y``.

    Exactly by default (``mip_rel_gap = 0``, a proven optimum); a positive ``mip_rel_gap`` lets HiGHS stop once
    its incumbent is proven within that relative gap (the timing of a MIP at the pipeline's solution quality).
    Variables are ``[x (T), s (T), y (T)]``.
    """
    d, c, p, h, f = (a[index] for a in inst.arrays())
    T = inst.T
    n_vars = 3 * T
    cost = np.concatenate([p, h, f])
    balance = _balance_constraints(T, d, n_vars, 0, T)
    link = sparse.hstack([sparse.identity(T), sparse.csr_matrix((T, T)), sparse.diags(-c)]).tocsr()   # (3)
    integrality = np.concatenate([np.zeros(2 * T), np.ones(T)])
    upper = np.concatenate([np.full(2 * T, np.inf), np.ones(T)])
    result = solve_milp(cost, [balance, (link, -np.inf, 0.0)], integrality=integrality,
                        bounds=(np.zeros(n_vars), upper), time_limit=time_limit, mip_rel_gap=mip_rel_gap)
    y = np.round(result.x[2 * T:]).astype(np.int8)
    return result, y


def dp_optimum(inst: Instances, index: int = 0) -> float:
    """The optimum of (1)-(4) by dynamic programming over the (integer) stock, independent of any solver.

    With integer demands and capacities the LP of a fixed ``y`` has an integral optimal plan, so the optimum
    is reached with integer stocks ``s_t``, and (costs being non-negative) ``s_t`` never exceeds the demand
    still to come, ``R_t = sum_{k>t} d_k``. With ``g_t(s)`` the cheapest cost of periods ``1..t`` ending with
    stock ``s`` (``g_0(0) = 0``):

        g_t(s) = h_t s + min( g_{t-1}(s + d_t),                                   (no setup, x_t = 0)
                              f_t + min_{1 <= x <= c_t} g_{t-1}(s + d_t - x) + p_t x ),  (setup)

    and the optimum is ``g_T(0)``. The inner minimum is a sliding-window minimum of
    ``g_{t-1}(s') - p_t s'`` over ``s' in [s + d_t - c_t, s + d_t - 1]``, plus ``p_t (s + d_t)``.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    d, c, p, h, f = (a[index] for a in inst.arrays())
    if not (np.allclose(d, np.round(d)) and np.allclose(c, np.round(c))):
        raise ValueError("dp_optimum needs integer demands and capacities")
    d, c = np.round(d).astype(int), np.round(c).astype(int)
    remaining = np.concatenate([np.cumsum(d[::-1])[::-1][1:], [0]])
    g = np.zeros(1)                                             # g_0: only s_0 = 0
    for t in range(inst.T):
        s = np.arange(remaining[t] + 1)
        prev = s + d[t]                                         # s_{t-1} with x_t = 0
        idle = np.where(prev < len(g), g[np.minimum(prev, len(g) - 1)], np.inf)
        w = g - p[t] * np.arange(len(g))
        # pad so that the window of s covers w's indices s + d_t - c_t .. s + d_t - 1 (inf outside 0..len(g)-1)
        padded = np.concatenate([np.full(c[t], np.inf), w, np.full(len(s) + d[t] + 1, np.inf)])
        window = sliding_window_view(padded, c[t])[d[t]: d[t] + len(s)].min(axis=1)
        produce = window + p[t] * (s + d[t]) + f[t]
        g = np.minimum(idle, produce) + h[t] * s
    return float(g[0])


def solve_fixed_setup_lp(inst: Instances, index: int, setups) -> MIPResult:
    """The LP left once ``y`` is fixed: (1)-(3) in ``(x, s)`` with ``0 <= x_t <= c_t y_t``.

    The returned objective includes the fixed setup costs ``sum_t f_t y_t``. Raises
    :class:`common.mip.InfeasibleError` when ``y`` violates (5).
    """
    d, c, p, h, f = (a[index] for a in inst.arrays())
    T = inst.T
    y = np.asarray(setups, dtype=float)
    if y.shape != (T,) or not np.all((y == 0) | (y == 1)):
        raise ValueError(f"setups must be a 0/1 vector of length {T}")
    balance = _balance_constraints(T, d, 2 * T, 0, T)
    upper = np.concatenate([c * y, np.full(T, np.inf)])
    result = solve_lp(np.concatenate([p, h]), [balance], bounds=(np.zeros(2 * T), upper))
    fixed = float(f @ y)
    return MIPResult(objective=result.objective + fixed, x=result.x, status=result.status,
                     wall_time=result.wall_time, mip_gap=0.0, dual_bound=result.dual_bound + fixed)


def repair_setups(inst: Instances, index: int, setups) -> tuple[np.ndarray, int]:
    """Post-processing: open setups until (5) holds; returns the repaired ``y`` and the number opened.

    Repeatedly find the first period ``t*`` whose cumulative demand exceeds the cumulative open capacity
    (shortage ``q``) and open the closed period ``j <= t*`` that covers it most cheaply by the estimate
    ``f_j + min(q, c_j) * sum_{k=j}^{t*-1} h_k`` (setup plus the holding cost of carrying the missing
    units to ``t*``). Each pass opens one period, so at most ``T`` passes; raises ``ValueError`` when even
    all periods open cannot cover the demand (an infeasible instance).
    """
    d, c, _, h, f = (a[index] for a in inst.arrays())
    y = np.asarray(setups, dtype=np.int8).copy()
    if y.shape != d.shape:
        raise ValueError(f"setups must have shape {d.shape}, got {y.shape}")
    if not is_feasible(d, c, np.ones_like(d))[0]:
        raise ValueError("the instance is infeasible even with every period open")
    cum_h = np.concatenate([[0.0], np.cumsum(h)])
    opened = 0
    while True:
        slack = np.cumsum(c * y) - np.cumsum(d)
        short = np.flatnonzero(slack < -1e-9)
        if short.size == 0:
            return y, opened
        t = short[0]
        q = -slack[t]
        closed = np.flatnonzero(y[: t + 1] == 0)
        cost = f[closed] + np.minimum(q, c[closed]) * (cum_h[t] - cum_h[closed])
        y[closed[np.argmin(cost)]] = 1
        opened += 1


def plan_cost(inst: Instances, index: int, x, s, y) -> float:
    """Objective (1) of a plan, recomputed from its parts (a check independent of the solver)."""
    d, c, p, h, f = (a[index] for a in inst.arrays())
    return float(p @ x + h @ s + f @ y)


N_FEATURES = 7


def features(inst: Instances) -> np.ndarray:
    """Scale-free per-period features, shape ``(n, T, 7)``, the same input for every model.

    ``d_t / dbar``, ``c_t / dbar``, ``log(f_t / (hbar dbar))``, ``h_t / hbar``, ``p_t / pbar``, the
    all-open cumulative slack ``(sum_{k<=t} c_k - d_k) / (T dbar)`` and the position ``t / T``
    (bars: means over the instance's periods).
    """
    d, c, p, h, f = inst.arrays()
    dbar = d.mean(axis=1, keepdims=True)
    hbar = h.mean(axis=1, keepdims=True)
    pbar = p.mean(axis=1, keepdims=True)
    T = inst.T
    slack = np.cumsum(c - d, axis=1) / (T * dbar)
    pos = np.broadcast_to(np.arange(T) / T, d.shape)
    feats = np.stack([d / dbar, c / dbar, np.log(f / (hbar * dbar)), h / hbar, p / pbar, slack, pos], axis=-1)
    return feats.astype(np.float32)
