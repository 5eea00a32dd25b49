import numpy as np
import pytest
import torch

from common.spectra import (
    azimuthal_average,
    bin_matrix,
    high_frequency_error,
    radial_power_spectrum,
    spectral_profile,
    spectral_profile_torch,
    to_grey,
)


def _official_azimuthal_average(image):
    """The official cumulative-sum algorithm (radialProfile.azimuthalAverage), restated for the test."""
    y, x = np.indices(image.shape)
    center = np.array([(x.max() - x.min()) / 2.0, (y.max() - y.min()) / 2.0])
    r = np.hypot(x - center[0], y - center[1])
    ind = np.argsort(r.flat, kind="stable")
    r_int = r.flat[ind].astype(int)
    i_sorted = image.flat[ind]
    rind = np.where(r_int[1:] - r_int[:-1])[0]
    csim = np.cumsum(i_sorted, dtype=float)
    return (csim[rind[1:]] - csim[rind[:-1]]) / (rind[1:] - rind[:-1])


def _loop_average(image, center):
    h, w = image.shape
    sums, counts = {}, {}
    for yy in range(h):
        for xx in range(w):
            k = int(np.floor(np.hypot(xx - center[0], yy - center[1])))
            sums[k] = sums.get(k, 0.0) + image[yy, xx]
            counts[k] = counts.get(k, 0) + 1
    return np.array([sums[k] / counts[k] for k in sorted(sums)])


@pytest.mark.parametrize("size", [8, 16, 32, 33, 64])
def test_azimuthal_average_matches_loop_and_official(size):
    img = np.random.default_rng(size).normal(size=(size, size))
    full = azimuthal_average(img, official=False)
    np.testing.assert_allclose(full, _loop_average(img, ((size - 1) / 2, (size - 1) / 2)), rtol=1e-12)
    np.testing.assert_allclose(azimuthal_average(img), _official_azimuthal_average(img), rtol=1e-10)
    np.testing.assert_allclose(azimuthal_average(img), full[1:-1])


def test_official_bin_counts():
    # the official code's N = 88 for 128x128 images; 43 for 64x64, 20 for 32x32
    for size, n in [(128, 88), (64, 43), (32, 20)]:
        assert spectral_profile(np.zeros((1, size, size)) + np.eye(size)).shape == (1, n)


def test_constant_image_profile_and_custom_center():
    img = np.full((9, 9), 3.0)
    np.testing.assert_allclose(azimuthal_average(img, center=(4, 4), official=False), 3.0)
    # a radial function is recovered exactly by its bins
    y, x = np.indices((9, 9))
    r = np.floor(np.hypot(x - 4, y - 4)).astype(int)
    np.testing.assert_allclose(azimuthal_average(r.astype(float), center=(4, 4), official=False), np.arange(r.max() + 1))


def test_profile_normalised_and_grey():
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 3, 16, 16))
    p = spectral_profile(x)
    np.testing.assert_allclose(p.min(1), 0)
    np.testing.assert_allclose(p.max(1), 1)
    g = to_grey(x)
    np.testing.assert_allclose(g, 0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2])
    np.testing.assert_allclose(spectral_profile(g), p)


@pytest.mark.parametrize("channels", [1, 3])
def test_torch_profile_matches_numpy_and_is_differentiable(channels):
    x = torch.rand(4, channels, 16, 16, dtype=torch.float64, requires_grad=True)
    pt = spectral_profile_torch(x)
    np.testing.assert_allclose(pt.detach().numpy(), spectral_profile(x.detach()), atol=1e-10)
    pt[:, -3:].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bin_matrix_rows_average():
    m = bin_matrix(8, official=False)
    np.testing.assert_allclose(m.sum(0).numpy(), 1.0)
    assert m.shape[0] == 64


def test_high_frequency_error():
    a = np.zeros((3, 8))
    b = np.zeros((2, 8))
    b[:, -2:] = 0.5
    assert high_frequency_error(a, b, 0.25) == pytest.approx(0.5)
    assert high_frequency_error(a, b, 0.5) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        high_frequency_error(a, np.zeros((2, 7)))
    with pytest.raises(ValueError):
        high_frequency_error(a, b, 0)


def test_radial_power_spectrum_of_a_pure_tone():
    n = 32
    y, x = np.indices((n, n))
    img = np.cos(2 * np.pi * 5 * x / n)[None]
    radii, power = radial_power_spectrum(img)
    assert radii[np.argmax(power)] == 5


def test_errors():
    with pytest.raises(ValueError):
        azimuthal_average(np.zeros(5))
    with pytest.raises(ValueError):
        to_grey(np.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError):
        spectral_profile_torch(torch.zeros(2, 4, 6))
