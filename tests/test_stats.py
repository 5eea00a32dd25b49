"""common/stats.py: intervals that cover, tests that are exact, clear errors."""

import numpy as np
import pytest
from scipy import stats as sps

from common import stats


def test_paired_difference_t_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, 8)
    b = a - rng.normal(0.3, 0.2, 8)
    got = stats.paired_difference(a, b, confidence=0.9)
    d = a - b
    lo, hi = sps.t.interval(0.9, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert got.estimate == pytest.approx(d.mean())
    assert (got.lo, got.hi) == pytest.approx((lo, hi))
    assert got.excludes(0.0)


def test_interval_coverage_is_nominal():
    rng = np.random.default_rng(1)
    covered_t = covered_b = 0
    for k in range(300):
        a, b = rng.normal(0.5, 1.0, 10), rng.normal(0.0, 1.0, 10)
        covered_t += not stats.paired_difference(a, b).excludes(0.5)
        covered_b += not stats.paired_difference(a, b, method="bootstrap", n_resamples=500, random_state=k).excludes(0.5)
    assert 0.91 < covered_t / 300 < 0.985
    assert 0.86 < covered_b / 300 < 0.98  # the percentile bootstrap under-covers a little at n = 10


def test_ratio_of_means_and_sign_test():
    a = np.array([2.0, 2.2, 1.9, 2.1, 2.05])
    b = np.array([1.0, 1.1, 0.95, 1.0, 1.02])
    r = stats.ratio_of_means(a, b)
    assert r.estimate == pytest.approx(a.mean() / b.mean())
    assert r.lo < r.estimate < r.hi and r.lo > 1.5
    assert stats.sign_test(a, b) == pytest.approx(0.0625)  # 5 of 5: the smallest p-value five seeds allow
    assert stats.sign_test(a, a) == 1.0


def test_loglog_slope_recovers_a_rate():
    x = np.array([100, 200, 400, 800, 1600])
    y = 3.0 / x * np.exp(np.random.default_rng(2).normal(0, 0.05, 5))
    s = stats.loglog_slope(x, y)
    assert s.lo < -1.0 < s.hi and s.hi - s.lo < 0.3


@pytest.mark.parametrize("call, message", [
    (lambda: stats.paired_difference([1.0], [0.0]), "one seed decides nothing"),
    (lambda: stats.paired_difference([1.0, 2.0], [0.0]), "one value per seed"),
    (lambda: stats.paired_difference([1.0, np.nan], [0.0, 1.0]), "NaN"),
    (lambda: stats.paired_difference([1.0, 2.0], [0.0, 1.0], method="z"), "method must be"),
    (lambda: stats.mean_interval([1.0, 2.0], confidence=95), "confidence"),
    (lambda: stats.ratio_of_means([1.0, 2.0], [-1.0, -2.0]), "mean\\(b\\) > 0"),
    (lambda: stats.loglog_slope([1, 2, 3], [1, 0, 2]), "positive"),
    (lambda: stats.paired_difference([[1.0, 2.0]], [[0.0, 1.0]]), "1-D"),
])
def test_errors_are_clear(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_ratio_delta_interval_covers_with_few_seeds():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(400):
        a, b = 2 * rng.lognormal(0, 0.3, 5), rng.lognormal(0, 0.3, 5)
        covered += not stats.ratio_of_means(a, b).excludes(2.0)
    assert 0.91 < covered / 400 < 0.99


def test_small_bootstrap_warns():
    with pytest.warns(UserWarning, match="under-covers"):
        stats.paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 1.5], method="bootstrap", n_resamples=200)
