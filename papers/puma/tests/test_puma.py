import math

import numpy as np
import pytest
import torch

from common.mpc import COST_MODEL
from papers.puma import puma as P


@pytest.fixture(scope="module")
def tiny():
    from common.tinylm import load_tinylm

    model, _, _ = load_tinylm("tinylm_ci")
    return model, P.model_params(model)


def test_gelu_puma_matches_the_official_segments():
    ops = P.Float64Ops()
    x = np.array([-5.0, -4.0, -3.0, -1.95, 0.0, 1.0, 3.0, 3.5])
    y = P.gelu_puma(ops, x)
    f0 = sum(c * x**k for k, c in enumerate(P.GELU_F0))
    f1 = sum(c * x**k for k, c in P.GELU_F1.items())
    expected = np.select([x < -4, x < -1.95, x <= 3], [0.0, f0, f1], x)
    assert np.allclose(y, expected, atol=1e-12)
    grid = np.linspace(-10, 10, 20001)
    err = np.abs(P.gelu_puma(ops, grid) - P.gelu_exact(grid))
    assert 0.019 < err.max() < 0.02 and abs(grid[err.argmax()] - 3.0) < 1e-9


def test_polynomial_powers_and_quad():
    ops = P.Float64Ops()
    x = np.linspace(-2, 2, 9)
    assert np.allclose(P.polynomial(ops, x, {0: 1.0, 3: 2.0, 6: -1.0}), 1 + 2 * x**3 - x**6)
    assert np.allclose(P.gelu_quad(ops, x), 0.125 * x**2 + 0.25 * x + 0.5)


def test_exp_reciprocal_rsqrt_in_float64():
    ops = P.Float64Ops()
    x = np.linspace(-14, 0, 141)
    assert np.abs(P.exp_taylor(ops, x, 8) - np.exp(x)).max() < 1.2e-3
    assert np.allclose(P.exp_taylor(ops, np.array([-512.0 * 2]), 8), (1 - 4.0) ** 256)  # wrong for x < -2^n
    s = np.array([1.0, 1.7, 3.0, 15.9])
    assert np.abs(P.reciprocal_puma(ops, s) * s - 1).max() < 1e-4
    assert np.abs(P.reciprocal_crypten(ops, s) * s - 1).max() < 1e-6
    v = np.geomspace(1e-4, 1e4, 101)
    assert np.abs(P.rsqrt_puma(ops, v) * np.sqrt(v) - 1).max() < 1e-4


def test_softmax_puma_rows_and_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 5)) * 3
    mask = np.tril(np.ones((5, 5), dtype=int))
    ref = P.softmax_exact(x, mask)
    for fn in (P.softmax_puma, P.softmax_crypten):
        p = fn(P.Float64Ops(), x, mask)
        assert np.all(p[..., mask == 0] == 0)
        assert np.abs(p - ref).max() < 2e-3
    # the clip: an entry 20 below the maximum is zeroed by PUMA
    p = P.softmax_puma(P.Float64Ops(), np.array([[0.0, -20.0]]))
    assert p[0, 1] == 0.0


@pytest.mark.parametrize("kind", ["float64", "fixed", "mpc"])
def test_row_max_and_embedding_exact(kind):
    ops = P.make_ops(kind, random_state=0)
    x = np.array([[0.5, -2.0, 3.25, 1.0, 3.0], [-1.0, -0.5, -7.0, -0.25, -3.0]])
    assert np.array_equal(ops.dec(P.row_max(ops, ops.enc(x)))[:, 0], [3.25, -0.25])
    table = np.random.default_rng(1).normal(size=(7, 4))
    tokens = np.array([[3, 0, 6]])
    emb = ops.dec(P.secure_embedding(ops, tokens, table))
    assert np.array_equal(emb, P.FixedOps().dec(P.FixedOps().enc(table))[tokens]) if kind != "float64" else np.array_equal(emb, table[tokens])


def test_fixed_point_gelu_close_to_float():
    grid = np.linspace(-10, 10, 2001)
    fx = P.FixedOps(18)
    err = np.abs(fx.dec(P.gelu_puma(fx, fx.enc(grid))) - P.gelu_puma(P.Float64Ops(), grid))
    assert err.max() < 2e-3


