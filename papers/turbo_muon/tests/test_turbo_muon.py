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
    assert set(errs) == {"muon", "muon_plus", "turbo", "aol_floor"}
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
