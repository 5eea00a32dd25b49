"""Exact answers on small cases and invariants for the model-based methods on robust phase retrieval."""

import numpy as np
import pytest

from papers.model_based_minimization.model_based_minimization import (
    make_phase_retrieval,
    method_rho_bar,
    model_constants,
    moreau_prox,
    objective,
    prox_linear_step,
    prox_point_step,
    run_method,
    step_size_sweep,
    stratified_times,
    subgradient_step,
    theorem_beta,
    theorem_bound_415,
    weak_convexity,
)


@pytest.fixture(scope="module")
def problem():
    return make_phase_retrieval(5, 40, 0.1, rng=np.random.default_rng(0))


def brute_force_1d(f, lo=-6.0, hi=6.0, n=400_001):
    grid = np.linspace(lo, hi, n)
    return grid[np.argmin(f(grid))]


def test_instance_shapes_and_sphere(problem):
    assert problem.A.shape == (40, 5)
    np.testing.assert_allclose(problem.row_norms_sq, 5.0)
    assert problem.corrupted.sum() == 4
    clean = ~problem.corrupted
    np.testing.assert_allclose(problem.b[clean], (problem.A[clean] @ problem.x_star) ** 2)


def test_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        make_phase_retrieval(0, 10, rng=rng)
    with pytest.raises(ValueError):
        make_phase_retrieval(3, 10, 0.6, rng=rng)
    with pytest.raises(ValueError):
        theorem_beta(10, 1.0, 0.0)


def test_subgradient_step_is_model_minimiser():
    a, x, b, beta = np.array([1.0, 2.0]), np.array([0.5, -0.1]), 0.7, 3.0
    u = a @ x
    v = 2 * np.sign(u * u - b) * u * a
    np.testing.assert_allclose(subgradient_step(x, a, b, beta), x - v / beta)


@pytest.mark.parametrize("b,beta", [(0.7, 3.0), (0.7, 300.0), (2.5, 1.0), (0.0, 10.0)])
def test_prox_linear_step_solves_its_subproblem(b, beta):
    a, x = np.array([1.0, 2.0]), np.array([0.5, -0.1])
    u = a @ x
    c, g = u * u - b, 2 * u * a
    y = prox_linear_step(x, a, b, beta)
    # the minimiser lies on the line x + s g (orthogonal components only add to the quadratic)
    s = brute_force_1d(lambda s: np.abs(c + s * (g @ g)) + beta / 2 * s * s * (g @ g), -2, 2)
    np.testing.assert_allclose(y, x + s * g, atol=1e-4)


@pytest.mark.parametrize("b,beta", [(0.7, 3.0), (0.7, 300.0), (2.5, 1.0), (0.0, 10.0), (4.0, 0.5)])
def test_prox_point_step_is_global_minimiser(b, beta):
    a, x = np.array([1.0, 2.0]), np.array([0.5, -0.1])
    na = a @ a
    y = prox_point_step(x, a, b, beta)
    s = brute_force_1d(lambda s: np.abs((a @ x + s * na) ** 2 - b) + beta / 2 * s * s * na, -3, 3)
    def obj(z):
        return abs((a @ z) ** 2 - b) + beta / 2 * np.sum((z - x) ** 2)

    assert obj(y) <= obj(x + s * a) + 1e-9
    # and no random perturbation does better
    rng = np.random.default_rng(1)
    assert all(obj(y) <= obj(y + 1e-3 * rng.standard_normal(2)) + 1e-12 for _ in range(200))


def test_weak_convexity_lower_bound(problem):
    rho = weak_convexity(problem)
    rng = np.random.default_rng(2)
    for _ in range(50):
        x, y = rng.standard_normal(5), rng.standard_normal(5)
        u = problem.A @ x
        v = problem.A.T @ (2 * np.sign(u * u - problem.b) * u) / problem.m
        assert objective(problem, y) >= objective(problem, x) + v @ (y - x) - rho / 2 * np.sum((y - x) ** 2) - 1e-9


def test_prox_linear_model_is_one_sided(problem):
    tau, eta = model_constants(problem, "prox_linear")
    assert eta == 0.0
    rng = np.random.default_rng(3)
    for _ in range(50):
        x, y = rng.standard_normal(5), rng.standard_normal(5)
        u = problem.A @ x
        model = np.mean(np.abs(u * u - problem.b + 2 * u * (problem.A @ (y - x))))
        assert model - objective(problem, y) <= tau / 2 * np.sum((y - x) ** 2) + 1e-9


def test_moreau_prox_optimal_against_perturbations(problem):
    rho_bar = 2 * weak_convexity(problem)
    x = np.random.default_rng(4).standard_normal(5)
    y, err = moreau_prox(problem, x, rho_bar)
    assert err < 1e-3
    def F(z):
        return objective(problem, z) + rho_bar / 2 * np.sum((z - x) ** 2)

    rng = np.random.default_rng(5)
    assert all(F(y) <= F(y + 1e-4 * rng.standard_normal(5)) + 1e-12 for _ in range(500))


