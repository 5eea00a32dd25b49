r"""Analytic twins of the digits diffusion model: distributions whose noised score is exact.

Each twin follows the model protocol (``.eps(x, t, y=None)``, ``.schedule``), so every sampler and view
runs on it unchanged. All of them compute in float64 and return x's dtype.

With the forward process :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`, a data distribution p(x_0) turns
into :math:`q_t(x) = \int p(x_0)\, \mathcal N(x; \alpha_t x_0, \sigma_t^2 I)\, dx_0`, whose score gives the
ideal noise prediction :math:`\varepsilon^*(x, t) = -\sigma_t \nabla_x \log q_t(x)`.

* **Gaussian twin** (Wang & Vastola 2024, Sec. 3): :math:`p = \mathcal N(\mu, \Sigma)`,
  :math:`\Sigma = U \operatorname{diag}(\lambda) U^\top`. Then :math:`q_t = \mathcal N(\alpha_t\mu, \alpha_t^2\Sigma
  + \sigma_t^2 I)` and :math:`\nabla\log q_t(x) = -U \operatorname{diag}(1/(\alpha_t^2\lambda_k + \sigma_t^2))
  U^\top (x - \alpha_t\mu)`. The probability-flow ODE decouples per eigen-direction and has the closed form

  .. math:: x_t = \alpha_t\mu + U \operatorname{diag}\Big(\sqrt{\tfrac{\alpha_t^2\lambda_k + \sigma_t^2}
            {\alpha_s^2\lambda_k + \sigma_s^2}}\Big) U^\top (x_s - \alpha_s\mu),

  (in EDM coordinates :math:`x_e = x/\alpha`, the factor is :math:`\sqrt{(\lambda_k + \sigma_e^2)/(\lambda_k +
  \sigma_{e,s}^2)}`, which is the official code's ``edm_x_t_traj``).
* **Gaussian-mixture twin**: one full-covariance Gaussian per class (Ledoit-Wolf shrinkage), weights the
  class frequencies. The score is the responsibility-weighted sum of the component scores.
* **Delta twin**: the empirical training set :math:`p = \tfrac1N\sum_i \delta_{x_i}`; :math:`q_t` is a mixture
  of isotropic Gaussians at :math:`\alpha_t x_i`, and :math:`\varepsilon^* = (x - \alpha_t \bar x)/\sigma_t` with
  :math:`\bar x = \sum_i r_i x_i` (softmax responsibilities, log-sum-exp stable). Sampling its PF-ODE
  reproduces training points (memorisation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common.diffusion.data import NULL_LABEL
from common.diffusion.schedule import VPSchedule

LOG_2PI = math.log(2.0 * math.pi)
COVARIANCES = ("ml", "ledoit_wolf", "isotropic", "zero")


def _times(t, batch: int) -> torch.Tensor:
    """Any t (float, 0-d or [B]) -> float64 [B]."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape [{batch}], got {tuple(t.shape)}")
    return t


def _alpha_sigma(schedule: VPSchedule, t, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) as float64 [B, 1] columns; t = None means the data level (alpha 1, sigma 0)."""
    if t is None:
        return torch.ones(batch, 1, dtype=torch.float64), torch.zeros(batch, 1, dtype=torch.float64)
    t = _times(t, batch)
    return schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]


def _eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix, eigenvalues clipped at 0."""
    lam, u = torch.linalg.eigh(0.5 * (cov + cov.T))
    return lam.clamp(min=0.0), u


def _gaussian_parts(x, mu, u, lam, alpha, sigma):
    r"""For q = N(alpha mu, U diag(alpha^2 lam + sigma^2) U^T): (whitened-coordinate variances v [B, d],
    projected residual z = U^T (x - alpha mu) [B, d])."""
    v = alpha**2 * lam[None, :] + sigma**2
    z = (x - alpha * mu[None, :]) @ u
    return v, z


def gaussian_log_prob(x, mu, u, lam, alpha, sigma) -> torch.Tensor:
    """log N(x; alpha mu, alpha^2 Sigma + sigma^2 I), Sigma = U diag(lam) U^T; [B]."""
    v, z = _gaussian_parts(x, mu, u, lam, alpha, sigma)
    return -0.5 * ((z**2 / v).sum(-1) + torch.log(v).sum(-1) + x.shape[-1] * LOG_2PI)


def gaussian_score(x, mu, u, lam, alpha, sigma) -> torch.Tensor:
    """grad_x log N(x; alpha mu, alpha^2 Sigma + sigma^2 I) = -U diag(1/v) U^T (x - alpha mu); [B, d]."""
    v, z = _gaussian_parts(x, mu, u, lam, alpha, sigma)
    return -(z / v) @ u.T


