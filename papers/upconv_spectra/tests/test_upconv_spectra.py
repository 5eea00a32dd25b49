import pytest

from papers.upconv_spectra.upconv_spectra import monte_carlo_mean


def test_deterministic():
    assert monte_carlo_mean(100, random_state=1) == monte_carlo_mean(100, random_state=1)


def test_rejects_empty_sample():
    with pytest.raises(ValueError):
        monte_carlo_mean(0)