def test_moreau_prox_matches_cvxpy_prox_linear_outer_loop(problem):
    """Cross-check: the strongly convex prox subproblem solved by prox-linear outer steps whose convex inner
    problems are solved by cvxpy (Clarabel)."""
    cp = pytest.importorskip("cvxpy")
    rho = weak_convexity(problem)
    rho_bar = 2 * rho
    x = np.random.default_rng(6).standard_normal(5)
    y_ours, _ = moreau_prox(problem, x, rho_bar)
    A, b = problem.A, problem.b
    y = x.copy()
    for _ in range(40):
        u = A @ y
        c, G = u * u - b, 2 * u[:, None] * A
        z = cp.Variable(5)
        obj = cp.sum(cp.abs(c + G @ (z - y))) / problem.m + rho_bar / 2 * cp.sum_squares(z - x) + rho / 2 * cp.sum_squares(z - y)
        cp.Problem(cp.Minimize(obj)).solve(solver="CLARABEL")
        step = np.linalg.norm(z.value - y)
        y = z.value
        if step < 1e-10:
            break
    np.testing.assert_allclose(y_ours, y, atol=1e-5)


def test_exact_solution_is_its_own_prox():
    problem = make_phase_retrieval(5, 40, 0.0, rng=np.random.default_rng(7))
    y, _ = moreau_prox(problem, problem.x_star, 2 * weak_convexity(problem))
    np.testing.assert_allclose(y, problem.x_star, atol=1e-8)


def test_stratified_times_cover_the_run():
    rng = np.random.default_rng(8)
    times, weights = stratified_times(1000, 6, rng=rng)
    assert np.isclose(weights.sum(), 1.0)
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] <= 1000
    times, weights = stratified_times(3, 10, rng=rng)      # more cells than iterates: empty ones dropped
    assert np.isclose(weights.sum(), 1.0) and len(times) <= 4


def test_run_method_is_reproducible_and_records(problem):
    x0 = np.ones(5)
    out1 = run_method(problem, "prox_point", x0, 50, 20.0, rng=np.random.default_rng(9), record_at=[0, 50])
    out2 = run_method(problem, "prox_point", x0, 50, 20.0, rng=np.random.default_rng(9), record_at=[0, 50])
    np.testing.assert_array_equal(out1[0], out2[0])
    np.testing.assert_array_equal(out1[1][0], x0)
    np.testing.assert_array_equal(out1[1][50], out1[0])
    with pytest.raises(ValueError):
        run_method(problem, "newton", x0, 5, 1.0, rng=np.random.default_rng(0))


def test_theorem_bound_formula():
    # constant beta: (4.15) equals its closed form
    rho_bar, tau, eta, T, gamma, delta, L2 = 4.0, 1.0, 0.0, 99, 0.5, 2.0, 3.0
    beta = theorem_beta(T, rho_bar, gamma)
    got = theorem_bound_415(delta, L2, rho_bar, tau, eta, np.full(T + 1, beta))
    expected = (rho_bar * delta + 2 * rho_bar ** 2 * L2 * (T + 1) / (beta * (beta - rho_bar))) / ((T + 1) * (rho_bar - tau) / (2 * beta))
    assert np.isclose(got, expected)
    with pytest.raises(ValueError):
        theorem_bound_415(delta, L2, 1.0, 1.0, 0.0, [5.0])


def test_moreau_certificate_holds_when_newton_is_cut_short(problem):
    """With one Newton step per level the certificate must still bound the distance to the exact prox (it is
    computed from the gradient at the returned point, not at the previous iterate)."""
    rho_bar = 2 * weak_convexity(problem)
    x = np.random.default_rng(11).standard_normal(5)
    y_exact, err_exact = moreau_prox(problem, x, rho_bar)
    for max_newton in (1, 2, 3):
        y, err = moreau_prox(problem, x, rho_bar, max_newton=max_newton)
        assert np.linalg.norm(y - y_exact) <= err + err_exact


def test_method_rho_bar_satisfies_theorem_hypotheses(problem):
    for name in ("subgradient", "prox_linear", "prox_point"):
        tau, eta = model_constants(problem, name)
        rb = method_rho_bar(problem, name)
        assert rb > tau + eta and rb >= eta
        assert theorem_beta(0, rb, 100.0) > eta          # every sample subproblem is convex
    assert method_rho_bar(problem, "prox_linear") == 2 * weak_convexity(problem)
    assert method_rho_bar(problem, "prox_point") == 4 * problem.row_norms_sq.max()
    with pytest.raises(ValueError):
        method_rho_bar(problem, "prox_point", factor=1.0)


def test_step_size_sweep_stable_fraction():
    out = step_size_sweep(5, 40, 0.0, 200, [1e-2, 1e2], 1, seed=3)
    for name in ("subgradient", "prox_linear", "prox_point"):
        ratios = np.asarray(out["objective_ratio"][name][0])
        assert out["stable"][name][0] == np.mean(ratios < 1.0)
    # a huge step (gamma = 100) blows up the subgradient method but not the prox-linear step (stops at the kink)
    assert out["objective_ratio"]["subgradient"][0][1] > 1.0
    assert out["objective_ratio"]["prox_linear"][0][1] < 1.0
