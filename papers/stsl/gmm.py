r"""The analytic check: a Gaussian-mixture latent prior, a linear decoder and a linear operator.

Prior :math:`p(z_0) = \sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)` in :math:`\mathbb R^d`; decoder :math:`x = W z`
(encoder :math:`W^+`); measurement :math:`y = A W z_0 + \sigma_y n`, i.e. :math:`y = M z_0 + \sigma_y n`.

* Noised prior (exact): :math:`p_t = \sum_k \pi_k \mathcal N(\alpha_t\mu_k, \alpha_t^2\Sigma_k + \sigma_t^2 I)`; its
  score is the responsibility-weighted sum of the component scores, so :math:`\varepsilon^* = -\sigma_t\nabla\log p_t`
  is exact (the model protocol ``.eps(z, t)``, differentiable, float64), and so is its Hessian.
* Exact posterior: :math:`p(z_0\mid y) = \sum_k \pi'_k \mathcal N(\mu'_k, \Sigma'_k)` with
  :math:`\Sigma'_k = (\Sigma_k^{-1} + M^\top M/\sigma_y^2)^{-1}`,
  :math:`\mu'_k = \Sigma'_k(\Sigma_k^{-1}\mu_k + M^\top y/\sigma_y^2)`,
  :math:`\pi'_k \propto \pi_k\,\mathcal N(y; M\mu_k, M\Sigma_k M^\top + \sigma_y^2 I)`.
* Distance to it: the exact 2-Wasserstein distance between two equal-size empirical samples (an optimal
  assignment, ``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from common.diffusion.schedule import VPSchedule


def _log_normal(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, cov) per row; x [B, d], mean [B, d] or [d], cov [d, d]."""
    d = x.shape[-1]
    chol = torch.linalg.cholesky(cov)
    diff = (x - mean).unsqueeze(-1)
    sol = torch.linalg.solve_triangular(
        chol, diff.expand(x.shape[0], d, 1) if diff.dim() == 3 else diff, upper=False
    )
    maha = (sol**2).sum((-1, -2))
    return -0.5 * (maha + 2.0 * torch.log(torch.diagonal(chol)).sum() + d * math.log(2 * math.pi))


@dataclass
class LatentGMM:
    """The GMM prior; ``eps``/``score``/``hessian`` are exact for the VP-noised mixture."""

    weights: torch.Tensor  # [K]
    means: torch.Tensor  # [K, d]
    covs: torch.Tensor  # [K, d, d]
    schedule: VPSchedule

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, t) -> tuple[float, float, list[torch.Tensor]]:
        a, s = float(self.schedule.alpha(t)), float(self.schedule.sigma(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return a, s, [a * a * c + s * s * eye for c in self.covs]

    def log_prob(self, z: torch.Tensor, t) -> torch.Tensor:
        a, _, covs = self._components(t)
        logs = torch.stack(
            [
                torch.log(w) + _log_normal(z, a * m, c)
                for w, m, c in zip(self.weights, self.means, covs, strict=True)
            ],
            -1,
        )
        return torch.logsumexp(logs, -1)

    def score(self, z: torch.Tensor, t) -> torch.Tensor:
        """∇ log p_t(z) = Σ_k r_k(z) (−C_k⁻¹ (z − α μ_k)), r_k the responsibilities (differentiable)."""
        a, _, covs = self._components(t)
        z64 = z.to(torch.float64)
        logs = torch.stack(
            [
                torch.log(w) + _log_normal(z64, a * m, c)
                for w, m, c in zip(self.weights, self.means, covs, strict=True)
            ],
            -1,
        )
        resp = torch.softmax(logs, -1)
        comp = torch.stack(
            [-torch.linalg.solve(c, (z64 - a * m).T).T for m, c in zip(self.means, covs, strict=True)], -1
        )
        return (comp * resp[:, None, :]).sum(-1).to(z.dtype)

    def eps(self, z: torch.Tensor, t, y=None) -> torch.Tensor:
        return -float(self.schedule.sigma(t)) * self.score(z, t)

    def hessian(self, z: torch.Tensor, t) -> torch.Tensor:
        """∇² log p_t per row [B, d, d] by automatic differentiation of the exact score."""
        rows = []
        for zi in z.to(torch.float64):
            rows.append(torch.autograd.functional.jacobian(lambda v: self.score(v[None], t)[0], zi))
        return torch.stack(rows)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sample_mixture(self.weights, self.means, self.covs, n, generator)


def sample_mixture(weights, means, covs, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of a Gaussian mixture (float64)."""
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    chols = torch.linalg.cholesky(covs)
    noise = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
    return means[k] + (chols[k] @ noise.unsqueeze(-1)).squeeze(-1)


def default_gmm(schedule: VPSchedule | None = None) -> LatentGMM:
    """A 2-D, 3-component prior with unequal covariances (so the posterior covariance depends on z_t)."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
    covs = torch.stack(
        [
            torch.tensor([[0.30, 0.10], [0.10, 0.20]]),
            torch.tensor([[0.05, 0.00], [0.00, 0.60]]),
            torch.tensor([[0.80, -0.20], [-0.20, 0.10]]),
        ]
    ).to(torch.float64)
    weights = torch.tensor([0.4, 0.35, 0.25], dtype=torch.float64)
    return LatentGMM(weights, means, covs, schedule or VPSchedule())


def default_linear_setting() -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder W (3×2) and operator A (1×3): one linear measurement of a 2-D latent (M = A W is 1×2)."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    a = torch.tensor([[0.6, 0.5, 0.4]], dtype=torch.float64)
    return w, a


def exact_posterior(gmm: LatentGMM, m: torch.Tensor, y: torch.Tensor, sigma_y: float):
    """(weights [K], means [K, d], covs [K, d, d]) of p(z_0 | y) for y = M z_0 + σ_y n; y [m]."""
    if sigma_y <= 0:
        raise ValueError(f"sigma_y must be > 0, got {sigma_y}")
    prec_lik = m.T @ m / sigma_y**2
    logw, means, covs = [], [], []
    for w, mu, c in zip(gmm.weights, gmm.means, gmm.covs, strict=True):
        c_inv = torch.linalg.inv(c)
        cov = torch.linalg.inv(c_inv + prec_lik)
        cov = 0.5 * (cov + cov.T)
        means.append(cov @ (c_inv @ mu + m.T @ y / sigma_y**2))
        covs.append(cov)
        s = m @ c @ m.T + sigma_y**2 * torch.eye(m.shape[0], dtype=torch.float64)
        logw.append(torch.log(w) + _log_normal(y[None], m @ mu, s)[0])
    logw = torch.stack(logw)
    return torch.softmax(logw, 0), torch.stack(means), torch.stack(covs)


def wasserstein2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact W2 between two equal-size empirical distributions (optimal assignment on squared distances)."""
    from scipy.optimize import linear_sum_assignment

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"need equal-size samples, got {a.shape} and {b.shape}")
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


class LinearCodec:
    """x = W z and z = W⁺ x as callables (the linear decoder / encoder of the analytic check)."""

    def __init__(self, w: torch.Tensor):
        self.w = w
        self.w_pinv = torch.linalg.pinv(w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w.T.to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w_pinv.T.to(x.dtype)
