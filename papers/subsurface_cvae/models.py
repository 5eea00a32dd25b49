"""The learned samplers of the paper, the tabulated baseline, the no-latent ablation and the metrics.

**CVAE** (Section 4 of the paper; ``cvae/modeling.py: CVAEModel`` of the official code). A conditional
variational auto-encoder for a target ``y`` given a condition ``c`` has

- an encoder ``q(z | c, y) = N(μ_q, diag e^{λ_q})`` (an MLP three times as wide and one layer deeper
  than the decoder, Softplus),
- a decoder ``p(y | c, z) = N(μ_p, diag e^{λ_p})`` (``depth`` hidden layers of ``width`` nodes, Softplus;
  ``λ`` clamped to ``[-16, 16]``), and the prior ``z ~ N(0, I)``.

It is trained by minimising the negative ELBO in the repository's scaling (twice the usual one,
constants dropped)

    L = Σ_j [(y_j − μ_p,j)² e^{−λ_p,j} + λ_p,j]  +  Σ_k [e^{λ_q,k} + μ_q,k² − λ_q,k],          (ELBO)

with ``z = μ_q + e^{λ_q/2}·ε``, Adamax (learning rate 0.01, decayed exponentially to 0.5 %), and sampled
by ``z ~ N(0, I)``, ``y ~ p(y | c, z)``. Two CVAEs are used (``main_train_lenGen.py``,
``main_train_pathGen.py``):

- **length generator**: ``c = (σ, g)``, ``y = log N``; depth 3, width 8, latent 2;
- **path generator**: ``c = (σ, g, log N)``, ``y = (cos θ, β, α)``; depth 2, width 12, latent 5.

Conditions are standardised here (``σ/σ_max``, ``log N / log(1+σ_max²)``) instead of the raw values;
the paper's third (representative-scatter) CVAE is not needed for the claims tested here.

**No-latent ablation** (:class:`GaussianMLP`): the decoder alone, ``y ~ N(μ(c), e^{λ(c)})`` fitted by the
same Gaussian likelihood; it can represent one Gaussian per condition and nothing multi-modal or skewed.

**Tabulated baseline** (:class:`TabulatedSampler`, in the style of Müller et al. 2016, the official
``GenerateDatasetForTabulationMethod``): the training walks binned on a regular grid over
``(u_σ, g)`` with ``u_σ = (σ/σ_max)^{1/3}`` (the prior is uniform in ``u_σ`` and ``g``, so every cell holds
about the same number of walks); a query draws one of the four surrounding cell centres with its
bilinear weight and returns a stored sample of that cell (a stochastic bilinear table lookup).

**Metrics**: Wasserstein-1 between 1-D samples (``scipy.stats.wasserstein_distance``) and the energy
distance between multivariate samples (:func:`energy_distance`).
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from torch import nn


def mlp(n_in: int, n_out: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` Softplus hidden layers of ``width`` nodes, linear output, Xavier-uniform weights."""
    if depth < 1 or width < 1:
        raise ValueError("depth and width must be positive")
    sizes = [n_in] + [width] * depth
    layers: list[nn.Module] = []
    for a, b in pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Softplus()]
    layers.append(nn.Linear(sizes[-1], n_out))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """An MLP returning the mean and the clamped log-variance of a diagonal Gaussian."""

    def __init__(self, n_in: int, n_out: int, width: int, depth: int):
        super().__init__()
        self.net = mlp(n_in, 2 * n_out, width, depth)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.net(inputs).chunk(2, dim=-1)
        return mu, log_var.clamp(-16.0, 16.0)


def gaussian_nll(y, mu, log_var) -> torch.Tensor:
    """``Σ_j (y−μ)² e^{−λ} + λ`` per row (twice the negative log-likelihood, constant dropped)."""
    return ((y - mu) ** 2 * torch.exp(-log_var) + log_var).sum(-1)


