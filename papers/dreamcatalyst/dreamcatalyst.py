r"""DreamCatalyst (Kim, Lee, Shin, Choi, Shim; ICLR 2025) on a 2-D proxy: editing a digit through random views.

DreamCatalyst reads SDS-based 3D editing as a diffusion *reverse process*. Starting from the PDS
decomposition (see :mod:`common.score_distillation`), the gradient applied to a render of the edited scene
:math:`x^{\rm tgt} = g(\theta)` is an editability term plus an identity-preservation term,

.. math:: G_{\rm DC}(t) = w(t)\,\bigl(\hat\varepsilon(x^{\rm tgt}_t, y^{\rm tgt}) - \hat\varepsilon(x^{\rm src}_t, y^{\rm src})\bigr)
          + \psi\,e^{\hat t}\,(x^{\rm tgt} - x^{\rm src}),   \qquad w(t) = \delta + \gamma\,\hat t^{\,1/e},

applied through :math:`L = \tfrac12\lVert x^{\rm tgt} - \mathrm{sg}(x^{\rm tgt} - G)\rVert^2`, with the
timestep *decreasing* deterministically over the N optimisation iterations instead of being drawn at
random (the optimisation then follows a reverse process from noisy to clean):

.. math:: \hat t_i = (\hat t_{\max} - \hat t_{\min})\,(1 - i/N) + \hat t_{\min},  \qquad \hat t_{\min} = 0.2,\ \hat t_{\max} = 0.9.

Constants are those of the official ``dc.py`` (δ = 0.2, γ = 0.8, ψ = 0.075; the paper's Sec. 4 and its
appendix describe the same shape: a large editability weight at large t, an identity weight). The official
code normalises i by a hard-coded 3000; here i/N uses the run's own budget N (a deviation, see the README).
The official HQ mode also applies FreeU to the U-Net (``common.freeu``; only with the 16×16 UNet prior,
the 8×8 prior is an MLP without skip connections).

The proxy: a canonical image θ (the "scene": 8×8 with the ci MLP prior, 16×16 with the full profile's UNet
prior), initialised at a held-out digit of the source class a, seen through K random affine views per
iteration (rotation ±10°, shift ±1 px at 8×8, ±2 px at 16×16: the same fraction of the image; the same
views warp the source image), edited towards class b by SDS, DDS, PDS or DreamCatalyst with one Adam
optimiser, one learning rate, one iteration budget and one noise stream for every method. Editability is
the 8×8 digits classifier's P(b | θ) (a 16×16 θ enters through its least-squares 8×8 preimage,
``common.digits16.to_digits8``); identity is SSIM (and MSE) of θ to the source digit at θ's own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from common.diffusion.data import IMAGE_SIDE
from common.digits16.data import SIDE16, to_digits8
from common.score_distillation import (
    affine_thetas,
    affine_views,
    apply_render_gradient,
    dds_grad,
    pds_grad,
    sds_grad,
)

METHODS = ("sds", "dds", "pds", "dc", "dc_random_t", "dc_psi0")
PAIRS = ((1, 7), (3, 8), (5, 6), (0, 8))  # source class -> target class (the research note's fixed pairs)
RANDOM_T_RANGE = (0.02, 0.98)  # SDS/DDS/PDS timestep range (fractions of T), as in DDS/PDS code


@dataclass(frozen=True)
class DCConfig:
    """DreamCatalyst's constants (official ``dc.py``)."""

    t_min: float = 0.2
    t_max: float = 0.9
    delta: float = 0.2
    gamma: float = 0.8
    psi: float = 0.075

    def __post_init__(self):
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.delta < 0 or self.gamma < 0 or self.psi < 0:
            raise ValueError("delta, gamma and psi must be non-negative")


def dc_timestep(iteration: int, n_iters: int, cfg: DCConfig = DCConfig()) -> float:
    r"""The decreasing schedule :math:`\hat t_i = (\hat t_{\max} - \hat t_{\min})(1 - i/N) + \hat t_{\min}`, i = 0..N−1."""
    if n_iters <= 0 or not 0 <= iteration < n_iters:
        raise ValueError(f"need 0 <= iteration < n_iters, got {iteration}, {n_iters}")
    return (cfg.t_max - cfg.t_min) * (1.0 - iteration / n_iters) + cfg.t_min