def test_forward_exact_matches_torch_and_mpc_matches_fixed(tiny):
    model, params = tiny
    tokens = np.array([[1, 10, 40, 41, 42, 6, 7, 8]])
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).double().numpy()
    exact = P.forward(P.Float64Ops(), params, model.config, tokens, "exact", "exact", "exact")
    assert np.abs(exact - ref).max() < 1e-3
    fixed = P.forward(P.FixedOps(), params, model.config, tokens)
    mpc = P.forward(P.MPCOps(random_state=0), params, model.config, tokens)
    assert np.abs(mpc - fixed).max() < 0.05
    with pytest.raises(ValueError):
        P.forward(P.FixedOps(), params, model.config, tokens, "exact", "puma", "puma")


def test_communication_counts_are_deterministic():
    a = P.communication(P.gelu_puma, (4, 8))
    b = P.communication(P.gelu_puma, (4, 8), random_state=5)
    assert a == b
    # three comparisons, powers x^2, x^3, x^4, x^6 (4 products), 3 selections, truncations of 7 terms + 4 powers
    n = 32
    expected = n * (3 * COST_MODEL["ltz"][0] + (4 + 3) * COST_MODEL["mul"][0] + (4 + 4 + 3) * COST_MODEL["trunc"][0]) // 8
    assert a["bytes"] == expected


def test_next_token_metrics():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    m = P.next_token_metrics(logits, logits, np.array([[0, 2]]))
    assert m["agreement"] == 1.0 and math.isclose(m["ppl_ratio"], 1.0)
    assert math.isclose(m["ppl"], math.exp(-(math.log(0.7) + math.log(0.8)) / 2))


@pytest.mark.parametrize("kind", ["float64", "fixed", "mpc"])
def test_crypten_max_and_weighted_index(kind):
    """CrypTen's log-reduction max (with its pairwise step and argmax one-hot) returns the exact maximum, ties
    included; weighted_index keeps exactly one of the 1-bits of each row (none for an all-zero row)."""
    ops = P.make_ops(kind, random_state=0)
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(2, 3, 16)) * 3, 2)
    x[0, 0, :] = 1.5  # a row of ties
    assert np.allclose(ops.dec(P.row_max_crypten(ops, ops.enc(x)))[..., 0], x.max(-1), atol=1e-4)
    bits = (x > 0).astype(np.int64)
    bits[1, 2, :] = 0
    oh = P.weighted_index(ops, ops.enc_int(bits) if kind != "float64" else bits.astype(float))
    oh = np.asarray(ops.rss.reconstruct(oh).view(np.int64) if kind == "mpc" else (oh if kind == "float64" else oh.view(np.int64)))
    assert np.array_equal(oh.sum(-1), bits.any(-1).astype(int)) and np.all(oh[bits == 0] == 0)


def test_crypten_gelu_follows_crypten_sigmoid_config():
    """CrypTen's sigmoid (exp 9 iterations, 3 Newton steps from 0.75) is accurate: tanh-GeLU within 1e-3 on [-10, 10];
    it uses one comparison per element, PUMA's GeLU three."""
    grid = np.linspace(-10, 10, 20001)
    assert np.abs(P.gelu_crypten(P.Float64Ops(), grid) - P.gelu_exact(grid)).max() < 1e-3
    fx = P.FixedOps(18)
    assert np.abs(fx.dec(P.gelu_crypten(fx, fx.enc(grid))) - P.gelu_exact(grid)).max() < 1.5e-3
    assert P.communication(P.gelu_crypten, (4, 8))["ltz_per_element"] == 1.0
    assert P.communication(P.gelu_puma, (4, 8))["ltz_per_element"] == 3.0
    with pytest.raises(ValueError):
        P.softmax_crypten(P.Float64Ops(), np.zeros((2, 2)), max_method="argsort")


def test_forward_exact_uses_an_untied_head():
    from common.tinylm import TinyGPT, TinyGPTConfig

    torch.manual_seed(3)
    model = TinyGPT(TinyGPTConfig(60, d_model=32, n_layers=2, n_heads=2, context=16, tie_embeddings=False)).eval()
    tokens = np.array([[1, 10, 40, 41, 42, 6]])
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).double().numpy()
    exact = P.forward(P.Float64Ops(), P.model_params(model), model.config, tokens, "exact", "exact", "exact")
    assert np.abs(exact - ref).max() < 1e-4
