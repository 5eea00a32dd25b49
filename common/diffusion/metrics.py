r"""Sample-quality and solver-error metrics for the digits diffusion papers.

**Features.** Two sets of digits are compared in the 32-D bottleneck features of the in-repository
classifier :class:`~common.diffusion.classifier.DigitsCNN` (zoo checkpoint ``digits_classifier``), the
offline stand-in for Inception-v3 features. :class:`DigitsFeatures` wraps it (``.features``, ``.predict``).

**Fréchet distance** (Heusel et al. 2017, Eq. 6; "FD32" here): with means :math:`\mu_a, \mu_b` and
covariances :math:`\Sigma_a, \Sigma_b` of the two feature sets,

.. math:: \mathrm{FD} = \|\mu_a - \mu_b\|^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b - 2(\Sigma_a\Sigma_b)^{1/2}\big).

:func:`frechet_distance` computes the matrix square root with ``scipy.linalg.sqrtm`` (as pytorch-fid);
:func:`frechet_distance_eig` computes :math:`\operatorname{tr}(\Sigma_a\Sigma_b)^{1/2}` independently as
the sum of the square roots of the eigenvalues of the symmetric PSD matrix
:math:`\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}` (same spectrum as :math:`\Sigma_a\Sigma_b`), the cross-check.

**KID** (Bińkowski et al. 2018, Eq. 3 / Sec. 4): the unbiased estimator of the squared MMD with the cubic
polynomial kernel :math:`k(u, v) = (u^\top v / d + 1)^3`,

.. math:: \widehat{\mathrm{MMD}}^2_u = \tfrac{1}{m(m-1)}\sum_{i\ne j} k(a_i, a_j)
   + \tfrac{1}{n(n-1)}\sum_{i\ne j} k(b_i, b_j) - \tfrac{2}{mn}\sum_{i,j} k(a_i, b_j),

whose expectation is exactly 0 when both samples come from the same distribution (it can be negative).
:func:`kid_subsets` gives its mean and standard deviation over random subsets, as in the paper.

**Standardised features for KID.** The cubic kernel is only well scaled when :math:`u^\top v / d` is of order
one (Inception's pool features are small and non-negative). The raw bottleneck features here have norms near 50,
so :math:`(u^\top v/d + 1)^3` reaches ~1e5 and the estimator's variance swamps any signal (the held-out noise
floor was -1331, samples up to 1e5). :func:`kid_to_train` therefore first standardises both feature sets by the
**train** split's per-dimension mean and standard deviation (:func:`train_feature_stats`, computed once per
process; :func:`standardise_by` for any reference set). The held-out noise floor becomes about -0.02 and a
clearly different set (digits 0-4 only) about 0.4. FD (:func:`fd_to_train`) stays on the raw features.

**Reference set and noise floor.** ``fd_to_train`` / ``kid_to_train`` compare samples with the 1500-digit
train split; :func:`noise_floor` gives the same metrics for the 297 *held-out real* digits, the value a
perfect generator would reach at that sample size (FD is biased upward at small N).

**Solver error**: :func:`rmse` and :func:`psnr` (data range 2 for images in [-1, 1]) against a reference
(e.g. the float64 reference ODE solution from the same noise). :func:`class_coverage_tv` is the total
variation distance between a predicted-label histogram and the class frequencies.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import linalg

from common.diffusion.data import N_CLASSES, load_digits_split


def _as_numpy64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array of features [N, d], got shape {a.shape}")
    return a


class DigitsFeatures:
    """The digits classifier as a feature extractor: ``.features(x) -> [N, 32]``, ``.predict(x) -> [N]``."""

    def __init__(self, net):
        self.net = net

    @classmethod
    @functools.cache
    def load(cls, name: str = "digits_classifier") -> DigitsFeatures:
        """Load (once per process) the zoo checkpoint ``name`` (sha256-verified)."""
        from common.diffusion.classifier import load_digits_classifier

        return cls(load_digits_classifier(name))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Bottleneck features, float64 [N, 32], of digits x [N, 64] in [-1, 1] (any float dtype)."""
        x = torch.as_tensor(x).float()
        return torch.cat([self.net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).double()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels [N] (int64)."""
        x = torch.as_tensor(x).float()
        return self.net(x).argmax(1)


def _moments(feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if feat.shape[0] < 2:
        raise ValueError("need at least 2 samples to estimate a covariance")
    return feat.mean(0), np.cov(feat, rowvar=False)


def frechet_distance(feat_a, feat_b, eps: float = 1e-6) -> float:
    """Eq. 6 of Heusel et al. (2017) with ``scipy.linalg.sqrtm`` (float64); ``eps`` regularises a singular product."""
    a, b = _as_numpy64(feat_a), _as_numpy64(feat_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, cov_a = _moments(a)
    mu_b, cov_b = _moments(b)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_eig(feat_a, feat_b) -> float:
    """The same distance via eigenvalues: tr (S_a S_b)^(1/2) = sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2)))."""
    a, b = _as_numpy64(feat_a), _as_numpy64(feat_b)
    mu_a, cov_a = _moments(a)
    mu_b, cov_b = _moments(b)
    root_a = _psd_sqrt(cov_a)
    w = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(w, 0, None)).sum())


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(u, v) = (u.v / d + coef0)^degree, the KID kernel."""
    return (a @ b.T / a.shape[1] + coef0) ** degree


