import pytest
import torch

from papers.equivariant_equilibria.approximators import (
    MLPCCE,
    PPECCE,
    MLPNash,
    OPENash,
    all_permutation_pairs,
    equivariance_error,
    exploitability,
    identity_game,
    orbit_average_cce,
    orbit_average_nash,
    orbit_closed_exploitability,
    orbit_closed_nash_exploitability,
    sample_games,
    train_approximator,
    welfare_ratio_identity,
)


def test_sample_games_shapes_and_shift():
    G = sample_games(2000, 3, random_state=0)
    assert G.shape == (2000, 2, 3, 3) and 0 <= float(G.min()) and float(G.max()) <= 1
    S = sample_games(2000, 3, "row_shift", random_state=0)
    assert float(S[:, 0, 2].mean() - S[:, 0, 0].mean()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError):
        sample_games(10, 3, "normal")


def test_equivariant_models_are_equivariant_and_mlp_is_not():
    torch.manual_seed(0)
    G = sample_games(20, 3, random_state=1).double()
    assert equivariance_error(OPENash().double(), G, "nash", random_state=0) < 1e-12
    assert equivariance_error(PPECCE().double(), G, "cce", random_state=0) < 1e-12
    assert equivariance_error(MLPNash(3).double(), G, "nash", random_state=0) > 1e-4


def test_orbit_average_is_equivariant_and_not_worse():
    torch.manual_seed(0)
    model = MLPCCE(3).double()
    G = sample_games(30, 3, random_state=2).double()
    assert len(all_permutation_pairs(3)) == 36

    class Avg(torch.nn.Module):
        def forward(self, g):
            return orbit_average_cce(model, g)

    avg = Avg()
    assert equivariance_error(avg, G, "cce", random_state=3) < 1e-12
    assert float(exploitability(avg, G, "cce").mean()) <= orbit_closed_exploitability(model, G) + 1e-12


def test_ope_uniform_on_identity_game():
    torch.manual_seed(0)
    out = welfare_ratio_identity(OPENash().double(), 3)
    assert out["max_dev_from_uniform"] < 1e-12
    assert out["ratio"] == pytest.approx(1 / 3)
    assert identity_game(3).shape == (1, 2, 3, 3)


def test_training_reduces_exploitability():
    torch.manual_seed(0)
    G = sample_games(64, 3, random_state=4)
    losses = train_approximator(MLPNash(3), G, "nash", steps=60, lr=5e-3)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError):
        train_approximator(MLPNash(3), G, "ne", steps=1)


def test_nash_orbit_average_on_zero_sum_games():
    from common.equivariant import permute_game
    from common.game_metrics import nash_exploitability

    G = sample_games(200, 3, "zero_sum", random_state=3).double()
    assert torch.equal(G[:, 1], -G[:, 0])
    torch.manual_seed(1)
    model = MLPNash(3).double()
    x, y = orbit_average_nash(model, G)
    assert torch.allclose(x.sum(-1), torch.ones(200, dtype=torch.float64))
    # the orbit average is OPE-equivariant: relabelling the game relabels the marginals
    p, q = (2, 0, 1), (1, 2, 0)
    xp, yp = orbit_average_nash(model, permute_game(G, p, q))
    assert torch.allclose(xp, x[:, list(p)]) and torch.allclose(yp, y[:, list(q)])
    # Jensen on the (convex, zero-sum) sum of regrets over the orbit-closed set
    fbar = float(nash_exploitability(G[:, 0], G[:, 1], x, y, "sum").mean())
    assert fbar <= orbit_closed_nash_exploitability(model, G, "sum") + 1e-12


def test_ce_exploitability_kind_and_orbit_average():
    torch.manual_seed(0)
    model = MLPCCE(3).double()
    G = sample_games(30, 3, random_state=5).double()
    ce = exploitability(model, G, "ce")
    cce = exploitability(model, G, "cce")
    # a CE deviation may depend on the recommendation, so CE regrets dominate CCE regrets
    assert bool((ce >= cce - 1e-12).all())

    class Avg(torch.nn.Module):
        def forward(self, g):
            return orbit_average_cce(model, g)

    assert float(exploitability(Avg(), G, "ce").mean()) <= orbit_closed_exploitability(model, G, "ce") + 1e-12
    with pytest.raises(ValueError):
        orbit_closed_exploitability(model, G, "nash")
    with pytest.raises(ValueError):
        exploitability(model, G, "correlated")


def test_training_on_ce_lowers_ce_exploitability():
    torch.manual_seed(0)
    G = sample_games(64, 3, random_state=6)
    model = PPECCE()
    losses = train_approximator(model, G, "ce", steps=60, lr=5e-3)
    assert losses[-1] < 0.8 * losses[0]
    assert equivariance_error(model.double(), G.double(), "ce", random_state=0) < 1e-12


def test_larger_games_shapes():
    torch.manual_seed(0)
    for n in (5, 8):
        G = sample_games(4, n, random_state=n)
        x, y = OPENash()(G)
        assert x.shape == (4, n) and y.shape == (4, n)
        assert welfare_ratio_identity(OPENash().double(), n)["ratio"] == pytest.approx(1 / n)
        assert exploitability(MLPNash(n), G, "nash").shape == (4,)


def test_fit_nash_is_paired_and_deterministic():
    from papers.equivariant_equilibria.approximators import fit_nash

    train, test = sample_games(16, 3, random_state=7), sample_games(32, 3, random_state=8)
    _, tr1, te1 = fit_nash("mlp", 3, train, test, model_seed=3, steps=5)
    _, tr2, te2 = fit_nash("mlp", 3, train, test, model_seed=3, steps=5)
    assert (tr1, te1) == (tr2, te2)
    with pytest.raises(ValueError):
        fit_nash("cnn", 3, train, test, model_seed=3, steps=5)