class CVAE(nn.Module):
    """Conditional VAE with the official layout: encoder 3× wider and one layer deeper than the decoder."""

    def __init__(self, n_cond: int, n_target: int, latent: int, width: int, depth: int):
        super().__init__()
        if latent < 1:
            raise ValueError("latent must be positive")
        self.latent = latent
        self.encoder = GaussianHead(n_cond + n_target, latent, 3 * width, depth + 1)
        self.decoder = GaussianHead(n_cond + latent, n_target, width, depth)

    def loss(self, c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative ELBO in the repository's scaling (Eq. ELBO in the module docstring)."""
        mu_q, lv_q = self.encoder(torch.cat([c, y], -1))
        z = mu_q + torch.exp(0.5 * lv_q) * torch.randn_like(mu_q)
        mu_p, lv_p = self.decoder(torch.cat([c, z], -1))
        kl = (torch.exp(lv_q) + mu_q ** 2 - lv_q).sum(-1)
        return (gaussian_nll(y, mu_p, lv_p) + kl).mean()

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z ~ N(0, I)``, then ``y ~ N(μ_p(c, z), e^{λ_p})``: one sample per row of ``c``."""
        z = torch.randn(len(c), self.latent, generator=generator)
        mu, lv = self.decoder(torch.cat([c, z], -1))
        return mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=generator)


class GaussianMLP(nn.Module):
    """Ablation without latent variable: ``y | c ~ N(μ(c), diag e^{λ(c)})`` (the CVAE decoder's size)."""

    def __init__(self, n_cond: int, n_target: int, width: int, depth: int):
        super().__init__()
        self.head = GaussianHead(n_cond, n_target, width, depth)

    def loss(self, c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, lv = self.head(c)
        return gaussian_nll(y, mu, lv).mean()

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, lv = self.head(c)
        return mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=generator)


def train(model: nn.Module, c: np.ndarray, y: np.ndarray, *, steps: int, batch_size: int, seed: int,
          lr: float = 0.01, final_lr_factor: float = 0.005, progress: bool = False) -> list[float]:
    """Adamax on random mini-batches with the official exponential decay of the learning rate
    (``lr·γ^k``, ``γ = final_lr_factor^{1/steps}``); returns the loss every 50 steps.

    Seeds torch's global generator with ``seed`` (the reparameterisation noise) and draws the batches
    from a private generator."""
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    if len(c) != len(y):
        raise ValueError("conditions and targets must have the same length")
    c_t = torch.as_tensor(np.asarray(c), dtype=torch.float32)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))                 # the reparameterisation noise of the CVAE
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=final_lr_factor ** (1.0 / steps))
    history = []
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=type(model).__name__, mininterval=2.0)
    model.train()
    for step in iterator:
        batch = torch.randint(0, len(c_t), (min(batch_size, len(c_t)),), generator=gen)
        loss = model.loss(c_t[batch], y_t[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append(float(loss.detach()))
    model.eval()
    return history


def sample_model(model: nn.Module, c: np.ndarray, seed: int) -> np.ndarray:
    """Samples of a trained CVAE/GaussianMLP, one per row of ``c`` (NumPy in, NumPy out)."""
    gen = torch.Generator().manual_seed(int(seed))
    return model.sample(torch.as_tensor(np.asarray(c), dtype=torch.float32), generator=gen).numpy().astype(float)


class Conditioning:
    """The standardisation of conditions and of ``log N`` for a training range ``σ ≤ σ_max``."""

    def __init__(self, sigma_max: float):
        if sigma_max <= 0:
            raise ValueError("sigma_max must be positive")
        self.sigma_max = float(sigma_max)
        self.log_n_scale = math.log1p(self.sigma_max ** 2)

    def length(self, sigma, g) -> np.ndarray:
        """Condition of the length generator: ``(σ/σ_max, g)``."""
        return np.stack(np.broadcast_arrays(np.asarray(sigma, float) / self.sigma_max, np.asarray(g, float)), 1)

    def path(self, sigma, g, log_n) -> np.ndarray:
        """Condition of the path generator: ``(σ/σ_max, g, log N / log(1 + σ_max²))``."""
        return np.stack(np.broadcast_arrays(np.asarray(sigma, float) / self.sigma_max, np.asarray(g, float),
                                            np.asarray(log_n, float) / self.log_n_scale), 1)


def counts_from_log(log_n: np.ndarray) -> np.ndarray:
    """A sampled ``log N`` to a scattering count: ``N = max(1, round(e^{log N}))`` (N is an integer ≥ 1)."""
    return np.maximum(1, np.rint(np.exp(np.minimum(np.asarray(log_n, float), 30.0)))).astype(np.int64)


class TabulatedSampler:
    """Stochastic bilinear lookup in a table of per-cell samples over ``(u_σ, g)`` (Müller et al. 2016 style)."""

    def __init__(self, sigma: np.ndarray, g: np.ndarray, values: np.ndarray, *, sigma_max: float,
                 n_sigma: int = 16, n_g: int = 16):
        if n_sigma < 1 or n_g < 1:
            raise ValueError("the grid needs at least one cell per axis")
        values = np.asarray(values, float)
        self.sigma_max, self.n_sigma, self.n_g = float(sigma_max), n_sigma, n_g
        cell = self._cells(np.asarray(sigma, float), np.asarray(g, float))
        flat = cell[0] * n_g + cell[1]
        order = np.argsort(flat, kind="stable")
        self.values = values[order]
        counts = np.bincount(flat, minlength=n_sigma * n_g)
        if np.any(counts == 0):
            raise ValueError(f"{int((counts == 0).sum())} empty table cells: use fewer bins or more data")
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def _coords(self, sigma, g):
        u = np.clip(np.asarray(sigma, float) / self.sigma_max, 0.0, 1.0) ** (1.0 / 3.0)
        v = (np.clip(np.asarray(g, float), -1.0, 1.0) + 1.0) / 2.0
        return u * self.n_sigma, v * self.n_g

    def _cells(self, sigma, g):
        a, b = self._coords(sigma, g)
        return np.minimum(a.astype(int), self.n_sigma - 1), np.minimum(b.astype(int), self.n_g - 1)

    def sample(self, sigma, g, n: int, rng) -> np.ndarray:
        """``n`` samples for one condition ``(σ, g)``."""
        return self.sample_many(np.full(n, float(sigma)), np.full(n, float(g)), rng)

    def sample_many(self, sigma, g, rng) -> np.ndarray:
        """One sample per query row ``(σ_i, g_i)``: pick one of the four surrounding cell centres with its
        bilinear weight (clamped at the border), then a stored sample of that cell."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        a, b = self._coords(sigma, g)
        fa, fb = np.atleast_1d(a) - 0.5, np.atleast_1d(b) - 0.5
        ia, ib = np.floor(fa).astype(int), np.floor(fb).astype(int)
        ca = ia + (rng.random(fa.shape) < fa - ia)          # upper neighbour with probability = its weight
        cb = ib + (rng.random(fb.shape) < fb - ib)
        flat = np.clip(ca, 0, self.n_sigma - 1) * self.n_g + np.clip(cb, 0, self.n_g - 1)
        offset = (rng.random(flat.shape) * self.counts[flat]).astype(int)
        return self.values[self.starts[flat] + offset]


def w1(a, b) -> float:
    """Wasserstein-1 distance between two 1-D samples (``scipy.stats.wasserstein_distance``)."""
    return float(wasserstein_distance(np.ravel(a), np.ravel(b)))


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance ``2E|X−Y| − E|X−X'| − E|Y−Y'|`` between two multivariate samples (V-statistic)."""
    a = torch.as_tensor(np.atleast_2d(a), dtype=torch.float64)
    b = torch.as_tensor(np.atleast_2d(b), dtype=torch.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError("samples must have the same dimension")
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())
