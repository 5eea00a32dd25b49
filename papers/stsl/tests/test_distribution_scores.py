"""FD32/KID of restorations (``experiments.distribution_scores``): pooling, the truth reference, the jackknife."""

import numpy as np
import pytest
import torch

from common.diffusion import load_digits_split
from common.diffusion.metrics import frechet_distance, kid_to_train, train_features
from common.digits16 import load_digits16_split
from papers.stsl.experiments import digit_features, distribution_scores


@pytest.fixture(scope="module")
def digits():
    return load_digits_split().x_heldout[:32]


def test_a_perfect_restorer_scores_the_truth_and_noise_scores_worse(digits):
    n_seeds = 2
    perfect = digits.repeat(n_seeds, 1)
    g = torch.Generator().manual_seed(0)
    noisy = (perfect + 0.8 * torch.randn(perfect.shape, generator=g)).clamp(-1, 1)
    d = distribution_scores({"perfect": perfect, "noisy": noisy}, digits, n_seeds,
                            pairs=[("perfect", "truth"), ("noisy", "perfect")])
    assert d["fd"]["perfect"] == d["fd"]["truth"] and d["kid"]["perfect"] == d["kid"]["truth"]
    iv = d["fd_diff"]["perfect_minus_truth"]
    assert iv.estimate == iv.lo == iv.hi == 0.0 and iv.n == len(digits)
    worse = d["fd_diff"]["noisy_minus_perfect"]
    assert worse.estimate > 0 and worse.lo > 0  # heavy pixel noise is decided as worse
    assert d["kid"]["noisy"] > d["kid"]["perfect"]
    # the same numbers as the shared metrics (FD32 and KID to the train split)
    assert d["fd"]["noisy"] == pytest.approx(frechet_distance(digit_features(noisy), train_features()), rel=1e-12)
    assert d["kid"]["noisy"] == pytest.approx(kid_to_train(noisy), rel=1e-9, abs=1e-12)


def test_the_jackknife_interval_is_centred_on_the_estimate(digits):
    g = torch.Generator().manual_seed(1)
    base = digits.repeat(2, 1)
    a = (base + 0.3 * torch.randn(base.shape, generator=g)).clamp(-1, 1)
    b = (base + 0.3 * torch.randn(base.shape, generator=g)).clamp(-1, 1)
    iv = distribution_scores({"a": a, "b": b}, digits, 2, pairs=[("a", "b")])["fd_diff"]["a_minus_b"]
    assert iv.lo < iv.estimate < iv.hi
    assert np.isclose((iv.lo + iv.hi) / 2, iv.estimate)


def test_16x16_restorations_are_scored_through_to_digits8():
    split16, split8 = load_digits16_split(), load_digits_split()
    np.testing.assert_allclose(digit_features(split16.x_heldout[:8]), digit_features(split8.x_heldout[:8]), atol=1e-5)


def test_validation(digits):
    with pytest.raises(ValueError, match="expected n_seeds x n_images"):
        distribution_scores({"a": digits}, digits, 2)
    with pytest.raises(ValueError, match="64 or 256 pixels"):
        digit_features(torch.zeros(3, 100))
