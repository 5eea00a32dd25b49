"""Tests of the sample-quality metrics and the digits classifier (common/diffusion/metrics.py, classifier.py)."""

import math

import numpy as np
import pytest
import torch

from common.diffusion import metrics
from common.diffusion.classifier import DigitsCNN, random_shift


def _gauss(n, mean, cov, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def test_fd_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(metrics.frechet_distance(a, a)) < 1e-8
    assert abs(metrics.frechet_distance_eig(a, a)) < 1e-8


def test_fd_matches_closed_form_of_two_gaussians():
    # commuting (diagonal) covariances: FD = |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    rng = np.random.default_rng(1)
    d = 6
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    a = _gauss(200000, mu_a, np.diag(s_a), 2)
    b = _gauss(200000, mu_b, np.diag(s_b), 3)
    exact = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(s_a) - np.sqrt(s_b)) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(exact, rel=2e-2, abs=2e-2)


def test_fd_sqrtm_agrees_with_independent_eigenvalue_formula():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))
    b = rng.normal(size=(400, 10)) @ rng.normal(size=(10, 10)) + 0.5
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance_eig(a, b), rel=1e-8)


def test_kid_is_unbiased_for_the_same_distribution_and_positive_for_different():
    rng = np.random.default_rng(5)
    same = [metrics.kid(rng.normal(size=(100, 4)), rng.normal(size=(100, 4))) for _ in range(200)]
    spread = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 4 * spread
    assert metrics.kid(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 1.0) > 20 * spread


def test_kid_matches_explicit_double_loop():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    aa = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / 42
    bb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    ab = sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert metrics.kid(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-12)
    mean, std = metrics.kid_subsets(a, b, n_subsets=3, subset_size=4)
    assert np.isfinite(mean) and std >= 0


def test_rmse_psnr_and_class_coverage_on_known_values():
    a = torch.zeros(4, 64)
    b = torch.full((4, 64), 0.2)
    assert metrics.rmse(a, b) == pytest.approx(0.2)
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(2.0 / 0.2))
    assert metrics.psnr(a, a) == math.inf
    assert metrics.class_coverage_tv(torch.arange(10)) == pytest.approx(0.0)
    assert metrics.class_coverage_tv(torch.zeros(10, dtype=torch.long)) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        metrics.rmse(a, b[:2])
    with pytest.raises(ValueError):
        metrics.class_coverage_tv(torch.tensor([11]))


def test_classifier_shapes_and_shift_augmentation():
    net = DigitsCNN()
    x = torch.rand(5, 64) * 2 - 1
    assert net.features(x).shape == (5, 32) and net(x).shape == (5, 10)
    shifted = random_shift(x, torch.Generator().manual_seed(0), max_shift=0)
    assert torch.equal(shifted, x)
    with pytest.raises(ValueError):
        net.features(torch.zeros(5, 63))


def test_committed_classifier_accuracy_and_noise_floor():
    from common.diffusion.data import load_digits_split

    feats = metrics.DigitsFeatures.load()
    split = load_digits_split()
    acc = float((feats.predict(split.x_heldout) == split.y_heldout).double().mean())
    assert acc >= 0.97
    assert feats.features(split.x_heldout).shape == (297, 32)
    floor = metrics.noise_floor()
    assert floor["fd_heldout_vs_train"] == pytest.approx(feats.net.manifest["evaluation"]["noise_floor"]["fd_heldout_vs_train"], rel=1e-6)
    assert metrics.fd_to_train(split.x_train) == pytest.approx(0.0, abs=1e-6)



def test_train_features_is_the_fd_reference():
    """The public train feature set: FD of features to it equals fd_to_train of the digits; cached once."""
    from common.diffusion.data import load_digits_split

    split = load_digits_split()
    train = metrics.train_features()
    assert train.dtype == torch.float64 and train.shape == (len(split.x_train), 32)
    assert metrics.train_features() is train
    feat = metrics.DigitsFeatures.load().features(split.x_heldout)
    assert metrics.frechet_distance(feat, train) == metrics.fd_to_train(split.x_heldout)
    assert np.allclose(metrics.train_feature_stats()[0], train.mean(0).numpy())

def test_standardise_by_reference_statistics():
    rng = np.random.default_rng(7)
    ref = rng.normal(3.0, 5.0, size=(400, 4))
    ref[:, 3] = 2.0  # a constant feature: std 0 is replaced by 1, not a division by zero
    stats = metrics.feature_stats(ref)
    z = metrics.standardise_by(ref, stats)
    assert np.allclose(z.mean(0), 0, atol=1e-12)
    assert np.allclose(z.std(0)[:3], 1, atol=1e-12) and np.all(z[:, 3] == 0)


def test_kid_to_train_is_small_for_real_digits_and_large_for_a_different_set():
    """KID on train-standardised features: held-out vs train near 0; a visibly different set far above it."""
    from common.diffusion.data import load_digits_split

    split = load_digits_split()
    floor = metrics.noise_floor()["kid_heldout_vs_train"]
    assert abs(floor) < 0.05  # was -1331 on the raw features
    # two disjoint halves of the train split: the same distribution, KID within noise of 0
    perm = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(0))
    feats = metrics.DigitsFeatures.load()
    stats = metrics.train_feature_stats()
    half_a, half_b = (metrics.standardise_by(feats.features(split.x_train[p]), stats) for p in (perm[:750], perm[750:]))
    same = metrics.kid(half_a, half_b)
    assert abs(same) < 0.05
    # only the digits 0-4: a clearly different distribution
    different = metrics.kid_to_train(split.x_train[split.y_train < 5])
    assert different > 0.2 and different > 10 * max(abs(floor), abs(same))
    # uniform noise: far from digits, and still of order one (no 1e5 blow-up of the cubic kernel)
    noise = metrics.kid_to_train(torch.rand(300, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert different < noise < 100
    # FD is unchanged by the standardisation (still the raw features)
    assert metrics.fd_to_train(split.x_heldout) == pytest.approx(4.669152673003282, rel=1e-6)


def test_gmm_metrics():
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import gmm_log_density, responsibility_tv
    from common.diffusion.twins import GMMTwin

    d = load_digits_split()
    twin = GMMTwin.fit(d.x_train, d.y_train)
    x, labels = twin.sample(2000, generator=torch.Generator().manual_seed(0))
    assert responsibility_tv(twin, x, x) == 0.0
    assert responsibility_tv(twin, x) < 0.05  # samples of the mixture cover its modes at its weights
    one_mode, _ = twin.sample(500, y=3, generator=torch.Generator().manual_seed(1))
    assert responsibility_tv(twin, one_mode) > 0.8  # all mass on one of ten roughly equal modes
    noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    assert gmm_log_density(twin, noisy) < gmm_log_density(twin, x)
    assert 0 < responsibility_tv(twin, noisy, x) <= 1
    with pytest.raises(ValueError):
        responsibility_tv(twin, x, x[:10])


def test_kid_to_train_equals_kid_bit_for_bit():
    """kid_to_train caches the train split's within-set term; the value must equal the uncached kid() exactly."""
    x = torch.rand(60, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    stats = metrics.train_feature_stats()
    reference = metrics.standardise_by(metrics.train_features(), stats)
    direct = metrics.kid(metrics.standardise_by(metrics.DigitsFeatures.load().features(x), stats), reference)
    assert metrics.kid_to_train(x) == direct
    assert metrics.kid_to_train(x[:30]) != direct  # a different set gives a different value (the check can fail)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid_to_train(x[:1])
