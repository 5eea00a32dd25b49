"""Tests of common/mpc.py: fixed-point codec, replicated sharing, products, truncation, counted costs."""

import numpy as np
import pytest

from common.mpc import COST_MODEL, RSS3, FixedPoint


def test_codec_roundtrip_and_range():
    fxp = FixedPoint(18)
    x = np.array([0.0, 1.0, -1.0, 3.25, -1234.5, 2.0**-18])
    assert np.array_equal(fxp.decode(fxp.encode(x)), x)  # dyadic values are exact
    y = np.random.default_rng(0).normal(size=1000) * 100
    assert np.abs(fxp.decode(fxp.encode(y)) - y).max() <= 2.0**-19
    with pytest.raises(ValueError):
        fxp.encode([2.0**50])
    with pytest.raises(ValueError):
        fxp.encode([np.nan])
    with pytest.raises(ValueError):
        FixedPoint(40)


def test_codec_truncation_is_floor():
    fxp = FixedPoint(4)
    u = np.array([35, -35], dtype=np.int64).view(np.uint64)  # 35/16 and -35/16 at 4 bits
    assert fxp.truncate(u, 4).view(np.int64).tolist() == [2, -3]


def test_reconstruct_share_is_exact_and_views_look_uniform():
    m = RSS3(18, random_state=1)
    u = np.random.default_rng(2).integers(0, 2**64, size=(50, 7), dtype=np.uint64)
    s = m.share_ring(u)
    assert np.array_equal(m.reconstruct(s), u)
    assert m.cost.bytes == 0 and m.cost.rounds == 0  # sharing and reconstruction by the simulator are free
    # a single party's view of a constant secret: its top bits are balanced (not a security proof)
    view = m.share_ring(np.zeros(20000, dtype=np.uint64)).party_view(0)[0]
    assert abs(np.mean(view >> np.uint64(63)) - 0.5) < 0.02


def test_local_operations_are_free_and_exact():
    m = RSS3(18, random_state=3)
    x, y = np.array([1.5, -2.25]), np.array([0.5, 4.0])
    a, b = m.share(x), m.share(y)
    assert np.array_equal(m.decode(m.add(a, b)), x + y)
    assert np.array_equal(m.decode(m.sub(a, b)), x - y)
    assert np.array_equal(m.decode(m.add_public(a, 0.75)), x + 0.75)
    assert np.array_equal(m.decode(m.neg(a)), -x)
    assert m.cost.bytes == 0


def test_multiplication_exact_before_truncation_and_costs():
    m = RSS3(18, random_state=4)
    x, y = np.array([[1.5, -2.0, 0.25]]), np.array([[2.0, 3.0, -4.0]])
    prod = m.mul(m.share(x), m.share(y))  # 2f fractional bits, exact
    assert np.array_equal(m.fxp.decode(m.reconstruct(prod)) / 2**18, x * y)
    assert m.cost.bytes == 3 * 8 * 3 and m.cost.rounds == 1  # three ring elements per product, one round
    ints = m.mul(m.share(x), m.share_int(np.array([[1, 0, -1]])))
    assert np.array_equal(m.decode(ints), x * [1, 0, -1])


def test_matmul_and_truncation_error_bound():
    m = RSS3(18, random_state=5)
    rng = np.random.default_rng(6)
    x, w = rng.normal(size=(4, 6, 8)), rng.normal(size=(8, 5))
    out = m.matmul_fx(m.share(x), m.share(w))
    ref = m.fxp.decode(m.fxp.encode(x)) @ m.fxp.decode(m.fxp.encode(w))
    assert np.abs(m.decode(out) - ref).max() <= 2 * 2.0**-18  # floor plus the protocol's +-1 ulp
    assert m.cost.by_op["mul"][1] == 4 * 6 * 5 and m.cost.by_op["trunc"][1] == 4 * 6 * 5
    assert m.cost.rounds == 2 and m.cost.bytes == 2 * 3 * 8 * 120
    assert m.large_trunc_errors == 0 and m.n_truncations == 120


def test_truncation_is_off_by_at_most_one_ulp():
    m = RSS3(18, random_state=7)
    x = np.random.default_rng(8).normal(size=5000) * 50
    enc = m.fxp.encode(x) * np.uint64(2**18)  # 2f fractional bits
    got = m.reconstruct(m.truncate(m.share_ring(enc))).view(np.int64)
    exact = m.fxp.encode(x).view(np.int64)
    assert np.abs(got - exact).max() <= 1


def test_ideal_comparison_and_normalize():
    m = RSS3(18, random_state=9)
    x = np.array([-3.0, -1e-5, 0.0, 2.5])
    bit = m.reconstruct(m.ltz(m.share(x))).view(np.int64)
    assert bit.tolist() == [1, 1, 0, 0]
    assert m.cost.bytes == COST_MODEL["ltz"][0] * 4 // 8 and m.cost.rounds == COST_MODEL["ltz"][1]
    v = np.array([0.3, 5.0, 1.0, 100.0])
    factor, comp = m.normalize(m.share(v), offset=0)
    u = v * m.decode(factor)
    assert np.all((u >= 0.5) & (u < 1.0))
    assert np.allclose(m.decode(comp) ** 2, m.decode(factor), rtol=1e-4)
    with pytest.raises(ValueError):
        m.normalize(m.share(np.array([-1.0])))


def test_same_seed_same_shares():
    a, b = RSS3(18, random_state=11), RSS3(18, random_state=11)
    assert np.array_equal(a.share([1.0, 2.0]).comps, b.share([1.0, 2.0]).comps)


def test_truncation_has_no_large_failures_near_the_range_limit():
    m = RSS3(18, random_state=12)
    rng = np.random.default_rng(13)
    # values with 2f fractional bits up to 2^61 in magnitude: plain Pi_trunc2 would fail about 1 in 4 of these
    raw = (rng.uniform(-1, 1, size=20000) * 2.0**61).astype(np.int64)
    got = m.reconstruct(m.truncate(m.share_ring(raw.view(np.uint64)))).view(np.int64)
    assert np.abs(got - (raw >> 18)).max() <= 1
    assert m.large_trunc_errors == 0
