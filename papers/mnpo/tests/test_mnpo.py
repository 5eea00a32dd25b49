import numpy as np
import pytest

from common.preference import duality_gap
from papers.mnpo.mnpo import (
    Games,
    annotator_mixture_games,
    condorcet_winner_exists,
    draw_pairs,
    path_metrics,
    run_exact,
    run_method,
    symmetric_nash,
    tune_step_sizes,
)

RPS = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])


def test_games_are_valid_and_non_transitive():
    g = annotator_mixture_games(3, 5, 6, random_state=0)
    assert g.P.shape == (3, 5, 6, 6) and g.log_ref.shape == (3, 5, 6)
    np.testing.assert_allclose(g.P + np.swapaxes(g.P, -1, -2), 1.0, atol=1e-12)
    assert not condorcet_winner_exists(g.P).any()
    np.testing.assert_allclose(np.exp(g.log_ref).sum(-1), 1.0)
    transitive = annotator_mixture_games(1, 50, 6, n_annotators=1, non_transitive=False, random_state=0)
    assert condorcet_winner_exists(transitive.P).all()   # one Bradley-Terry annotator is transitive
    with pytest.raises(ValueError):
        annotator_mixture_games(1, 1, 2, random_state=0)


def test_symmetric_nash_of_rock_paper_scissors_is_uniform():
    np.testing.assert_allclose(symmetric_nash(RPS), np.ones(3) / 3, atol=1e-9)
    g = annotator_mixture_games(1, 4, 8, random_state=1)
    for P in g.P[0]:
        assert duality_gap(P, symmetric_nash(P)) < 1e-8


def test_draw_pairs_labels_follow_the_oracle():
    P = np.array([[[0.5, 0.8], [0.2, 0.5]]])
    log_mu = np.log(np.array([[0.5, 0.5]]))
    w, l = draw_pairs(P, log_mu, 20_000, np.random.default_rng(0))  # noqa: E741 (y_w, y_l as in the paper)
    mixed = w != l
    assert np.mean(w[mixed] == 0) == pytest.approx(0.8, abs=0.02)
    assert np.mean(mixed) == pytest.approx(0.5, abs=0.02)


def test_run_method_is_deterministic_and_starts_at_the_reference():
    g = annotator_mixture_games(2, 3, 5, random_state=2)
    a = run_method("mnpo", g, T=2, eta=2.0, n_pairs=16, random_state=5, steps=20)
    b = run_method("mnpo", g, T=2, eta=2.0, n_pairs=16, random_state=5, steps=20)
    assert len(a) == 3
    np.testing.assert_array_equal(a[0], g.log_ref)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError):
        run_method("ppo", g, T=1, eta=1.0, n_pairs=4, random_state=0)


def test_exact_mnpo_with_one_history_is_inpo():
    g = annotator_mixture_games(2, 3, 5, random_state=3)
    a = run_exact("inpo", g, T=4, eta=3.0)
    b = run_exact("mnpo", g, T=4, eta=3.0, n_history=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_path_metrics_on_a_fixed_policy():
    P = np.broadcast_to(RPS, (1, 1, 3, 3)).copy()
    log_u = np.log(np.full((1, 1, 3), 1 / 3))
    r = path_metrics(Games(P=P, log_ref=log_u), [log_u, log_u])
    assert r["gap"][0] == pytest.approx(0.0, abs=1e-12)
    assert r["min_win_past"][0] == pytest.approx(0.5)
    assert r["kl_ref"][0] == pytest.approx(0.0, abs=1e-12)


def test_tuning_returns_a_grid_value_per_method():
    g = annotator_mixture_games(1, 2, 4, random_state=4)
    best, curves = tune_step_sizes(["dpo", "inpo"], g, [1.0, 4.0], T=1, n_pairs=8, random_state=0, steps=5)
    assert set(best) == {"dpo", "inpo"} and all(v in (1.0, 4.0) for v in best.values())
    assert curves["dpo"].shape == (2,)


@pytest.mark.parametrize("method", ["dpo", "simpo", "sppo", "inpo", "mnpo", "mnpo_pop"])
def test_a_batched_eta_grid_equals_one_run_per_eta(method):
    """tune_step_sizes batches the grid: each batched run must be bit-identical to its own single run."""
    g = annotator_mixture_games(2, 3, 5, random_state=7)
    grid = [0.5, 2.0, 8.0]
    kw = dict(T=3, n_pairs=16, random_state=11, n_history=2, steps=15, lr=0.1)
    batched = run_method(method, g, eta=np.array(grid), **kw)
    for e, eta in enumerate(grid):
        single = run_method(method, g, eta=eta, **kw)
        for table_b, table_s in zip(batched, single, strict=True):
            np.testing.assert_array_equal(table_b[e], table_s)


def test_a_grid_must_match_the_tables():
    g = annotator_mixture_games(1, 2, 4, random_state=0)
    with pytest.raises(ValueError, match="1-D grid"):
        run_method("dpo", g, T=1, eta=np.ones((2, 2)), n_pairs=4, random_state=0)
    with pytest.raises(ValueError, match="positive"):
        run_method("dpo", g, T=1, eta=np.array([1.0, -1.0]), n_pairs=4, random_state=0)


@pytest.mark.parametrize("method", ["dpo", "simpo", "sppo", "inpo", "mnpo", "mnpo_pop"])
@pytest.mark.parametrize("eta", [2.0, np.array([0.25, 1.0, 16.0])], ids=["scalar", "grid"])
@pytest.mark.parametrize("n_pairs, n_history", [(16, 3), (12, 2)])
def test_the_written_out_fit_equals_autograd_and_adam_bit_for_bit(method, eta, n_pairs, n_history):
    """method_step's fit (_fit_pairs: gradient and Adam written out) against the reference it replaces,
    common.preference.fit_table (autograd + torch.optim.Adam): every table of the path bit for bit, for
    every method, a scalar and a grid eta, a power-of-two and another pair count (1/N exact or rounded)."""
    g = annotator_mixture_games(2, 3, 6, random_state=13)
    kw = dict(T=3, n_pairs=n_pairs, random_state=5, n_history=n_history, steps=25, lr=0.1)
    fast = run_method(method, g, eta=eta, **kw)
    reference = run_method(method, g, eta=eta, autograd=True, **kw)
    for table_f, table_r in zip(fast, reference, strict=True):
        np.testing.assert_array_equal(table_f, table_r)


def test_the_written_out_fit_keeps_the_losses_argument_checks():
    g = annotator_mixture_games(1, 2, 4, random_state=0)
    for method in ("dpo", "simpo", "sppo", "inpo", "mnpo"):
        with pytest.raises(ValueError, match="positive"):
            run_method(method, g, T=1, eta=-1.0, n_pairs=4, random_state=0)
    with pytest.raises(ValueError, match="steps"):
        run_method("mnpo", g, T=1, eta=1.0, n_pairs=4, random_state=0, steps=0)
