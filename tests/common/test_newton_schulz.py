"""Newton–Schulz variants against the SVD polar factor, the AOL bound and the FLOP model."""

import pytest
import torch

from common import newton_schulz as ns


@pytest.fixture
def gaussian():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 96, 96, generator=g)


def test_polar_svd_is_orthogonal_and_matches_definition(gaussian):
    P = ns.polar_svd(gaussian)
    assert ns.orthogonality_error(P).max() < 1e-12
    # polar(G) is the orthogonal factor of G = P H with H symmetric PSD
    H = P.mT @ gaussian.double()
    assert torch.allclose(H, H.mT, atol=1e-10)
    assert torch.linalg.eigvalsh(H).min() > -1e-10


@pytest.mark.parametrize("name, bound", [("muon", 0.3), ("muon_plus", 0.2), ("turbo", 0.2)])
def test_variants_approach_polar_factor(gaussian, name, bound):
    X = ns.VARIANTS[name](gaussian)
    err = ns.polar_error(X, gaussian)
    assert err.shape == (3,)
    assert err.max() < bound
    assert X.shape == gaussian.shape and X.dtype == torch.float32


def test_many_steps_converge_to_polar_factor(gaussian):
    # the classical quintic (15σ − 10σ³ + 3σ⁵)/8 has 1 as a superattracting fixed point
    classic = [(15 / 8, -10 / 8, 3 / 8)] * 40
    G = gaussian.double()
    X = ns.newton_schulz(G, steps=40, schedule=classic, preconditioner="frobenius")
    assert ns.polar_error(X, G).max() < 1e-10
    # AOL rescales rows, so the iteration converges to polar(diag(s) G), not polar(G): an error floor
    X = ns.newton_schulz(G, steps=40, schedule=classic, preconditioner="aol")
    scaled, _ = ns.aol_rescale(G)
    assert ns.polar_error(X, scaled).max() < 1e-10
    assert ns.polar_error(X, G).min() > 1e-3


def test_rank_one_row_orthogonal_input_is_exact_after_aol():
    # AOL is exact when rows are mutually orthogonal: diag(s) X is then orthonormal already.
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    X = torch.diag(torch.linspace(0.1, 5.0, 10, dtype=torch.float64)) @ Q[:10]
    Y, A = ns.aol_rescale(X)
    assert torch.allclose(Y @ Y.mT, torch.eye(10, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(A, Y @ Y.mT, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 64), (32, 128), (5, 48, 16)])
def test_aol_bound_spectral_norm_at_most_one(shape):
    g = torch.Generator().manual_seed(2)
    for family in (torch.randn(shape, generator=g), torch.randn(shape, generator=g) ** 3):
        X = family if family.size(-2) <= family.size(-1) else family.mT
        Y, A = ns.aol_rescale(X)
        assert torch.linalg.matrix_norm(Y, ord=2).max() <= 1 + 1e-5
        assert torch.allclose(A, Y @ Y.mT, atol=1e-5)


def test_tall_inputs_are_transposed_like_muon():
    G = torch.randn(200, 50, generator=torch.Generator().manual_seed(3))
    X = ns.turbo_ns4(G)
    assert X.shape == G.shape
    assert torch.allclose(X, ns.turbo_ns4(G.mT).mT)
    assert ns.polar_error(X, G) < 0.2


def test_bfloat16_runs_and_stays_close(gaussian):
    X = ns.turbo_ns4(gaussian, dtype=torch.bfloat16)
    assert X.dtype == torch.bfloat16
    assert ns.polar_error(X, gaussian).max() < 0.25


def test_aol_lowers_error_at_equal_steps_on_gaussian(gaussian):
    for steps in (2, 3, 4, 5):
        frob = ns.polar_error(ns.newton_schulz(gaussian, steps, "dion", "frobenius"), gaussian).mean()
        aol = ns.polar_error(ns.newton_schulz(gaussian, steps, "dion", "aol"), gaussian).mean()
        assert aol < frob


def test_coefficient_schedules():
    assert ns.coefficient_schedule("muon", 2) == [ns.MUON_COEFFICIENTS] * 2
    assert ns.coefficient_schedule("dion", 4) == list(ns.DION_COEFFICIENTS[1:])
    assert ns.coefficient_schedule("dion", 0) == []
    assert len(ns.coefficient_schedule("dion", 7)) == 7
    # every quintic maps 1 close to 1 (the fixed point region)
    for a, b, c in ns.DION_COEFFICIENTS[-2:]:
        assert abs(a + b + c - 1) < 0.1
    with pytest.raises(ValueError):
        ns.coefficient_schedule("nope", 3)
    with pytest.raises(ValueError):
        ns.coefficient_schedule([(1.0, 0.0, 0.0)], 2)
    with pytest.raises(ValueError):
        ns.newton_schulz(torch.randn(4, 4), preconditioner="spectral")
    with pytest.raises(ValueError):
        ns.newton_schulz(torch.randn(4))


def test_flop_model_ratio_is_five_quarters():
    muon = ns.ns_flops(1024, 1024, 5, "frobenius")
    turbo = ns.ns_flops(1024, 1024, 4, "aol")
    assert muon["matmul"] / turbo["matmul"] == 1.25
    assert muon["matmul"] == 5 * 6 * 1024 ** 3
    assert 1.2 < muon["total"] / turbo["total"] < 1.25
    assert ns.ns_flops(512, 2048, 1)["matmul"] == ns.ns_flops(2048, 512, 1)["matmul"]


@pytest.mark.parametrize("shape", [(2, 48, 20), (2, 20, 48), (30, 30)])
def test_aol_polar_limit_is_where_aol_newton_schulz_converges(shape):
    # tall inputs are transposed before AOL (rows of the short side are rescaled), as in newton_schulz
    G = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    classic = [(15 / 8, -10 / 8, 3 / 8)] * 40
    X = ns.newton_schulz(G, steps=40, schedule=classic, preconditioner="aol")
    limit = ns.aol_polar_limit(G)
    assert limit.shape == G.shape
    assert (X - limit).abs().max() < 1e-10
    if G.size(-2) != G.size(-1):  # square inputs are never transposed
        assert torch.allclose(limit, ns.aol_polar_limit(G.mT).mT, atol=1e-12)


def test_aol_polar_limit_of_tall_input_rescales_the_short_side():
    G = torch.randn(64, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    scaled, _ = ns.aol_rescale(G.mT)
    assert torch.allclose(ns.aol_polar_limit(G), ns.polar_svd(scaled).mT, atol=1e-12)
    # rescaling the 64 long-side rows instead (the old bug) gives another matrix
    wrong, _ = ns.aol_rescale(G)
    assert (ns.aol_polar_limit(G) - ns.polar_svd(wrong)).abs().max() > 1e-3