def kid(feat_a, feat_b) -> float:
    """Unbiased MMD^2 (Bińkowski et al. 2018) with the cubic polynomial kernel, on the full sets."""
    a, b = _as_numpy64(feat_a), _as_numpy64(feat_b)
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    return _kid_given_within_b(a, b, _within_mean(polynomial_kernel(b, b)))


def _within_mean(k: np.ndarray) -> np.float64:
    """Mean of the off-diagonal entries of a square kernel matrix: a within-set term of the unbiased MMD^2."""
    n = len(k)
    return (k.sum() - np.trace(k)) / (n * (n - 1))


def _kid_given_within_b(a: np.ndarray, b: np.ndarray, term_b: np.float64) -> float:
    """:func:`kid` with the within-b term supplied (a reference set's, computed once); the same operations in the same
    order, so the result is bit-identical to :func:`kid`'s."""
    term_a = _within_mean(polynomial_kernel(a, a))
    return float(term_a + term_b - 2 * polynomial_kernel(a, b).mean())


def kid_subsets(feat_a, feat_b, n_subsets: int = 10, subset_size: int = 200, random_state: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of :func:`kid` over ``n_subsets`` random subsets (without replacement)."""
    a, b = _as_numpy64(feat_a), _as_numpy64(feat_b)
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(random_state)
    values = [kid(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]) for _ in range(n_subsets)]
    return float(np.mean(values)), float(np.std(values))


@functools.cache
def train_features() -> torch.Tensor:
    """The classifier features of the digits train split (float64 [N_train, 32], computed once per process): the
    reference set of :func:`fd_to_train` and :func:`kid_to_train`, for an FD to the train digits of features the
    caller already has (``frechet_distance(feat, train_features())``). Cached: do not modify it in place."""
    return DigitsFeatures.load().features(load_digits_split().x_train)


def feature_stats(feat) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (ddof 0) of features [N, d]; a zero std is replaced by 1."""
    f = _as_numpy64(feat)
    std = f.std(0)
    return f.mean(0), np.where(std > 0, std, 1.0)


@functools.cache
def train_feature_stats() -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the train split's classifier features (once per process): KID's standardisation."""
    return feature_stats(train_features())


def standardise_by(feat, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(feat - mean) / std with ``stats = (mean, std)``, e.g. from :func:`feature_stats` of a reference set."""
    mean, std = stats
    return (_as_numpy64(feat) - mean) / std


@functools.cache
def _train_features_standardised() -> np.ndarray:
    return standardise_by(train_features(), train_feature_stats())


def fd_to_train(x: torch.Tensor) -> float:
    """FD32 between digits x [N, 64] and the train split."""
    return frechet_distance(DigitsFeatures.load().features(x), train_features())


@functools.cache
def _train_kid_within() -> np.float64:
    """The train split's within-set KID term (a 1437 x 1437 kernel): computed once per process, not per call."""
    return _within_mean(polynomial_kernel(_train_features_standardised(), _train_features_standardised()))


def kid_to_train(x: torch.Tensor) -> float:
    """Unbiased KID between digits x [N, 64] and the train split, on features standardised by the train stats.

    Equal, bit for bit, to ``kid(standardise_by(features(x), train_feature_stats()), <train features standardised>)``;
    the train split's within-set term is computed once per process."""
    a = standardise_by(DigitsFeatures.load().features(x), train_feature_stats())
    if len(a) < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    return _kid_given_within_b(a, _train_features_standardised(), _train_kid_within())


@functools.cache
def noise_floor() -> dict:
    """FD32 and KID of the 297 held-out real digits against the train split (what a perfect model reaches)."""
    held = load_digits_split().x_heldout
    return {"fd_heldout_vs_train": fd_to_train(held), "kid_heldout_vs_train": kid_to_train(held), "n_heldout": len(held)}


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared error over all elements (float64)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(((a - b) ** 2).mean().sqrt())


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio 20 log10(data_range / RMSE) in dB (inf when a == b)."""
    if data_range <= 0:
        raise ValueError("data_range must be positive")
    err = rmse(a, b)
    return math.inf if err == 0 else 20.0 * math.log10(data_range / err)


def class_coverage_tv(labels: torch.Tensor, reference: torch.Tensor | None = None, n_classes: int = N_CLASSES) -> float:
    """Total variation 0.5 sum_c |p_c - q_c| between the label histogram and ``reference`` (default uniform)."""
    labels = torch.as_tensor(labels).long()
    if labels.numel() == 0:
        raise ValueError("labels is empty")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    p = torch.bincount(labels, minlength=n_classes).double() / labels.numel()
    q = torch.full((n_classes,), 1.0 / n_classes, dtype=torch.float64) if reference is None else torch.as_tensor(reference).double()
    if q.shape != (n_classes,) or abs(float(q.sum()) - 1) > 1e-9:
        raise ValueError("reference must be a probability vector over the classes")
    return float(0.5 * (p - q).abs().sum())


# --- metrics against the Gaussian-mixture twin (exact densities) ---------------------------------------


def gmm_log_density(twin, x: torch.Tensor) -> float:
    r"""Mean exact log-density :math:`\frac1n\sum_i\log q_0(x_i)` of samples under the data-level mixture of a
    :class:`~common.diffusion.twins.GMMTwin` (higher is better; a solver that blurs or overshoots lowers it)."""
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [n, d] batch, got shape {tuple(x.shape)}")
    return float(twin.log_prob(x).mean())


def responsibility_tv(twin, x: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    r"""Total variation of the twin's class responsibilities :math:`r(x) = p(k \mid x)` at the data level.

    With ``reference`` (the exact endpoints from the same noises): the mean per-sample
    :math:`\tfrac12\lVert r(x_i) - r(x^\star_i)\rVert_1`, i.e. how often a solver lands in another mode than the
    exact ODE. Without: :math:`\tfrac12\lVert\bar r(x) - w\rVert_1` between the average responsibility and the
    mixture weights (mode coverage of a sample set).
    """
    x = torch.as_tensor(x)
    r = twin.responsibilities(x, None)
    if reference is None:
        return float(0.5 * (r.mean(0) - twin.weights).abs().sum())
    reference = torch.as_tensor(reference)
    if reference.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(reference.shape)}")
    return float(0.5 * (r - twin.responsibilities(reference, None)).abs().sum(-1).mean())
