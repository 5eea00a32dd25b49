"""common.mip: known optima, error paths, and a cross-check against HiGHS called directly through highspy.

The independent checks are the enumerations (knapsacks, a lot-sizing instance). The highspy cross-check
runs the same HiGHS engine, so it tests this wrapper's translation of the problem (constraints, bounds,
integrality, objective sign), not the solver itself.
"""

import itertools

import numpy as np
import pytest
from scipy import sparse

from common.mip import InfeasibleError, MIPResult, TimeLimitError, UnboundedError, solve_lp, solve_milp


def _knapsack(values, weights, capacity):
    n = len(values)
    return dict(c=-np.asarray(values, float), constraints=[(np.asarray([weights], float), -np.inf, capacity)],
                integrality=np.ones(n), bounds=(0, 1))


def test_knapsack_known_optimum():
    # values 10, 13, 7, 8; weights 5, 6, 3, 4; capacity 10: best is items 2 and 4 (13 + 8 = 21, weight 10)
    res = solve_milp(**_knapsack([10, 13, 7, 8], [5, 6, 3, 4], 10))
    assert isinstance(res, MIPResult)
    assert res.status == "optimal"
    assert res.objective == pytest.approx(-21)
    np.testing.assert_allclose(res.x, [0, 1, 0, 1], atol=1e-9)
    assert res.mip_gap == pytest.approx(0, abs=1e-9)
    assert res.wall_time > 0


