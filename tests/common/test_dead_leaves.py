import numpy as np
import pytest

from common.dead_leaves import dead_leaves, sample_leaves, sample_radii
from common.spectra import radial_power_spectrum


def test_seeded_shape_range():
    a = dead_leaves(8, 16, 3)
    b = dead_leaves(8, 16, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 16, 16) and a.dtype == np.float32
    assert a.min() >= -1 and a.max() <= 1
    assert not np.array_equal(a, dead_leaves(8, 16, 4))


def test_piecewise_constant():
    # occluding discs: few distinct values per image, far fewer than pixels
    x = dead_leaves(4, 32, 0)
    for img in x:
        assert len(np.unique(img)) < 0.5 * img.size


def test_radius_distribution():
    rng = np.random.default_rng(0)
    r = sample_radii(200_000, 1.0, 16.0, rng)
    assert r.min() >= 1 and r.max() <= 16
    # P(r > 2) = (2^-2 - 16^-2) / (1 - 16^-2) for p(r) ∝ r^-3
    assert np.mean(r > 2) == pytest.approx((0.25 - 16 ** -2) / (1 - 16 ** -2), abs=0.005)
    rr, cx, cy = sample_leaves(1000, 32, 1.0, 16.0, rng)
    assert np.all(cx >= -rr) and np.all(cx <= 31 + rr) and np.all(cy >= -rr)


def test_spectral_slope_near_minus_two():
    x = dead_leaves(400, 32, 1)
    radii, power = radial_power_spectrum(x)
    slope = np.polyfit(np.log(radii[1:]), np.log(power[1:]), 1)[0]
    assert -2.5 < slope < -1.5


def test_errors():
    with pytest.raises(ValueError):
        dead_leaves(0, 16)
    with pytest.raises(ValueError):
        sample_radii(3, 2.0, 1.0, np.random.default_rng(0))
