import itertools

import numpy as np
import pytest
import torch

from common.mip import InfeasibleError
from papers.clsp_transformer.experiment import run_pipeline
from papers.clsp_transformer.lot_sizing import (
    N_FEATURES,
    Instances,
    features,
    generate_instances,
    is_feasible,
    plan_cost,
    repair_setups,
    solve_clsp_mip,
    solve_fixed_setup_lp,
)
from papers.clsp_transformer.models import BiLSTMTagger, SetupTransformer, train


@pytest.fixture(scope="module")
def small():
    return generate_instances(6, 6, np.random.default_rng(0))


def test_generator_is_seeded_and_feasible(small):
    again = generate_instances(6, 6, np.random.default_rng(0))
    for a, b in zip(small.arrays(), again.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert small.demand.shape == (6, 6)
    assert np.all(is_feasible(small.demand, small.capacity, np.ones_like(small.demand)))
    assert np.all(small.demand == np.round(small.demand))


def test_feasibility_condition_by_hand():
    # d = (2, 3, 4), c = 5: period 1 must be open; (1, 0, 1) covers 5 >= 2, 5 >= 5, 10 >= 9
    d, c = np.array([2.0, 3, 4]), np.full(3, 5.0)
    assert is_feasible(d, c, [1, 0, 1])[0]
    assert not is_feasible(d, c, [0, 1, 1])[0]
    assert not is_feasible(d, c, [1, 0, 0])[0]


def test_mip_matches_enumeration_over_setups(small):
    for i in range(3):
        result, y = solve_clsp_mip(small, i)
        best = np.inf
        for cand in itertools.product([0, 1], repeat=small.T):
            try:
                best = min(best, solve_fixed_setup_lp(small, i, np.array(cand)).objective)
            except InfeasibleError:
                continue
        assert result.objective == pytest.approx(best, rel=1e-9)
        T = small.T
        assert plan_cost(small, i, result.x[:T], result.x[T:2 * T], y) == pytest.approx(result.objective, rel=1e-9)


def test_fixed_setup_lp_infeasible_and_bad_input(small):
    with pytest.raises(InfeasibleError):
        solve_fixed_setup_lp(small, 0, np.zeros(small.T))
    with pytest.raises(ValueError, match="0/1"):
        solve_fixed_setup_lp(small, 0, np.full(small.T, 0.5))


def test_repair_restores_feasibility_and_only_opens(small):
    rng = np.random.default_rng(1)
    for i in range(small.n):
        y0 = rng.integers(0, 2, small.T).astype(np.int8)
        y, opened = repair_setups(small, i, y0)
        assert is_feasible(small.demand[i], small.capacity[i], y)[0]
        assert np.all(y >= y0) and opened == int((y - y0).sum())
        solve_fixed_setup_lp(small, i, y)   # the LP agrees: no InfeasibleError
    _, y_opt = solve_clsp_mip(small, 0)
    assert repair_setups(small, 0, y_opt)[1] == 0


def test_repair_rejects_infeasible_instance():
    inst = Instances(*(np.array([[5.0, 5.0]]) for _ in range(5)))
    inst.capacity[:] = [1.0, 1.0]
    with pytest.raises(ValueError, match="infeasible"):
        repair_setups(inst, 0, np.zeros(2))


def test_pipeline_gap_zero_at_optimum_and_nonnegative_otherwise(small):
    opt = [solve_clsp_mip(small, i) for i in range(small.n)]
    y_opt = np.array([y for _, y in opt])
    obj = np.array([r.objective for r, _ in opt])
    exact = run_pipeline(small, y_opt, obj, 0.0, y_opt)
    np.testing.assert_allclose(exact.gap, 0, atol=1e-9)
    assert np.all(exact.setup_accuracy == 1)
    closed = run_pipeline(small, np.zeros_like(y_opt), obj, 0.0, y_opt)
    assert not closed.infeasible_after.any() and not closed.feasible_before_repair.any()
    assert np.all(closed.gap >= -1e-9)
    everything = run_pipeline(small, np.ones_like(y_opt), obj, 0.0, y_opt)   # idle setups get closed
    assert np.all(everything.gap >= -1e-9)


def test_features_shape_and_scale_free(small):
    u = features(small)
    assert u.shape == (small.n, small.T, N_FEATURES) and np.all(np.isfinite(u))
    scaled = Instances(small.demand * 3, small.capacity * 3, small.production_cost * 2, small.holding_cost * 2,
                       small.setup_cost * 6)
    np.testing.assert_allclose(features(scaled), u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: SetupTransformer(N_FEATURES, 6, d_model=16, n_heads=2, d_ff=32),
                                  lambda: SetupTransformer(N_FEATURES, 6, d_model=16, n_heads=2, d_ff=32, with_eos=False),
                                  lambda: BiLSTMTagger(N_FEATURES, hidden=16)])
