"""Point-accuracy and calibration metrics for regressors with Gaussian predictive distributions.

Every function takes 1-D arrays of the same length: the targets ``y``, the predicted means
``mu`` and, for the probabilistic metrics, the predicted standard deviations ``sigma`` (> 0).

- :func:`mape` — mean absolute percentage error, ``100/n Σ |1 - mu_i / y_i|`` (targets must be
  non-zero).
- :func:`rse` — root relative squared error, ``sqrt(Σ (y - mu)² / Σ (y - ȳ)²)``: 1 is the error of
  predicting the mean of the targets, 0 a perfect fit.
- :func:`nlpd` — mean negative log predictive density of ``y_i`` under ``N(mu_i, sigma_i²)``
  (Quiñonero-Candela et al. 2006): ``1/n Σ [(y - mu)²/(2 sigma²) + log sigma + ½ log 2π]``.
- :func:`picp` — prediction interval coverage probability: the fraction of targets inside the
  central interval of probability ``level`` of ``N(mu_i, sigma_i²)``, i.e. ``|y - mu| <= z sigma``
  with ``z = Φ⁻¹((1 + level)/2)``. A calibrated model has ``picp ≈ level``.
- :func:`pr_auc` — area under the precision-recall curve of scores for binary labels, as
  scikit-learn's ``average_precision_score`` (the step-wise sum ``Σ (R_k - R_{k-1}) P_k``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, precision_recall_curve

__all__ = ["mape", "nlpd", "picp", "pr_auc", "precision_recall", "rmse", "rse"]


def _vectors(*arrays, names):
    out = [np.asarray(a, dtype=float).reshape(-1) if np.ndim(a) else np.asarray(a, dtype=float) for a in arrays]
    n = out[0].size
    if n == 0:
        raise ValueError(f"{names[0]} is empty")
    for a, name in zip(out, names, strict=True):
        if a.ndim > 1 or (a.size not in (1, n)):
            raise ValueError(f"{name} must be a scalar or have the length of {names[0]} ({n}), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains non-finite values")
    return [np.broadcast_to(a, (n,)) for a in out]


def rmse(y, mu) -> float:
    """Root mean squared error ``sqrt(1/n Σ (y - mu)²)``."""
    y, mu = _vectors(y, mu, names=("y", "mu"))
    return float(np.sqrt(np.mean((y - mu) ** 2)))


def mape(y, mu) -> float:
    """Mean absolute percentage error in percent, ``100/n Σ |1 - mu_i / y_i|``."""
    y, mu = _vectors(y, mu, names=("y", "mu"))
    if np.any(y == 0):
        raise ValueError("mape is undefined for a zero target")
    return float(100.0 * np.mean(np.abs(1.0 - mu / y)))


def rse(y, mu) -> float:
    """Root relative squared error ``sqrt(Σ (y - mu)² / Σ (y - ȳ)²)``."""
    y, mu = _vectors(y, mu, names=("y", "mu"))
    denom = np.sum((y - y.mean()) ** 2)
    if denom == 0:
        raise ValueError("rse is undefined for constant targets")
    return float(np.sqrt(np.sum((y - mu) ** 2) / denom))


def nlpd(y, mu, sigma) -> float:
    """Mean negative log density of ``y`` under ``N(mu, sigma²)`` (nats per point)."""
    y, mu, sigma = _vectors(y, mu, sigma, names=("y", "mu", "sigma"))
    if np.any(sigma <= 0):
        raise ValueError("sigma must be positive")
    return float(np.mean((y - mu) ** 2 / (2 * sigma**2) + np.log(sigma) + 0.5 * np.log(2 * np.pi)))


def picp(y, mu, sigma, level: float = 0.6827) -> float:
    """Fraction of ``y`` inside the central ``level`` interval of ``N(mu, sigma²)``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, mu, sigma = _vectors(y, mu, sigma, names=("y", "mu", "sigma"))
    if np.any(sigma < 0):
        raise ValueError("sigma must be non-negative")
    z = stats.norm.ppf(0.5 + level / 2)
    return float(np.mean(np.abs(y - mu) <= z * sigma))


def pr_auc(labels, scores) -> float:
    """Area under the precision-recall curve (scikit-learn's average precision)."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, dtype=float).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape} vs {scores.shape}")
    if np.unique(labels).size != 2:
        raise ValueError("pr_auc needs both classes among the labels")
    return float(average_precision_score(labels, scores))


def precision_recall(labels, scores):
    """The precision-recall curve (precision, recall, thresholds), from scikit-learn."""
    return precision_recall_curve(np.asarray(labels).reshape(-1), np.asarray(scores, dtype=float).reshape(-1))
