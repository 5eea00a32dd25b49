"""A small MIP/LP runner on ``scipy.optimize.milp`` (HiGHS): exact optima for labels and baselines.

Problems are stated in the form scipy uses::

    minimise    c @ x
    subject to  lb_A <= A @ x <= ub_A           (any number of LinearConstraint blocks)
                lb   <=     x <= ub              (bounds)
                x_j integer where integrality[j] == 1

:func:`solve_milp` returns a :class:`MIPResult` (objective, solution, status, wall time, relative MIP
gap, dual bound) and raises a clear error when HiGHS cannot return an optimum:

- :class:`InfeasibleError` when the problem has no feasible point;
- :class:`UnboundedError` when the objective is unbounded below;
- :class:`TimeLimitError` when the time (or node) limit stops the search first; the best solution found
  so far, if any, is attached as ``error.result``.

:func:`solve_lp` is the same call with every variable continuous (the LP that remains once a learned
model has fixed the binaries). Branch and bound is HiGHS's; nothing here branches on its own.
``mip_rel_gap=0`` (the default here, unlike HiGHS's 1e-4) asks for a proven optimum, which labels need.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

__all__ = ["MIPResult", "MIPError", "InfeasibleError", "UnboundedError", "TimeLimitError", "solve_milp",
           "solve_lp"]

# scipy.optimize.milp status codes (scipy >= 1.9)
_OPTIMAL, _LIMIT, _INFEASIBLE, _UNBOUNDED, _OTHER = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class MIPResult:
    """The outcome of one solve.

    ``objective`` is ``c @ x`` at the returned ``x``; ``mip_gap`` is HiGHS's relative gap between it and
    the dual bound (0 for an LP or a proven optimum); ``wall_time`` is the wall-clock time of the
    ``scipy.optimize.milp`` call, which includes SciPy's conversion of the problem for HiGHS (what a
    caller pays) but not the caller's own construction of ``c``, the constraints and the bounds.
    """

    objective: float
    x: np.ndarray
    status: str
    wall_time: float
    mip_gap: float
    dual_bound: float


class MIPError(RuntimeError):
    """HiGHS returned no optimal solution; ``result`` holds what it returned (may be None)."""

    def __init__(self, message: str, result: MIPResult | None = None):
        super().__init__(message)
        self.result = result


class InfeasibleError(MIPError):
    """The problem has no feasible point."""


class UnboundedError(MIPError):
    """The objective is unbounded below.

    Also raised when HiGHS reports "unbounded or infeasible" without deciding which (it can do so when
    presolve detects a dual infeasibility); re-solve with ``presolve=False`` to separate the two.
    """


class TimeLimitError(MIPError):
    """The time or node limit stopped HiGHS before it proved optimality."""


def _as_constraints(constraints) -> list[LinearConstraint]:
    if constraints is None:
        return []
    if isinstance(constraints, LinearConstraint):
        return [constraints]
    out = []
    for item in constraints:
        if isinstance(item, LinearConstraint):
            out.append(item)
        elif isinstance(item, tuple) and len(item) == 3:
            out.append(LinearConstraint(*item))
        else:
            raise ValueError("each constraint must be a scipy LinearConstraint or a tuple (A, lb, ub), "
                             f"got {type(item).__name__}")
    return out


def solve_milp(c, constraints=None, *, integrality=None, bounds=None, time_limit: float | None = None,
               mip_rel_gap: float = 0.0, node_limit: int | None = None, presolve: bool = True) -> MIPResult:
    """Minimise ``c @ x`` over the constraints with HiGHS's branch and cut; raise unless optimal.

    Parameters
    ----------
    c : (n,) array of objective coefficients.
    constraints : LinearConstraint, tuple ``(A, lb, ub)`` or a list of them (``A`` dense or sparse).
    integrality : (n,) array, 1 for an integer variable and 0 for a continuous one (default: all 0).
    bounds : ``scipy.optimize.Bounds`` or a pair ``(lb, ub)`` of arrays/scalars (default: ``x >= 0``).
    time_limit : seconds; ``None`` for no limit.
    mip_rel_gap : relative gap at which HiGHS may stop (default 0: a proven optimum).
    node_limit : branch-and-bound node limit; ``None`` for no limit.
    presolve : HiGHS presolve on (default) or off.
    """
    c = np.asarray(c, dtype=float)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"c must be a non-empty 1-D array, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("c contains NaN or infinite values")
    n = c.size
    if integrality is None:
        integrality = np.zeros(n)
    integrality = np.asarray(integrality)
    if integrality.shape != (n,):
        raise ValueError(f"integrality must have shape ({n},), got {integrality.shape}")
    if bounds is None:
        bounds = Bounds(np.zeros(n), np.full(n, np.inf))
    elif not isinstance(bounds, Bounds):
        lower, upper = bounds
        bounds = Bounds(np.broadcast_to(np.asarray(lower, float), (n,)), np.broadcast_to(np.asarray(upper, float), (n,)))
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be positive seconds or None, got {time_limit!r}")
    if not 0.0 <= mip_rel_gap < 1.0:
        raise ValueError(f"mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
    options = {"presolve": bool(presolve), "mip_rel_gap": float(mip_rel_gap), "disp": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    if node_limit is not None:
        if int(node_limit) < 1:
            raise ValueError(f"node_limit must be a positive integer, got {node_limit!r}")
        options["node_limit"] = int(node_limit)

    start = time.perf_counter()
    res = milp(c, constraints=_as_constraints(constraints), integrality=integrality, bounds=bounds, options=options)
    wall = time.perf_counter() - start

    x = None if res.x is None else np.asarray(res.x, dtype=float)
    objective = math.nan if res.fun is None else float(res.fun)
    is_mip = bool(np.any(integrality))
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0) if is_mip else 0.0
    dual = getattr(res, "mip_dual_bound", None) if is_mip else objective
    dual = objective if dual is None else float(dual)
    status_name = {_OPTIMAL: "optimal", _LIMIT: "limit", _INFEASIBLE: "infeasible", _UNBOUNDED: "unbounded"}.get(
        res.status, "other")
    result = MIPResult(objective=objective, x=x, status=status_name, wall_time=wall, mip_gap=gap, dual_bound=dual)
    if res.status == _OPTIMAL:
        return result
    if res.status == _INFEASIBLE:
        raise InfeasibleError(f"HiGHS: the problem is infeasible ({res.message})", result)
    if res.status == _UNBOUNDED or "unbounded or infeasible" in str(res.message).lower():
        raise UnboundedError(f"HiGHS: the problem is unbounded ({res.message})", result)
    if res.status == _LIMIT or (res.status == _OTHER and "limit" in str(res.message).lower()):
        # scipy maps HiGHS's time and iteration limits to 1; a node limit surfaces as an unrecognised
        # HiGHS status ("Solution limit reached"), which is still a limit, not a failure
        found = "no feasible solution found" if x is None else f"best objective {objective:.6g}, gap {gap:.3g}"
        raise TimeLimitError(f"HiGHS stopped at its time/node limit before proving optimality: {found} "
                             f"({res.message})", result)
    raise MIPError(f"HiGHS returned status {res.status}: {res.message}", result)


def solve_lp(c, constraints=None, *, bounds=None, time_limit: float | None = None, presolve: bool = True) -> MIPResult:
    """Minimise ``c @ x`` with every variable continuous (same engine, same errors as :func:`solve_milp`)."""
    return solve_milp(c, constraints, integrality=None, bounds=bounds, time_limit=time_limit, presolve=presolve)
