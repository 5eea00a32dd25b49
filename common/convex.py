"""Reference optima of convex programs, with cvxpy (Clarabel first, SCS as the fallback).

Papers state convex problems in cvxpy and call :func:`solve`; it returns the optimum, the solver that
reached it and how long it took, and raises :class:`ConvexSolveError` (never returns a silent
``None``) when no solver certifies an optimum. ``optimal_inaccurate`` is accepted only when the caller
allows it, and is then visible in the result, so a reference value is never quietly approximate.

    x = cp.Variable(d)
    ref = solve(cp.Problem(cp.Minimize(cp.norm1(A @ x - b))))
    ref.value, ref.solver, ref.seconds, x.value
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cvxpy as cp

DEFAULT_SOLVERS = ("CLARABEL", "SCS")


class ConvexSolveError(RuntimeError):
    """No solver certified an optimum (infeasible, unbounded, or numerical failure)."""


@dataclass(frozen=True)
class ConvexResult:
    value: float  # the optimal objective value
    status: str  # cvxpy's status string ("optimal", or "optimal_inaccurate" when allowed)
    solver: str  # the solver that produced the value
    seconds: float  # wall-clock time of the successful solve (machine-dependent: record as volatile)
    attempts: tuple[str, ...]  # "SOLVER: status" for every solver tried, in order

    @property
    def exact(self) -> bool:
        return self.status == cp.OPTIMAL


def solve(problem: cp.Problem, solvers=DEFAULT_SOLVERS, *, allow_inaccurate: bool = False,
          **solver_options) -> ConvexResult:
    """Solve ``problem`` with the first of ``solvers`` that certifies an optimum.

    ``problem`` must be DCP (cvxpy's disciplined convex programming rules); otherwise this raises
    ``ValueError`` before any solver runs. Options are passed to every solver (e.g. tolerances).
    Raises :class:`ConvexSolveError` listing each solver's status when none succeeds.
    """
    if not isinstance(problem, cp.Problem):
        raise TypeError(f"expected a cvxpy Problem, got {type(problem).__name__}")
    if not problem.is_dcp():
        raise ValueError("the problem is not DCP (cvxpy cannot certify it convex): reformulate it")
    if isinstance(solvers, str):
        solvers = (solvers,)
    installed = set(cp.installed_solvers())
    accepted = {cp.OPTIMAL} | ({cp.OPTIMAL_INACCURATE} if allow_inaccurate else set())
    attempts: list[str] = []
    for name in solvers:
        if name not in installed:
            attempts.append(f"{name}: not installed")
            continue
        start = time.perf_counter()
        try:
            problem.solve(solver=name, **solver_options)
        except cp.error.SolverError as exc:
            attempts.append(f"{name}: error ({exc})")
            continue
        seconds = time.perf_counter() - start
        attempts.append(f"{name}: {problem.status}")
        if problem.status in accepted:
            return ConvexResult(float(problem.value), problem.status, name, seconds, tuple(attempts))
    raise ConvexSolveError("no solver certified an optimum: " + "; ".join(attempts))
