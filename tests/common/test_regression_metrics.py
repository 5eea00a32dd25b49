"""Exact small cases for common/regression_metrics.py, cross-checked against scipy and scikit-learn."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import auc, average_precision_score, mean_squared_error

from common import regression_metrics as rm


def test_mape_exact():
    assert rm.mape([1.0, 2.0, 4.0], [1.5, 2.0, 3.0]) == pytest.approx(100 * (0.5 + 0 + 0.25) / 3)


def test_mape_rejects_zero_target():
    with pytest.raises(ValueError, match="zero target"):
        rm.mape([0.0, 1.0], [1.0, 1.0])


def test_rse_exact_and_baselines():
    y = np.array([1.0, 2.0, 3.0])
    assert rm.rse(y, y) == 0.0
    assert rm.rse(y, np.full(3, y.mean())) == pytest.approx(1.0)  # predicting the mean
    assert rm.rse(y, [1.0, 2.0, 4.0]) == pytest.approx(np.sqrt(1 / 2))


def test_rmse_matches_sklearn():
    rng = np.random.default_rng(0)
    y, mu = rng.normal(size=50), rng.normal(size=50)
    assert rm.rmse(y, mu) == pytest.approx(np.sqrt(mean_squared_error(y, mu)))


def test_nlpd_matches_scipy_logpdf():
    rng = np.random.default_rng(1)
    y, mu, s = rng.normal(size=40), rng.normal(size=40), rng.uniform(0.1, 2.0, size=40)
    assert rm.nlpd(y, mu, s) == pytest.approx(-stats.norm.logpdf(y, mu, s).mean(), rel=1e-12)
    assert rm.nlpd([0.0], [0.0], [1.0]) == pytest.approx(0.5 * np.log(2 * np.pi))
    with pytest.raises(ValueError, match="positive"):
        rm.nlpd([0.0], [0.0], [0.0])


def test_picp_exact_and_calibrated():
    # |y - mu| = 0.5, 1.5, 0.9 with sigma 1: inside the 1-sigma band for 0.5 and 0.9
    assert rm.picp([0.5, 1.5, 0.9], [0, 0, 0], 1.0, level=stats.norm.cdf(1) - stats.norm.cdf(-1)) == pytest.approx(2 / 3)
    rng = np.random.default_rng(2)
    s = rng.uniform(0.5, 2.0, size=200_000)
    y = s * rng.standard_normal(s.size)
    assert rm.picp(y, 0.0, s, 0.6827) == pytest.approx(0.6827, abs=0.004)
    assert rm.picp(y, 0.0, s, 0.95) == pytest.approx(0.95, abs=0.003)
    with pytest.raises(ValueError, match="level"):
        rm.picp(y, 0.0, s, 1.0)


def test_pr_auc_matches_sklearn_and_exact_case():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # ranking 0.8(+), 0.4(-), 0.35(+), 0.1(-): AP = 0.5*1 + 0.5*(2/3)
    assert rm.pr_auc(labels, scores) == pytest.approx(0.5 + 1 / 3)
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 2, 300)
    sc = lab + rng.normal(size=300)
    assert rm.pr_auc(lab, sc) == average_precision_score(lab, sc)
    p, r, _ = rm.precision_recall(lab, sc)
    assert auc(r, p) == pytest.approx(rm.pr_auc(lab, sc), abs=0.02)
    assert rm.pr_auc([0, 1, 1], [0.0, 1.0, 2.0]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        rm.pr_auc([1, 1], [0.2, 0.3])


def test_shape_checks():
    with pytest.raises(ValueError, match="length"):
        rm.rmse([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        rm.rmse([1.0, np.nan], [1.0, 2.0])