def dc_weights(t_hat, cfg: DCConfig = DCConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(editability weight :math:`w = \delta + \gamma \hat t^{1/e}`, identity weight :math:`\psi e^{\hat t}`)."""
    t_hat = torch.as_tensor(t_hat, dtype=torch.float64)
    if torch.any(t_hat <= 0) or torch.any(t_hat > 1):
        raise ValueError("t_hat must lie in (0, 1]")
    return cfg.delta + cfg.gamma * t_hat ** (1.0 / math.e), cfg.psi * torch.exp(t_hat)


@torch.no_grad()
def dc_grad(model, x_tgt, x_src, y_tgt, y_src, t_hat, *, eps, cfg: DCConfig = DCConfig()) -> torch.Tensor:
    r"""DreamCatalyst's gradient :math:`w(t)\,\Delta\hat\varepsilon + \psi e^{\hat t}(x^{\rm tgt} - x^{\rm src})`."""
    w, psi_t = dc_weights(t_hat, cfg)
    edit = dds_grad(model, x_tgt, x_src, y_tgt, y_src, t_hat, eps=eps, weight=w)
    psi_t = psi_t.expand(x_tgt.shape[0]).to(x_tgt.dtype)[:, None]
    return edit + psi_t * (x_tgt.detach() - x_src.detach())


def method_gradient(method: str, model, views_tgt, views_src, y_tgt, y_src, iteration: int, n_iters: int,
                    gen: torch.Generator, cfg: DCConfig = DCConfig()) -> tuple[torch.Tensor, float]:
    """One iteration's render gradient of ``method`` and the timestep it used.

    The timestep draw, the injected noise and (for PDS) ε_{t−1} always consume the same random numbers,
    so every method sees the same noise stream for a seed.
    """
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    eps = torch.randn(views_tgt.shape, generator=gen, dtype=views_tgt.dtype)
    eps_prev = torch.randn(views_tgt.shape, generator=gen, dtype=views_tgt.dtype)
    lo, hi = RANDOM_T_RANGE
    t_rand = lo + (hi - lo) * u
    if method == "sds":
        return sds_grad(model, views_tgt, y_tgt, t_rand, eps=eps), t_rand
    if method == "dds":
        return dds_grad(model, views_tgt, views_src, y_tgt, y_src, t_rand, eps=eps), t_rand
    if method == "pds":
        return pds_grad(model, views_tgt, views_src, y_tgt, y_src, t_rand, eps=eps, eps_prev=eps_prev), t_rand
    if method == "dc":
        t = dc_timestep(iteration, n_iters, cfg)
    elif method == "dc_random_t":
        t = cfg.t_min + (cfg.t_max - cfg.t_min) * u
    elif method == "dc_psi0":
        t = dc_timestep(iteration, n_iters, cfg)
        cfg = DCConfig(cfg.t_min, cfg.t_max, cfg.delta, cfg.gamma, 0.0)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return dc_grad(model, views_tgt, views_src, y_tgt, y_src, t, eps=eps, cfg=cfg), t


def image_side(dim: int) -> int:
    """The side of a flattened square image of ``dim`` pixels: 8 (64, the ci prior) or 16 (256, the UNet prior)."""
    side = {IMAGE_SIDE * IMAGE_SIDE: IMAGE_SIDE, SIDE16 * SIDE16: SIDE16}.get(int(dim))
    if side is None:
        raise ValueError(f"images must have {IMAGE_SIDE ** 2} (8×8) or {SIDE16 ** 2} (16×16) pixels, got {dim}")
    return side


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 3) -> torch.Tensor:
    """Per-image SSIM of flattened 8×8 or 16×16 images in [−1, 1] (pytorch-msssim, Gaussian window 3, data
    range 2), at the images' own resolution."""
    from pytorch_msssim import ssim as _ssim

    side = image_side(a.shape[-1])
    shape = (-1, 1, side, side)
    return _ssim(a.reshape(shape).double(), b.reshape(shape).double(), data_range=2.0, win_size=win_size,
                 size_average=False)


