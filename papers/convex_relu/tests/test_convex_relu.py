import numpy as np
import pytest

from papers.convex_relu.convex_relu import (
    admm,
    convex_objective,
    convex_predict_train,
    load_binary,
    network_predict,
    nonconvex_objective,
    recover_network,
    reference_optimum,
    sample_patterns,
    semilog_slope,
    train_nonconvex,
)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.standard_normal((40, 3)), np.ones((40, 1))])
    y = np.sign(X[:, 0] * X[:, 1] + 0.1)
    D = sample_patterns(X, 4, random_state=1)
    return X, y, D


def test_patterns_distinct_and_consistent(small):
    X, _, D = small
    assert D.shape == (40, 4) and D.dtype == bool
    assert len({D[:, i].tobytes() for i in range(4)}) == 4
    assert sample_patterns(X, 4, random_state=1).tolist() == D.tolist()


def test_whitened_features_are_orthonormal():
    data = load_binary("breast_cancer", n_train=100, n_components=10, random_state=0)
    np.testing.assert_allclose(data.X_train.T @ data.X_train, np.eye(11), atol=1e-10)
    assert set(np.unique(data.y_train)) == {-1.0, 1.0}
    with pytest.raises(ValueError):
        load_binary("mnist")


def test_recovery_reproduces_objective_and_predictions(small):
    X, y, D = small
    ref, V, W, _ = reference_optimum(X, y, D, beta=0.5)
    U, alpha = recover_network(V, W)
    assert abs(nonconvex_objective(X, y, U, alpha, 0.5) - ref.value) < 1e-6 * ref.value
    np.testing.assert_allclose(network_predict(X, V, W), convex_predict_train(X, D, V, W), atol=1e-6)
    assert abs(convex_objective(X, y, D, V, W, 0.5) - ref.value) < 1e-7 * ref.value


def test_admm_matches_clarabel(small):
    X, y, D = small
    ref, _, _, seconds = reference_optimum(X, y, D, beta=0.5)
    assert 0 < seconds <= ref.seconds
    res = admm(X, y, D, 0.5, rho=1.0, max_iter=3000)
    assert abs(res.history["objective"][-1] - ref.value) < 1e-4 * ref.value
    assert res.history["violation"][-1] < 1e-4


def test_admm_stopping_rule_and_errors(small):
    X, y, D = small
    res = admm(X, y, D, 0.5, rho=1.0, max_iter=5000, eps_abs=1e-6, eps_rel=1e-5)
    assert res.converged and res.iterations < 5000
    with pytest.raises(ValueError):
        admm(X, y, D, 0.5, rho=0.0)
    with pytest.raises(ValueError):
        admm(X, y[:-1], D, 0.5)


def test_beta_zero_without_constraints_is_least_squares():
    # One all-ones pattern: constraints (X v >= 0 on every row) are slack at the LS fit when y > 0 is fit exactly.
    rng = np.random.default_rng(3)
    X = np.abs(rng.standard_normal((30, 3)))
    w = np.array([1.0, 2.0, 0.5])
    y = X @ w
    D = np.ones((30, 1), dtype=bool)
    res = admm(X, y, D, 0.0, rho=1.0, max_iter=4000)
    np.testing.assert_allclose(res.V[0] - res.W[0], w, atol=1e-5)


def test_semilog_slope_exact_rate():
    k = np.arange(1, 50)
    interval, r2 = semilog_slope(k, 3.0 * 0.9**k)
    assert interval.estimate == pytest.approx(np.log(0.9)) and r2 == pytest.approx(1.0)
    with pytest.raises(ValueError):
        semilog_slope(k, -k)


def test_nonconvex_training_decreases_objective(small):
    X, y, _ = small
    U, a, trace = train_nonconvex(X, y, 6, 0.1, steps=200, random_state=0)
    assert trace[-1] < trace[0]
    assert nonconvex_objective(X, y, U, a, 0.1) == pytest.approx(trace[-1], rel=0.05)


def test_arrangement_2d_is_exact_and_contains_sampled_patterns():
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.standard_normal(25), np.full(25, 0.2)])  # rank 2, the bias column > 0
    from papers.convex_relu.convex_relu import arrangement_patterns_2d, enumerate_patterns

    D = arrangement_patterns_2d(X)
    n_lines = len(np.unique(np.mod(np.arctan2(X[:, 1], X[:, 0]), np.pi)))
    assert D.shape == (25, 2 * n_lines - 1)  # 2L arcs, less the all-zero pattern
    assert len({c.tobytes() for c in D.T}) == D.shape[1] and D.any(0).all()
    known = {c.tobytes() for c in D.T}
    sampled = enumerate_patterns(X, 20000, random_state=0)
    assert all(c.tobytes() in known for c in sampled.T) and sampled.shape[1] <= D.shape[1]
    with pytest.raises(ValueError):
        arrangement_patterns_2d(np.ones((4, 3)))


def test_exact_program_is_below_any_network():
    # On the exact program no network (any width) has a lower regularised objective.
    from papers.convex_relu.convex_relu import arrangement_patterns_2d

    rng = np.random.default_rng(2)
    X = np.column_stack([rng.standard_normal(20), np.full(20, 0.3)])
    y = np.sign(np.sin(2 * X[:, 0]))
    ref, _, _, _ = reference_optimum(X, y, arrangement_patterns_2d(X), beta=0.1)
    for i in range(3):
        U, a, _ = train_nonconvex(X, y, 8, 0.1, steps=1500, random_state=i)
        assert nonconvex_objective(X, y, U, a, 0.1) >= ref.value * (1 - 1e-5)


def test_rate_diagnostics_tells_linear_from_power_law():
    from papers.convex_relu.convex_relu import rate_diagnostics

    k = np.arange(376, 1501)
    linear = rate_diagnostics(k, 2.0 * 0.997**k)
    assert linear["semilog_minus_loglog_r2"] > 0 and linear["half_slope_ratio"] == pytest.approx(1.0)
    for p in (0.5, 1.0, 2.0):
        power = rate_diagnostics(k, k**-p)
        assert power["semilog_r2"] > 0.9  # the r^2 threshold alone passes a power law
        assert power["semilog_minus_loglog_r2"] < 0 and power["half_slope_ratio"] < 0.75


def test_first_stop_matches_a_stopping_run(small):
    from papers.convex_relu.convex_relu import first_stop

    X, y, D = small
    full = admm(X, y, D, 0.5, max_iter=3000, eps_abs=1e-6, eps_rel=1e-3, stop=False, diagnostics=False)
    stopped = admm(X, y, D, 0.5, max_iter=3000, eps_abs=1e-6, eps_rel=1e-3)
    assert stopped.converged and first_stop(full) == stopped.iterations
    assert full.iterations == 3000 and "objective" not in full.history
    assert full.final_objective == pytest.approx(convex_objective(X, y, D, full.V, full.W, 0.5))
    with pytest.raises(ValueError):
        first_stop(admm(X, y, D, 0.5, max_iter=5))
