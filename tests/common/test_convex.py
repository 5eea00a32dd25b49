"""common/convex.py: reference optima agree with closed forms and with HiGHS; failures are loud."""

import cvxpy as cp
import numpy as np
import pytest
from scipy.optimize import linprog

from common.convex import ConvexSolveError, solve


def test_least_squares_matches_lstsq():
    rng = np.random.default_rng(0)
    A, b = rng.normal(size=(20, 4)), rng.normal(size=20)
    x = cp.Variable(4)
    res = solve(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b))))
    x_ref, *_ = np.linalg.lstsq(A, b, rcond=None)
    assert res.exact and res.solver == "CLARABEL"
    assert np.allclose(x.value, x_ref, atol=1e-7)
    assert res.value == pytest.approx(np.sum((A @ x_ref - b) ** 2), rel=1e-7)


def test_l1_regression_matches_highs_lp():
    """min ||Ax - b||_1 as an LP in (x, t) solved by scipy's HiGHS: same optimum."""
    rng = np.random.default_rng(1)
    n, d = 30, 3
    A, b = rng.normal(size=(n, d)), rng.normal(size=n)
    x = cp.Variable(d)
    res = solve(cp.Problem(cp.Minimize(cp.norm1(A @ x - b))))
    c = np.r_[np.zeros(d), np.ones(n)]
    A_ub = np.block([[A, -np.eye(n)], [-A, -np.eye(n)]])
    lp = linprog(c, A_ub=A_ub, b_ub=np.r_[b, -b], bounds=[(None, None)] * d + [(0, None)] * n, method="highs")
    assert res.value == pytest.approx(lp.fun, rel=1e-6)


def test_fallback_and_errors():
    x = cp.Variable()
    res = solve(cp.Problem(cp.Minimize(cp.square(x - 2))), solvers=("NO_SUCH_SOLVER", "SCS"))
    assert res.solver == "SCS" and res.attempts[0] == "NO_SUCH_SOLVER: not installed"
    assert res.value == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConvexSolveError, match="infeasible"):
        solve(cp.Problem(cp.Minimize(x), [x >= 1, x <= 0]))
    with pytest.raises(ValueError, match="not DCP"):
        solve(cp.Problem(cp.Maximize(cp.square(x)), [x <= 1]))
