"""FD32/KID of restorations (``experiments.distribution_scores``): pooling, the truth reference, the jackknife."""

import numpy as np
import pytest
import torch

from common import stats
from common.diffusion import load_digits_split
from common.diffusion.metrics import frechet_distance, kid_to_train, train_features
from common.digits16 import load_digits16_split
from papers.stsl.experiments import digit_features, distribution_scores, jackknife_difference


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
    # the shared metrics (FD32 and KID to the train split), per seed block, averaged
    blocks = noisy.reshape(n_seeds, len(digits), 64)
    fd = np.mean([frechet_distance(digit_features(b), train_features()) for b in blocks])
    assert d["fd"]["noisy"] == pytest.approx(fd, rel=1e-12)
    assert d["kid"]["noisy"] == pytest.approx(np.mean([kid_to_train(b) for b in blocks]), rel=1e-9, abs=1e-12)


def test_the_jackknife_of_a_mean_is_the_t_interval_of_the_per_digit_means():
    """For a linear score (a mean over rows) the delete-one-digit jackknife is exact: no bias correction, and its
    standard error is that of the per-digit (seed-averaged) differences, so the interval is their Student-t one."""
    rng = np.random.default_rng(0)
    n_images, n_seeds = 20, 3
    fa, fb = rng.normal(size=(n_seeds * n_images, 4)), rng.normal(0.3, 1.0, size=(n_seeds * n_images, 4))
    iv = jackknife_difference(lambda f: float(f[:, 0].mean()), fa, fb, n_images, n_seeds)
    per_digit = (fa[:, 0] - fb[:, 0]).reshape(n_seeds, n_images).mean(0)  # seed-major rows
    t = stats.paired_difference(per_digit, np.zeros(n_images))
    assert iv.estimate == pytest.approx(t.estimate, abs=1e-12)  # a linear score: the jackknife has no bias to remove
    assert (iv.lo, iv.hi) == pytest.approx((t.lo, t.hi), abs=1e-12)


def test_rows_are_read_seed_major(digits):
    """A perfect restorer, seed-major, scores the truth exactly and every jackknife difference to it is 0; the same
    rows digit-major (the wrong order) put two copies of a digit in one seed's set, and score otherwise."""
    n_seeds = 2
    seed_major = digits.repeat(n_seeds, 1)
    digit_major = digits.repeat_interleave(n_seeds, 0)
    d = distribution_scores({"seed": seed_major, "digit": digit_major}, digits, n_seeds,
                            pairs=[("seed", "truth"), ("digit", "truth")])
    right, wrong = d["fd_diff"]["seed_minus_truth"], d["fd_diff"]["digit_minus_truth"]
    assert right.estimate == right.lo == right.hi == 0.0
    assert abs(wrong.estimate) > 1e-3 and wrong.hi - wrong.lo > 1e-3


def test_variety_across_seeds_alone_is_not_a_difference(digits):
    """Two arms from one population (digit + pixel noise): fresh noise per seed, or one draw repeated for every seed.
    Scored per seed, both are sets of one noisy restoration per digit: the difference is within its interval, and the
    same for either order of the seeds' draws. (Pooled, FD would have told them apart: the referee's case.)"""
    n_seeds = 3
    g = torch.Generator().manual_seed(2)
    fresh = (digits.repeat(n_seeds, 1) + 0.15 * torch.randn(n_seeds * len(digits), 64, generator=g)).clamp(-1, 1)
    once = fresh[: len(digits)].repeat(n_seeds, 1)
    d = distribution_scores({"fresh": fresh, "once": once}, digits, n_seeds, pairs=[("once", "fresh")])
    fd, kid = d["fd_diff"]["once_minus_fresh"], d["kid_diff"]["once_minus_fresh"]
    assert fd.lo < 0 < fd.hi and kid.lo < 0 < kid.hi
    first = distribution_scores({"x": fresh[: len(digits)]}, digits, 1)
    assert d["fd"]["once"] == pytest.approx(first["fd"]["x"], rel=1e-12)  # seed blocks scored separately


def test_16x16_restorations_are_scored_through_to_digits8():
    split16, split8 = load_digits16_split(), load_digits_split()
    np.testing.assert_allclose(digit_features(split16.x_heldout[:8]), digit_features(split8.x_heldout[:8]), atol=1e-5)


def test_validation(digits):
    with pytest.raises(ValueError, match="expected n_seeds x n_images"):
        distribution_scores({"a": digits}, digits, 2)
    with pytest.raises(ValueError, match="64 or 256 pixels"):
        digit_features(torch.zeros(3, 100))