@torch.no_grad()
def target_probability(classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Classifier probability P(y | x) per image; 16×16 images enter the 8×8 classifier through
    ``to_digits8`` (the least-squares preimage under the bilinear upsampling, exact on upsampled digits)."""
    if image_side(x.shape[-1]) == SIDE16:
        x = to_digits8(x)
    return torch.softmax(classifier(x.float()), dim=1).gather(1, y[:, None])[:, 0].double()


@dataclass
class EditResult:
    final: torch.Tensor  # [B, side²] edited canonical images
    p_target: np.ndarray  # [N, B] P(b | θ_i) after each iteration
    ssim: np.ndarray  # [N, B] SSIM(θ_i, source)
    mse: np.ndarray  # [B] final MSE to the source
    timesteps: np.ndarray  # [N] the timestep of each iteration


def edit(method: str, model, classifier, sources: torch.Tensor, y_src: torch.Tensor, y_tgt: torch.Tensor, *,
         n_iters: int, n_views: int = 4, lr: float = 0.05, seed: int = 0, max_angle_deg: float = 10.0,
         max_shift_px: float = 1.0, cfg: DCConfig = DCConfig(), progress: bool = False) -> EditResult:
    """Edit the canonical images θ (initialised at ``sources``) from y_src to y_tgt with one method.

    Every iteration draws K views per image (shared by θ and the source), computes the method's render
    gradient on the K·B views and takes one Adam step on θ, then clamps θ to the image range [−1, 1].
    """
    if n_iters <= 0 or n_views <= 0 or lr <= 0:
        raise ValueError(f"need n_iters, n_views, lr > 0, got {n_iters}, {n_views}, {lr}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b, side = sources.shape[0], image_side(sources.shape[1])
    if y_src.shape != (b,) or y_tgt.shape != (b,):
        raise ValueError("y_src and y_tgt must have one label per source image")
    gen = torch.Generator().manual_seed(int(seed))
    theta = sources.clone().float().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    yt, ys = y_tgt.repeat_interleave(n_views), y_src.repeat_interleave(n_views)
    hist, ts = torch.zeros(n_iters, b, sources.shape[1]), np.zeros(n_iters)
    for i in tqdm(range(n_iters), disable=not progress, desc=method, leave=False):
        mats = affine_thetas(b * n_views, max_angle_deg=max_angle_deg, max_shift_px=max_shift_px, side=side,
                             generator=gen).reshape(b, n_views, 2, 3)
        v_tgt = affine_views(theta, mats, side=side)
        with torch.no_grad():
            v_src = affine_views(sources.float(), mats, side=side)
        grad, ts[i] = method_gradient(method, model, v_tgt.detach(), v_src, yt, ys, i, n_iters, gen, cfg)
        opt.zero_grad()
        (apply_render_gradient(v_tgt, grad) / n_views).backward()
        opt.step()
        with torch.no_grad():
            theta.clamp_(-1.0, 1.0)
            hist[i] = theta
    flat = hist.reshape(n_iters * b, -1)
    p_hist = target_probability(classifier, flat, y_tgt.repeat(n_iters)).reshape(n_iters, b).numpy()
    s_hist = ssim(flat, sources.float().repeat(n_iters, 1)).reshape(n_iters, b).numpy()
    final = theta.detach()
    mse = ((final.double() - sources.double()) ** 2).mean(dim=1).numpy()
    return EditResult(final, p_hist, s_hist, mse, ts)


def iterations_to_success(p_target: np.ndarray, ssim_hist: np.ndarray, p_min: float = 0.8,
                          ssim_min: float = 0.5) -> np.ndarray:
    """Per image, the first iteration (1-based) with P(b) ≥ p_min and SSIM ≥ ssim_min; N + 1 when never."""
    ok = (p_target >= p_min) & (ssim_hist >= ssim_min)
    n = ok.shape[0]
    first = np.where(ok.any(axis=0), ok.argmax(axis=0) + 1, n + 1)
    return first.astype(float)


def select_sources(x: torch.Tensor, y: torch.Tensor, n_per_pair: int, pairs=PAIRS):
    """The first ``n_per_pair`` digits of each pair's source class: (images, source labels, target labels)."""
    xs, ys, yt = [], [], []
    for a, b in pairs:
        idx = torch.nonzero(y == a)[:, 0]
        if len(idx) < n_per_pair:
            raise ValueError(f"class {a} has only {len(idx)} digits, asked for {n_per_pair}")
        idx = idx[:n_per_pair]
        xs.append(x[idx])
        ys.append(torch.full((n_per_pair,), a, dtype=torch.long))
        yt.append(torch.full((n_per_pair,), b, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys), torch.cat(yt)


def replacement_ssim(x: torch.Tensor, y: torch.Tensor, sources: torch.Tensor, y_tgt: torch.Tensor,
                     n_per_source: int = 8, seed: int = 0) -> float:
    """Mean SSIM between each source and random held-out digits of its target class.

    The identity threshold of "success": an edit must stay closer to its source than an unrelated digit of
    the target class (a full replacement) is on average.
    """
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for src, b in zip(sources, y_tgt, strict=True):
        pool = x[y == b]
        pick = pool[torch.randint(len(pool), (n_per_source,), generator=gen)]
        vals.append(ssim(pick, src.expand_as(pick)))
    return float(torch.cat(vals).mean())