def test_knapsack_matches_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(5):
        v, w = rng.integers(1, 30, 10), rng.integers(1, 20, 10)
        cap = int(w.sum() // 2)
        best = max(v @ np.array(s) for s in itertools.product([0, 1], repeat=10) if w @ np.array(s) <= cap)
        assert solve_milp(**_knapsack(v, w, cap)).objective == pytest.approx(-best)


def _tiny_lot_sizing():
    """T = 3, d = (2, 3, 4), c = 5 per period, f = 10, h = 1, p = 0; variables [x, s, y]."""
    T, d, c, f, h = 3, np.array([2.0, 3.0, 4.0]), 5.0, 10.0, 1.0
    A_bal = np.zeros((T, 3 * T))
    for t in range(T):
        A_bal[t, t] = 1.0
        A_bal[t, T + t] = -1.0
        if t:
            A_bal[t, T + t - 1] = 1.0
    A_link = np.hstack([np.eye(T), np.zeros((T, T)), -c * np.eye(T)])
    cost = np.concatenate([np.zeros(T), np.full(T, h), np.full(T, f)])
    ub = np.concatenate([np.full(2 * T, np.inf), np.ones(T)])
    return dict(c=cost, constraints=[(sparse.csr_matrix(A_bal), d, d), (A_link, -np.inf, 0.0)],
                integrality=np.concatenate([np.zeros(2 * T), np.ones(T)]), bounds=(np.zeros(3 * T), ub))


def test_lot_sizing_known_optimum():
    # total demand 9 > one period's capacity 5, so two setups are needed; period 1 must produce. Setups
    # (1, 3): make 5, hold 3 into period 2, make 4 in period 3 -> 10 + 10 + 3 = 23. Setups (1, 2) hold 7 (27).
    # Checked against enumerating y with the LP as well.
    kw = _tiny_lot_sizing()
    res = solve_milp(**kw)
    best = np.inf
    for y in itertools.product([0, 1], repeat=3):
        y = np.array(y, float)
        fixed = dict(kw)
        fixed["bounds"] = (np.zeros(9), np.concatenate([np.full(6, np.inf), y]))
        fixed["integrality"] = np.zeros(9)
        lb = np.concatenate([np.zeros(6), y])
        try:
            lp = solve_lp(kw["c"], kw["constraints"], bounds=(lb, fixed["bounds"][1]))
        except InfeasibleError:
            continue
        best = min(best, lp.objective)
    assert res.objective == pytest.approx(best)
    assert res.objective == pytest.approx(23.0)
    np.testing.assert_allclose(res.x[6:], [1, 0, 1], atol=1e-9)


def test_lp_relaxation_is_a_lower_bound():
    kw = _tiny_lot_sizing()
    lp = solve_lp(kw["c"], kw["constraints"], bounds=kw["bounds"])
    assert lp.objective <= solve_milp(**kw).objective + 1e-9
    assert lp.mip_gap == 0.0


def test_infeasible_raises():
    with pytest.raises(InfeasibleError, match="infeasible"):
        solve_lp([1.0], [(np.array([[1.0]]), -np.inf, -1.0)])
    with pytest.raises(InfeasibleError):
        solve_milp([1.0, 1.0], [(np.array([[2.0, 2.0]]), 3.0, 3.0)], integrality=[1, 1])   # 2(a+b) = 3


def test_unbounded_raises():
    with pytest.raises(UnboundedError):
        solve_lp([-1.0])
    with pytest.raises(UnboundedError):
        solve_milp([-1.0], integrality=[1])


def _market_split(seed=0, m=3, n=30):
    """A market-split instance (Cornuéjols-Dawande): notoriously hard for branch and bound."""
    rng = np.random.default_rng(seed)
    A = rng.integers(0, 100, (m, n)).astype(float)
    b = np.floor(A.sum(1) / 2)
    c = np.concatenate([np.zeros(n), np.ones(2 * m)])
    A_eq = np.hstack([A, np.eye(m), -np.eye(m)])
    return dict(c=c, constraints=[(A_eq, b, b)], integrality=np.concatenate([np.ones(n), np.zeros(2 * m)]),
                bounds=(0, np.concatenate([np.ones(n), np.full(2 * m, np.inf)])))


@pytest.mark.parametrize("limit", [dict(time_limit=0.02), dict(node_limit=1)])
def test_limits_raise_with_best_solution_attached(limit):
    with pytest.raises(TimeLimitError, match="limit") as info:
        solve_milp(**_market_split(), **limit)
    assert info.value.result is not None and info.value.result.status != "optimal"


def test_bad_arguments():
    with pytest.raises(ValueError, match="c must"):
        solve_milp([])
    with pytest.raises(ValueError, match="integrality"):
        solve_milp([1.0, 2.0], integrality=[1])
    with pytest.raises(ValueError, match="time_limit"):
        solve_milp([1.0], time_limit=0)
    with pytest.raises(ValueError, match="constraint"):
        solve_milp([1.0], constraints=["x <= 1"])


def _highspy_solve(c, A, lower, upper, integrality, lb, ub):
    highspy = pytest.importorskip("highspy")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    n = len(c)
    for j in range(n):
        h.addVar(float(lb[j]), float(ub[j]))
        h.changeColCost(j, float(c[j]))
        if integrality[j]:
            h.changeColIntegrality(j, highspy.HighsVarType.kInteger)
    for row, lo, hi in zip(A, lower, upper, strict=True):
        idx = np.flatnonzero(row)
        h.addRow(float(lo), float(hi), len(idx), idx.astype(np.int32), row[idx].astype(float))
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getInfo().objective_function_value


def test_cross_check_against_highspy_on_random_mips():
    rng = np.random.default_rng(7)
    for _ in range(8):
        n, m = 8, 5
        c = rng.normal(size=n)
        A = rng.integers(-5, 6, (m, n)).astype(float)
        upper = rng.integers(5, 20, m).astype(float)
        lower = np.full(m, -np.inf)
        integrality = rng.integers(0, 2, n)
        lb, ub = np.zeros(n), np.full(n, 4.0)
        ours = solve_milp(c, [(A, lower, upper)], integrality=integrality, bounds=(lb, ub)).objective
        theirs = _highspy_solve(c, A, lower, upper, integrality, lb, ub)
        assert ours == pytest.approx(theirs, abs=1e-7)
