"""Unit tests of the Turbo-Muon experiment helpers (the kernels are tested in tests/common)."""

import pytest
import torch

from common import newton_schulz as ns
from papers.turbo_muon import turbo_muon as tm


def test_decaying_spectrum_has_requested_singular_values():
    G = tm.decaying_spectrum(2, 20, 30, 1.0, torch.Generator().manual_seed(0))
    sv = torch.linalg.svdvals(G.double())
    expected = torch.arange(1, 21, dtype=torch.float64) ** -1.0
    assert torch.allclose(sv, expected.expand(2, -1), atol=1e-5)


def test_levy_is_heavy_tailed_and_symmetric():
    x = tm.levy_stable((200_000,), 1.5, torch.Generator().manual_seed(0)).double()
    assert abs(float(x.median())) < 0.02
    gauss = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(x.abs().max()) > 20 * float(gauss.abs().max())
    with pytest.raises(ValueError):
        tm.levy_stable((3,), 2.5)


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_random_matrices_shapes(family):
    G = tm.random_matrices(family, 2, 16, 24, torch.Generator().manual_seed(0))
    assert G.shape == (2, 16, 24) and G.dtype == torch.float32 and torch.isfinite(G).all()
    with pytest.raises(ValueError):
        tm.random_matrices("cauchy", 2, 4, 4)


def test_polar_grid_and_variants():
    G = tm.random_matrices("gaussian", 2, 32, 32, torch.Generator().manual_seed(0))
    grid = tm.polar_error_grid(G, steps=(1, 5))
    assert len(grid) == 8
    assert grid[("aol", "dion", 5)] < grid[("aol", "dion", 1)]
    errs = tm.variant_errors(G)
    assert set(errs) == {"muon", "muon_plus", "turbo", "muon4", "muon_plus4", "turbo5", "aol_floor"}
    assert errs["turbo5"] == pytest.approx(grid[("aol", "dion", 5)])
    assert errs["turbo"] == pytest.approx(tm.polar_error_grid(G, steps=(4,))[("aol", "dion", 4)])
    assert tm.aol_sigma_max(G) <= 1 + 1e-5


def test_training_is_deterministic_and_backends_differ_only_in_ns():
    a = tm.train_muon_mlp("turbo", seed=3, epochs=1, hidden=16)
    b = tm.train_muon_mlp("turbo", seed=3, epochs=1, hidden=16)
    c = tm.train_muon_mlp("muon", seed=3, epochs=1, hidden=16)
    assert a["test_loss"] == b["test_loss"]
    assert a["test_loss"] != c["test_loss"]
    assert 0 < a["ns_fraction"] < 1


def test_collect_momenta_and_stats():
    mom = tm.collect_momenta(epochs=1, hidden=16, every=5)
    assert mom.shape[1:] == (16, 16) and mom.shape[0] >= 1
    assert tm.mean_and_se([1.0, 3.0]) == (2.0, 1.0)
    assert ns.polar_error(ns.turbo_ns4(mom), mom).shape == (mom.shape[0],)


def test_aol_floor_of_tall_input_equals_its_transpose():
    G = tm.random_matrices("gaussian", 2, 48, 16, torch.Generator().manual_seed(1))
    tall, wide = tm.variant_errors(G), tm.variant_errors(G.mT.contiguous())
    assert tall["aol_floor"] == pytest.approx(wide["aol_floor"], rel=1e-9)
    assert tall["turbo"] == pytest.approx(wide["turbo"], rel=1e-5)
    assert {"muon4", "muon_plus4", "turbo5"} <= set(tall)
    # the floor is where AOL + Newton-Schulz converges: a converged iteration reaches exactly that error
    classic = [(15 / 8, -10 / 8, 3 / 8)] * 40
    X = ns.newton_schulz(G.double(), 40, classic, "aol")
    assert float(ns.polar_error(X, G).mean()) == pytest.approx(tall["aol_floor"], rel=1e-6)


def test_spectrum_profile_and_tail_share():
    G = tm.decaying_spectrum(2, 40, 40, 1.0, torch.Generator().manual_seed(0))
    prof = tm.spectrum_profile(G, ks=(8, 32))
    assert prof["sigma8_over_sigma1"] == pytest.approx(1 / 8, rel=1e-3)
    assert prof["sigma32_over_sigma1"] == pytest.approx(1 / 32, rel=1e-3)
    assert prof["fraction_above_thousandth"] == 1.0
    with pytest.raises(ValueError):
        tm.spectrum_profile(G, ks=(41,))
    assert tm.tail_error_share(ns.polar_svd(G), G, head=8) == 0.0
    # one step leaves the small singular values far from 1: the error sits in the tail
    share = tm.tail_error_share(ns.newton_schulz(G, 1, "muon", "frobenius"), G, head=8)
    assert 0.5 < share <= 1.0
    assert tm.update_rms(ns.polar_svd(G)) == pytest.approx(1.0)


def test_aol_win_fraction_counts_cells():
    grid = {("aol", "muon", 1): 0.1, ("frobenius", "muon", 1): 0.2,
            ("aol", "muon", 2): torch.tensor([0.3, 0.1]), ("frobenius", "muon", 2): torch.tensor([0.2, 0.2])}
    assert tm.aol_win_fraction(grid) == (2, 3)


def test_compare_backends_pairs_seeds_and_amdahl():
    base = [{"test_loss": 0.1 + 0.01 * i, "test_acc": 0.9, "step_seconds": 2.0, "ns_seconds": 1.0} for i in range(4)]
    other = [{"test_loss": r["test_loss"] + 0.005, "test_acc": 0.91, "step_seconds": 1.8 + 0.01 * i,
              "ns_seconds": 0.8} for i, r in enumerate(base)]
    out = tm.compare_backends(base, other)
    assert out["test_loss"].estimate == pytest.approx(0.005)
    assert out["test_loss"].hi - out["test_loss"].lo == pytest.approx(0.0, abs=1e-12)  # pairing removes the seed spread
    assert out["ns"].estimate == pytest.approx(1.25)
    assert out["amdahl"].estimate == pytest.approx(tm.amdahl_speedup(0.5, 1.25)) == pytest.approx(1 / 0.9)
    assert out["step"].estimate > 1
    with pytest.raises(ValueError):
        tm.compare_backends(base[:1], other[:1])
    with pytest.raises(ValueError):
        tm.amdahl_speedup(1.5, 1.2)