def _as64(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


class GaussianTwin:
    """One Gaussian N(mu, Sigma) fitted to the data (maximum-likelihood covariance, divided by N)."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, schedule: VPSchedule):
        self.mu = _as64(mu)
        self.cov = _as64(cov)
        self.lam, self.u = _eigh(self.cov)
        self.schedule = schedule

    @classmethod
    def fit(cls, x_train: torch.Tensor, schedule: VPSchedule | None = None, covariance: str = "ml") -> GaussianTwin:
        """Fit mean and covariance. ``covariance``: ``"ml"`` (maximum likelihood, divided by N; the default),
        ``"ledoit_wolf"`` (sklearn LedoitWolf shrinkage), ``"isotropic"`` (tr(Sigma_ML)/d times I: the
        isotropic-Gaussian baseline) or ``"zero"`` (Sigma = 0: the mean-only baseline, whose score
        -(x - alpha mu)/sigma^2 "rescales around the mean")."""
        x = _as64(x_train)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"x_train must be [N >= 2, d], got {tuple(x.shape)}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        mu = x.mean(0)
        if covariance == "ledoit_wolf":
            cov = torch.from_numpy(_class_covariance(x.numpy(), "ledoit_wolf"))
        else:
            centred = x - mu
            cov = centred.T @ centred / x.shape[0]
            d = x.shape[1]
            if covariance == "isotropic":
                cov = torch.eye(d, dtype=torch.float64) * torch.trace(cov) / d
            elif covariance == "zero":
                cov = torch.zeros(d, d, dtype=torch.float64)
        return cls(mu, cov, schedule or VPSchedule())

    def score(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return gaussian_score(_as64(x), self.mu, self.u, self.lam, alpha, sigma).to(x.dtype)

    def eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """eps* = -sigma_t grad log q_t (y is ignored: the twin is unconditional)."""
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        score = gaussian_score(_as64(x), self.mu, self.u, self.lam, alpha, sigma)
        return (-sigma * score).to(x.dtype)

    def log_prob(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """Exact log q_t(x) (t = None: the data-level Gaussian; needs a non-singular Sigma)."""
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return gaussian_log_prob(_as64(x), self.mu, self.u, self.lam, alpha, sigma)

    def ode_solution(self, x: torch.Tensor, t_from, t_to) -> torch.Tensor:
        r"""Closed-form PF-ODE map from time t_from to t_to (either direction), per eigen-direction:
        :math:`x_t = \alpha_t\mu + U\operatorname{diag}(\sqrt{(\alpha_t^2\lambda_k+\sigma_t^2)/(\alpha_s^2\lambda_k
        +\sigma_s^2)})U^\top(x_s - \alpha_s\mu)`. t_to may be 0 (the data end; then eigen-directions with
        lam_k = 0 collapse onto mu)."""
        b = x.shape[0]
        a_s, s_s = _alpha_sigma(self.schedule, t_from, b)
        if isinstance(t_to, (int, float)) and float(t_to) == 0.0:
            a_t, s_t = torch.ones_like(a_s), torch.zeros_like(s_s)
        else:
            a_t, s_t = _alpha_sigma(self.schedule, t_to, b)
        v_s, z = _gaussian_parts(_as64(x), self.mu, self.u, self.lam, a_s, s_s)
        v_t = a_t**2 * self.lam[None, :] + s_t**2
        out = a_t * self.mu[None, :] + (torch.sqrt(v_t / v_s) * z) @ self.u.T
        return out.to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of N(mu, Sigma) (float64)."""
        z = torch.randn(n, self.mu.shape[0], generator=generator, dtype=torch.float64)
        return self.mu[None, :] + (z * self.lam.sqrt()[None, :]) @ self.u.T


class GMMTwin:
    """One full-covariance Gaussian per class, weighted by class frequency (Ledoit-Wolf shrinkage)."""

    def __init__(self, weights, means, covs, classes, schedule: VPSchedule):
        self.weights = _as64(weights)
        self.means = _as64(means)
        self.covs = _as64(covs)
        self.classes = torch.as_tensor(classes, dtype=torch.long)
        eig = [_eigh(c) for c in self.covs]
        self.lams = torch.stack([e[0] for e in eig])
        self.us = torch.stack([e[1] for e in eig])
        self.schedule = schedule

    @classmethod
    def fit(cls, x_train, y_train, schedule: VPSchedule | None = None, shrinkage: str | None = "ledoit_wolf") -> GMMTwin:
        """shrinkage: "ledoit_wolf" (sklearn LedoitWolf) or None (maximum-likelihood covariance)."""
        if shrinkage not in ("ledoit_wolf", None):
            raise ValueError(f"shrinkage must be 'ledoit_wolf' or None, got {shrinkage!r}")
        x = _as64(x_train).numpy()
        y = torch.as_tensor(y_train).numpy()
        if x.shape[0] != y.shape[0]:
            raise ValueError("x_train and y_train must have the same length")
        classes = np.unique(y)
        weights, means, covs = [], [], []
        for c in classes:
            xc = x[y == c]
            weights.append(len(xc) / len(x))
            means.append(xc.mean(0))
            covs.append(_class_covariance(xc, shrinkage))
        return cls(np.array(weights), np.stack(means), np.stack(covs), classes, schedule or VPSchedule())

    def _component_log_probs(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log w_k + log N_k(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I); [B, K]."""
        cols = [gaussian_log_prob(x, self.means[k], self.us[k], self.lams[k], alpha, sigma)
                for k in range(len(self.classes))]
        return torch.stack(cols, -1) + torch.log(self.weights)[None, :]

    def _component_scores(self, x, alpha, sigma) -> torch.Tensor:
        """[B, K, d] component scores."""
        cols = [gaussian_score(x, self.means[k], self.us[k], self.lams[k], alpha, sigma)
                for k in range(len(self.classes))]
        return torch.stack(cols, 1)

    def responsibilities(self, x: torch.Tensor, t) -> torch.Tensor:
        """Posterior class probabilities under q_t; [B, K]."""
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return torch.softmax(self._component_log_probs(_as64(x), alpha, sigma), -1)

    def log_prob(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """Exact log q_t(x) of the mixture (t = None: the data-level mixture); [B]."""
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return torch.logsumexp(self._component_log_probs(_as64(x), alpha, sigma), -1)

    def _weights_for(self, x64, alpha, sigma, y) -> torch.Tensor:
        """[B, K]: responsibilities (y None or null) or the one-hot of y's component."""
        r = torch.softmax(self._component_log_probs(x64, alpha, sigma), -1)
        if y is None:
            return r
        y = torch.as_tensor(y, dtype=torch.long)
        onehot = (y[:, None] == self.classes[None, :]).to(torch.float64)
        is_null = (y == NULL_LABEL)[:, None]
        if bool(((onehot.sum(-1) == 0) & ~is_null[:, 0]).any()):
            raise ValueError("y contains a label with no mixture component")
        return torch.where(is_null, r, onehot)

    def score(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """Marginal score (y None or NULL_LABEL) or the class-conditional score grad log q_t(x | y)."""
        x64 = _as64(x)
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        w = self._weights_for(x64, alpha, sigma, y)
        return (w[:, :, None] * self._component_scores(x64, alpha, sigma)).sum(1).to(x.dtype)

    def eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        _, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return (-sigma * self.score(_as64(x), t, y)).to(x.dtype)

    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, d] float64, labels [n]): components drawn by weight (or fixed by y), then Gaussian draws."""
        if y is None:
            idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            y = torch.as_tensor(y, dtype=torch.long).expand(n).contiguous()
            idx = torch.searchsorted(self.classes, y)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        scaled = z * self.lams[idx].sqrt()
        x = self.means[idx] + torch.einsum("nij,nj->ni", self.us[idx], scaled)
        return x, self.classes[idx]


def _class_covariance(xc: np.ndarray, shrinkage: str | None) -> np.ndarray:
    if shrinkage is None:
        centred = xc - xc.mean(0)
        return centred.T @ centred / len(xc)
    from sklearn.covariance import LedoitWolf

    return LedoitWolf().fit(xc).covariance_


class DeltaTwin:
    """Exact score of the empirical training set (a mixture of deltas at the training points)."""

    def __init__(self, x_train, schedule: VPSchedule, y_train=None, chunk: int = 512):
        self.x_train = _as64(x_train)
        self.y_train = None if y_train is None else torch.as_tensor(y_train, dtype=torch.long)
        self.schedule = schedule
        self.chunk = chunk

    @classmethod
    def fit(cls, x_train, schedule: VPSchedule | None = None, y_train=None) -> DeltaTwin:
        return cls(x_train, schedule or VPSchedule(), y_train)

    def _logits(self, x64, alpha, sigma, y) -> torch.Tensor:
        """-||x - alpha x_i||^2 / (2 sigma^2) for every training point, -inf outside y's class; [B, N]."""
        sq_train = (self.x_train**2).sum(-1)[None, :]
        d2 = (x64**2).sum(-1, keepdim=True) - 2.0 * alpha * (x64 @ self.x_train.T) + alpha**2 * sq_train
        d2 = d2.clamp(min=0.0)
        logits = -d2 / (2.0 * sigma**2)
        if y is not None:
            if self.y_train is None:
                raise ValueError("a conditional DeltaTwin needs y_train")
            y = torch.as_tensor(y, dtype=torch.long)
            keep = (self.y_train[None, :] == y[:, None]) | (y[:, None] == NULL_LABEL)
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits

    def posterior_mean(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """E[x_0 | x_t] = sum_i softmax_i x_i (float64)."""
        out = []
        x64 = _as64(x)
        for start in range(0, x.shape[0], self.chunk):
            sl = slice(start, start + self.chunk)
            xb = x64[sl]
            alpha, sigma = _alpha_sigma(self.schedule, _times(t, x.shape[0])[sl], xb.shape[0])
            r = torch.softmax(self._logits(xb, alpha, sigma, None if y is None else y[sl]), -1)
            out.append(r @ self.x_train)
        return torch.cat(out)

    def eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """eps* = (x - alpha_t E[x_0 | x_t]) / sigma_t."""
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return ((_as64(x) - alpha * self.posterior_mean(x, t, y)) / sigma).to(x.dtype)

    def score(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        _, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        return (-_as64(self.eps(_as64(x), t, y)) / sigma).to(x.dtype)

    def log_prob(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """Exact log q_t(x) = logsumexp_i log N(x; alpha x_i, sigma^2 I) - log N_y; [B]."""
        x64 = _as64(x)
        alpha, sigma = _alpha_sigma(self.schedule, t, x.shape[0])
        logits = self._logits(x64, alpha, sigma, y)
        n_comp = torch.isfinite(logits).sum(-1).to(torch.float64)
        d = x.shape[-1]
        return torch.logsumexp(logits, -1) - torch.log(n_comp) - 0.5 * d * (LOG_2PI + torch.log(sigma[:, 0] ** 2))


class ClassGaussianTwins:
    """One :class:`GaussianTwin` per class (same covariance estimator for all), for class-conditional
    sampling: ``eps(x, t, y)`` and ``ode_solution(x, t_from, t_to, y)`` apply each sample's own class Gaussian
    (the conditional analogue of teleportation: every label jumps with its own closed form)."""

    def __init__(self, twins: dict, schedule: VPSchedule):
        self.twins = dict(twins)
        self.schedule = schedule

    @classmethod
    def fit(cls, x_train, y_train, schedule: VPSchedule | None = None, covariance: str = "ml") -> ClassGaussianTwins:
        x, y = _as64(x_train), torch.as_tensor(y_train, dtype=torch.long)
        if x.shape[0] != y.shape[0]:
            raise ValueError("x_train and y_train must have the same length")
        schedule = schedule or VPSchedule()
        return cls({int(c): GaussianTwin.fit(x[y == c], schedule, covariance) for c in torch.unique(y)}, schedule)

    def _per_class(self, x: torch.Tensor, y, fn) -> torch.Tensor:
        if y is None:
            raise ValueError("ClassGaussianTwins needs the labels y")
        y = torch.as_tensor(y, dtype=torch.long).expand(x.shape[0])
        out = torch.empty_like(x)
        for c in torch.unique(y).tolist():
            if c not in self.twins:
                raise ValueError(f"no class Gaussian for label {c}")
            rows = y == c
            out[rows] = fn(self.twins[c], x[rows])
        return out

    def eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        t = _times(t, x.shape[0])
        if y is None:
            raise ValueError("ClassGaussianTwins needs the labels y")
        y = torch.as_tensor(y, dtype=torch.long).expand(x.shape[0])
        out = torch.empty_like(x)
        for c in torch.unique(y).tolist():
            rows = y == c
            out[rows] = self.twins[c].eps(x[rows], t[rows])
        return out

    def ode_solution(self, x: torch.Tensor, t_from, t_to, y=None) -> torch.Tensor:
        return self._per_class(x, y, lambda twin, xc: twin.ode_solution(xc, t_from, t_to))

    def means_for(self, y) -> torch.Tensor:
        """The class mean of every label in y; [B, d] float64."""
        return torch.stack([self.twins[int(c)].mu for c in torch.as_tensor(y).tolist()])