def test_models_fit_a_tiny_training_set(small, make):
    """Greedy decoding reproduces memorised labels: the decoder's alignment of step t with period t works."""
    torch.manual_seed(0)
    model = make()
    y = np.array([solve_clsp_mip(small, i)[1] for i in range(small.n)])
    losses = train(model, features(small), y, steps=300, batch_size=6, lr=1e-2, seed=0)
    assert losses[-1] < 0.1 * losses[0]
    pred = model.predict(torch.as_tensor(features(small)))
    assert pred.shape == y.shape
    assert np.mean(pred.numpy() == y) == 1.0


def test_transformer_rejects_long_sequences():
    model = SetupTransformer(N_FEATURES, 4, d_model=8, n_heads=2)
    with pytest.raises(ValueError, match="max_T"):
        model.predict(torch.zeros(1, 5, N_FEATURES))
    with pytest.raises(ValueError, match="divisible"):
        SetupTransformer(N_FEATURES, 4, d_model=10, n_heads=4)


def test_compare_models_same_seeds_and_intervals(tmp_path):
    """compare_models trains every kind on every seed (same data); gap_intervals pairs them by seed."""
    from papers.clsp_transformer.experiment import Dataset, compare_models, gap_intervals

    rng = np.random.default_rng(3)
    inst = generate_instances(12, 6, rng)
    labels = np.array([solve_clsp_mip(inst, i)[1] for i in range(inst.n)], dtype=np.int8)
    optimum = np.array([solve_clsp_mip(inst, i)[0].objective for i in range(8, 12)])
    data = Dataset(train=inst[np.arange(8)], train_setups=labels[:8], test=inst[np.arange(8, 12)],
                   test_setups=labels[8:], test_objective=optimum, test_mip_seconds=np.zeros(4))
    rows, per_seed = compare_models(data, [0, 1], kinds=("transformer", "lstm"), steps=3, d_model=8,
                                    progress=False, log=lambda _: None)
    assert set(rows) == {"transformer", "lstm"} and all(len(r) == 2 for r in rows.values())
    for summary in per_seed.values():
        assert len(summary["gap_mean"]) == 2 and min(summary["min_gap"]) >= -1e-6
        assert isinstance(summary["n_parameters"], int)
    again = compare_models(data, [0, 1], kinds=("transformer", "lstm"), steps=3, d_model=8, progress=False,
                           log=lambda _: None)[1]
    assert again["lstm"]["gap_mean"] == per_seed["lstm"]["gap_mean"]  # seeded: the same per-seed values
    intervals = gap_intervals(per_seed)
    assert set(intervals) == {"gap.transformer", "gap.lstm", "gap.transformer_minus_lstm"}
    with pytest.raises(ValueError, match="unknown kinds"):
        compare_models(data, [0], kinds=("gru",), steps=1)


def test_dp_optimum_matches_the_mip():
    """The solver-free DP over integer stock gives HiGHS's proven optimum; it refuses fractional data."""
    from papers.clsp_transformer.lot_sizing import dp_optimum

    inst = generate_instances(8, 10, np.random.default_rng(5))
    inst = Instances(*(np.round(a, 3) for a in inst.arrays()))
    for i in range(inst.n):
        mip = solve_clsp_mip(inst, i)[0].objective
        assert dp_optimum(inst, i) == pytest.approx(mip, rel=1e-9)
    fractional = Instances(inst.demand + 0.5, *inst.arrays()[1:])
    with pytest.raises(ValueError, match="integer"):
        dp_optimum(fractional, 0)


def test_mip_at_gap_is_within_its_gap(small):
    """HiGHS stopped at a relative gap returns a solution within that gap of the optimum."""
    from papers.clsp_transformer.experiment import Dataset, mip_at_gap

    optimum = np.array([solve_clsp_mip(small, i)[0].objective for i in range(small.n)])
    data = Dataset(train=small, train_setups=np.zeros((small.n, small.T), np.int8), test=small,
                   test_setups=np.zeros((small.n, small.T), np.int8), test_objective=optimum,
                   test_mip_seconds=np.zeros(small.n))
    out = mip_at_gap(data, small.n, 0.05)
    assert 0 <= out["mean_excess"] <= 0.05 + 1e-9 and out["median_seconds"] > 0
