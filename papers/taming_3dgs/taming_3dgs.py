"""Taming 3DGS: budgeted, score-based densification for 3D Gaussian splatting.

Mallick, Goel, Kerbl, Vicente Carrasco, Steinberger, De La Torre (SIGGRAPH Asia 2024).

A scene is a set of anisotropic 3D Gaussians ``G_i = (mu_i, Sigma_i, o_i, c_i)`` with
``Sigma_i = R_i S_i S_i^T R_i^T`` (scale ``S`` and unit quaternion ``q``, as in 3DGS).
A view is rendered by projecting each Gaussian to the image (EWA splatting,
``Sigma' = J W Sigma W^T J^T``), sorting by depth and alpha-compositing front to back,

    C(p) = sum_i c_i alpha_i(p) T_i(p),   T_i(p) = prod_{j<i} (1 - alpha_j(p)),
    alpha_i(p) = o_i exp(-1/2 (p - mu'_i)^T Sigma'^{-1}_i (p - mu'_i)).

3DGS grows the model by *adaptive density control*: every few hundred steps, Gaussians
whose average view-space positional gradient exceeds a threshold are cloned (small ones)
or split (large ones); the final count is whatever the scene produces.  Taming 3DGS instead
fixes a budget ``B`` and makes the count follow a parabola that reaches ``B`` exactly
(Eq. 2 of the paper),

    N(x) = a x^2 + b x + c,  c = N_0,  b = 2 (B - N_0) / S,  a = -(B - N_0) / S^2,

over ``S`` densification steps ``x = 1..S`` (``N(S) = B``, slope zero at the end).  At each
step the ``N(x) - N_current`` new Gaussians are chosen by *multinomial sampling without
replacement*, weighted by a score that sums, over a few training views, the
view's photometric loss times a weighted sum of median-normalised per-Gaussian terms
(positional gradient, opacity, depth, screen radius, scale) and per-pixel terms accumulated
through the blending weights (an edge/L1 loss map, blending weight, pixel count).

This module is a small, tile-free, pure-PyTorch version of all of it, for CPU at 32-64 px:
a procedural multi-view scene (analytic ray casting of textured primitives), the
differentiable renderer, the 3DGS baseline, Taming's schedule and score, ablation scores
(random, gradient-only) and a naive cap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _ssim
from tqdm.auto import tqdm

SH_C0 = 0.28209479177387814
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99

#: Score coefficients of the official code (train.py), one per term.
TAMING_COEFFS = dict(
    view=50.0, edge=50.0, mse=50.0, grad=25.0, opac=100.0, depth=5.0,
    loss=10.0, radii=10.0, scale=25.0, count=0.1, blend=50.0,
)


# ----------------------------------------------------------------------------- schedule
def count_schedule(n_start: int, budget: int, n_steps: int) -> np.ndarray:
    """Target counts ``N(x)`` for densification steps ``x = 1..n_steps`` (Eq. 2).

    ``N(x) = a x^2 + b x + c`` with ``c = n_start``, ``b = 2 (B - n_start) / S`` (twice the
    constant slope that would reach the budget) and ``a = (B - c - b S) / S^2``, so that
    ``N(S) = B`` exactly and the growth slows to zero at the end.  Values are floored to
    integers as in the official ``get_count_array``; the last one is exactly ``budget``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if n_start < 1 or budget < n_start:
        raise ValueError(f"need 1 <= n_start <= budget, got n_start={n_start}, budget={budget}")
    s = float(n_steps)
    b = 2.0 * (budget - n_start) / s
    a = (budget - n_start - b * s) / (s * s)
    x = np.arange(1, n_steps + 1, dtype=np.float64)
    counts = np.floor(a * x**2 + b * x + n_start + 1e-9).astype(np.int64)
    counts[-1] = budget
    return np.maximum.accumulate(counts)


# ----------------------------------------------------------------------------- cameras
@dataclass
class Camera:
    """Pinhole camera, OpenCV convention (x right, y down, z forward)."""

    viewmat: torch.Tensor  # [4, 4] world -> camera
    K: torch.Tensor  # [3, 3]
    width: int
    height: int

    @property
    def center(self) -> torch.Tensor:
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t


def look_at(eye, target, width: int, height: int, fov_deg: float = 50.0) -> Camera:
    """Camera at ``eye`` looking at ``target`` with world up ``+z``."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in world coordinates
    t = -R @ eye
    V = np.eye(4)
    V[:3, :3], V[:3, 3] = R, t
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Camera(torch.tensor(V, dtype=torch.float32), torch.tensor(K, dtype=torch.float32), width, height)


def hemisphere_cameras(n: int, size: int, radius: float = 4.0, azimuth_offset: float = 0.0,
                       elevations=(20.0, 45.0)) -> list[Camera]:
    """``n`` cameras on a hemisphere around the scene, alternating between elevations."""
    if n < 1:
        raise ValueError("n must be >= 1")
    cams = []
    for k in range(n):
        az = math.radians(azimuth_offset + 360.0 * k / n)
        el = math.radians(elevations[k % len(elevations)])
        eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        cams.append(look_at(eye, [0.0, 0.0, 0.3], size, size))
    return cams


# ----------------------------------------------------------------------------- scene
def _ray_dirs(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    W, H = cam.width, cam.height
    K = cam.K.double().numpy()
    V = cam.viewmat.double().numpy()
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    d = d_cam.reshape(-1, 3) @ V[:3, :3]  # R^T d
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    origin = -V[:3, :3].T @ V[:3, 3]
    return np.broadcast_to(origin, d.shape).copy(), d


def ray_cast_scene(cam: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Analytic ray cast of the procedural scene: a checkered sphere, a striped box and a
    tiled floor disk, Lambertian shading, black background.

    Returns ``image [H, W, 3]`` in ``[0, 1]``, hit points ``[H*W, 3]`` and a hit mask.
    """
    o, d = _ray_dirs(cam)
    n_rays = o.shape[0]
    t_best = np.full(n_rays, np.inf)
    normal = np.zeros((n_rays, 3))
    albedo = np.zeros((n_rays, 3))

    # sphere
    c, r = np.array([-0.6, -0.3, 0.6]), 0.6
    oc = o - c
    bq = np.sum(oc * d, 1)
    disc = bq**2 - (np.sum(oc * oc, 1) - r * r)
    ts = np.where(disc > 0, -bq - np.sqrt(np.maximum(disc, 0)), np.inf)
    ts = np.where(ts > 1e-4, ts, np.inf)
    hit = ts < t_best
    p = o + np.where(np.isfinite(ts), ts, 0.0)[:, None] * d
    nrm = (p - c) / r
    theta = np.arctan2(nrm[:, 1], nrm[:, 0])
    phi = np.arccos(np.clip(nrm[:, 2], -1, 1))
    chk = (np.floor(theta / (np.pi / 4)) + np.floor(phi / (np.pi / 4))) % 2
    col = np.where(chk[:, None] > 0, [0.9, 0.2, 0.15], [0.95, 0.9, 0.3])
    t_best = np.where(hit, ts, t_best)
    normal[hit], albedo[hit] = nrm[hit], col[hit]

    # axis-aligned box (slab method)
    lo, hi = np.array([0.3, 0.0, 0.0]), np.array([1.0, 0.7, 0.9])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - o) / d, (hi - o) / d
    tmin = np.nanmax(np.minimum(t1, t2), 1)
    tmax = np.nanmin(np.maximum(t1, t2), 1)
    tb = np.where((tmax >= tmin) & (tmin > 1e-4), tmin, np.inf)
    hit = tb < t_best
    p = o + np.where(np.isfinite(tb), tb, 0.0)[:, None] * d
    ctr, half = (lo + hi) / 2, (hi - lo) / 2
    q = (p - ctr) / half
    axis = np.argmax(np.abs(q), 1)
    nrm = np.zeros_like(p)
    nrm[np.arange(n_rays), axis] = np.sign(q[np.arange(n_rays), axis])
    stripe = np.floor(np.nan_to_num(p[:, 2]) / 0.15) % 2
    col = np.where(stripe[:, None] > 0, [0.15, 0.35, 0.9], [0.85, 0.95, 0.95])
    t_best = np.where(hit, tb, t_best)
    normal[hit], albedo[hit] = nrm[hit], col[hit]

    # floor disk z = 0, radius 1.8
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = -o[:, 2] / d[:, 2]
    p = o + np.nan_to_num(tf, posinf=0, neginf=0)[:, None] * d
    ok = (tf > 1e-4) & (np.sum(p[:, :2] ** 2, 1) < 1.8**2)
    tf = np.where(ok, tf, np.inf)
    hit = tf < t_best
    tile = (np.floor(p[:, 0] / 0.45) + np.floor(p[:, 1] / 0.45)) % 2
    col = np.where(tile[:, None] > 0, [0.3, 0.6, 0.3], [0.7, 0.75, 0.6])
    t_best = np.where(hit, tf, t_best)
    normal[hit], albedo[hit] = [0.0, 0.0, 1.0], col[hit]

    mask = np.isfinite(t_best)
    light = np.array([0.4, -0.5, 0.77])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(np.sum(normal * light, 1), 0, 1)
    rgb = np.where(mask[:, None], albedo * shade[:, None], 0.0)
    points = o + np.where(mask, t_best, 0.0)[:, None] * d
    return rgb.reshape(cam.height, cam.width, 3), points, mask


@dataclass
class Scene:
    train_cams: list
    test_cams: list
    train_images: torch.Tensor  # [V, H, W, 3]
    test_images: torch.Tensor
    init_points: torch.Tensor  # [N0, 3]
    init_colors: torch.Tensor  # [N0, 3]
    extent: float


def make_scene(size: int = 32, n_train: int = 24, n_test: int = 8, n_init: int = 100,
               point_noise: float = 0.02, random_state: int = 0) -> Scene:
    """Procedural multi-view scene with held-out views and noisy "SfM" points.

    Training and test cameras lie on the same hemisphere, test azimuths halfway between
    training ones.  The initial point cloud is ``n_init`` surface points seen by the
    training cameras, jittered by ``point_noise`` (as an SfM cloud would be).
    """
    if size < 8 or n_train < 1 or n_test < 1 or n_init < 4:
        raise ValueError("need size >= 8, n_train >= 1, n_test >= 1, n_init >= 4")
    rng = np.random.default_rng(random_state)
    train = hemisphere_cameras(n_train, size)
    test = hemisphere_cameras(n_test, size, azimuth_offset=180.0 / n_test + 7.0, elevations=(32.0,))
    imgs, pts, cols = [], [], []
    for cam in train:
        img, p, m = ray_cast_scene(cam)
        imgs.append(img)
        pts.append(p[m])
        cols.append(img.reshape(-1, 3)[m])
    pts, cols = np.concatenate(pts), np.concatenate(cols)
    idx = rng.choice(len(pts), size=n_init, replace=False)
    init = pts[idx] + point_noise * rng.standard_normal((n_init, 3))
    test_imgs = [ray_cast_scene(c)[0] for c in test]
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Scene(train, test, f32(imgs), f32(test_imgs), f32(init), f32(cols[idx]), extent=1.8)


# ----------------------------------------------------------------------------- Gaussians
def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions ``(w, x, y, z)`` (normalised here)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))


def covariance(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """``Sigma = R S S^T R^T`` (3DGS Eq. 6) from scales ``[N, 3]`` and quaternions ``[N, 4]``."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def project(means, covs, cam: Camera, eps2d: float = 0.3, near: float = 0.01):
    """EWA projection (3DGS Eq. 5): ``Sigma' = J W Sigma W^T J^T + eps2d I``.

    Returns pixel means ``[N, 2]``, conics (inverse 2D covariance ``a, b, c``) ``[N, 3]``,
    depths ``[N]``, integer radii ``[N]`` (3.33 sigma, 0 when culled) and 2D covariances.
    The Jacobian uses the frustum-clamped ``x/z, y/z`` of 3DGS/gsplat.
    """
    R, t = cam.viewmat[:3, :3], cam.viewmat[:3, 3]
    mc = means @ R.T + t
    cc = R @ covs @ R.T
    tx, ty, tz = mc.unbind(-1)
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    W, H = cam.width, cam.height
    tanx, tany = 0.5 * W / fx, 0.5 * H / fy
    txc = tz * torch.clamp(tx / tz, min=-(cx / fx + 0.3 * tanx), max=(W - cx) / fx + 0.3 * tanx)
    tyc = tz * torch.clamp(ty / tz, min=-(cy / fy + 0.3 * tany), max=(H - cy) / fy + 0.3 * tany)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * txc / tz**2, zero, fy / tz, -fy * tyc / tz**2], -1).reshape(-1, 2, 3)
    cov2 = J @ cc @ J.transpose(-1, -2) + eps2d * torch.eye(2)
    mean2 = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)
    det = (cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] * cov2[:, 1, 0]).clamp(min=1e-10)
    conic = torch.stack([cov2[:, 1, 1] / det, -0.5 * (cov2[:, 0, 1] + cov2[:, 1, 0]) / det, cov2[:, 0, 0] / det], -1)
    with torch.no_grad():
        rx = torch.ceil(3.33 * torch.sqrt(cov2[:, 0, 0]))
        ry = torch.ceil(3.33 * torch.sqrt(cov2[:, 1, 1]))
        inside = ((mean2[:, 0] + rx > 0) & (mean2[:, 0] - rx < W) & (mean2[:, 1] + ry > 0)
                  & (mean2[:, 1] - ry < H) & (tz > near))
        radii = torch.where(inside, torch.maximum(rx, ry), torch.zeros_like(rx)).int()
    return mean2, conic, tz, radii, cov2


class GaussianModel:
    """Gaussian parameters (raw, unconstrained) and per-Gaussian densification statistics."""

    def __init__(self, means, log_scales, quats, opacity_logits, sh0):
        self.params = {
            "means": means, "log_scales": log_scales, "quats": quats,
            "opacity_logits": opacity_logits, "sh0": sh0,
        }
        for p in self.params.values():
            p.requires_grad_(True)
        self.reset_stats()

    @classmethod
    def from_points(cls, points: torch.Tensor, colors: torch.Tensor, init_opacity: float = 0.1):
        """3DGS initialisation: isotropic scale = RMS distance to the 3 nearest neighbours."""
        d2 = torch.cdist(points, points) ** 2
        d2.fill_diagonal_(float("inf"))
        knn = torch.topk(d2, 3, largest=False).values.mean(1).clamp(min=1e-7)
        n = len(points)
        return cls(points.clone(), (0.5 * torch.log(knn))[:, None].repeat(1, 3),
                   torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                   torch.full((n, 1), math.log(init_opacity / (1 - init_opacity))),
                   (colors - 0.5) / SH_C0)

    def __len__(self):
        return self.params["means"].shape[0]

    @property
    def scales(self):
        return torch.exp(self.params["log_scales"])

    @property
    def opacity(self):
        return torch.sigmoid(self.params["opacity_logits"])[:, 0]

    @property
    def colors(self):
        return torch.clamp(SH_C0 * self.params["sh0"] + 0.5, min=0.0)

    def reset_stats(self):
        n = len(self)
        self.grad_accum = torch.zeros(n)
        self.denom = torch.zeros(n)

    def mean_grad(self) -> torch.Tensor:
        return torch.where(self.denom > 0, self.grad_accum / self.denom.clamp(min=1), torch.zeros(()))


def render(model: GaussianModel, cam: Camera, background: float = 0.0, return_weights: bool = False):
    """Tile-free alpha compositing (3DGS Eq. 3) of all visible Gaussians, sorted by depth.

    Returns a dict with ``image [H, W, 3]``, ``means2d`` (with ``retain_grad`` for the
    densification statistic), ``visible`` (bool ``[N]``), ``radii``, ``depths`` and, with
    ``return_weights``, the blending weights ``w[p, i] = alpha_i(p) T_i(p)`` ``[P, N_vis]``
    and ``alpha``.
    """
    covs = covariance(model.scales, model.params["quats"])
    mean2, conic, depth, radii, _ = project(model.params["means"], covs, cam)
    if mean2.requires_grad:
        mean2.retain_grad()
    visible = radii > 0
    idx = torch.nonzero(visible)[:, 0]
    idx = idx[torch.argsort(depth[idx], stable=True)]
    W, H = cam.width, cam.height
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [P, 2]
    dxy = pix[:, None, :] - mean2[idx][None]  # [P, M, 2]
    a, b, c = conic[idx].unbind(-1)
    power = -0.5 * (a * dxy[..., 0] ** 2 + c * dxy[..., 1] ** 2) - b * dxy[..., 0] * dxy[..., 1]
    alpha = torch.clamp(model.opacity[idx] * torch.exp(torch.clamp(power, max=0.0)), max=ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    trans = torch.cumprod(torch.cat([torch.ones(pix.shape[0], 1), one_minus], 1), 1)
    weights = alpha * trans[:, :-1]
    img = weights @ model.colors[idx] + trans[:, -1:] * background
    out = {"image": img.reshape(H, W, 3), "means2d": mean2, "visible": visible, "radii": radii,
           "depths": depth, "order": idx}
    if return_weights:
        out["weights"], out["alpha"] = weights, alpha
    return out


# ----------------------------------------------------------------------------- losses, metrics
def ssim(img: torch.Tensor, ref: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """SSIM from ``pytorch-msssim`` on ``[H, W, 3]`` images in ``[0, 1]``."""
    return _ssim(img.permute(2, 0, 1)[None], ref.permute(2, 0, 1)[None], data_range=1.0,
                 win_size=win_size, size_average=True)


def photometric_loss(img, ref, lambda_dssim: float = 0.2) -> torch.Tensor:
    """3DGS loss (Eq. 7): ``(1 - lambda) L1 + lambda (1 - SSIM)``."""
    return (1 - lambda_dssim) * (img - ref).abs().mean() + lambda_dssim * (1 - ssim(img, ref))


def psnr(img, ref) -> float:
    mse = float(((img - ref) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(model: GaussianModel, cams, images) -> tuple[float, float]:
    """Mean PSNR and SSIM over held-out views."""
    ps, ss = [], []
    with torch.no_grad():
        for cam, ref in zip(cams, images, strict=True):
            img = render(model, cam)["image"].clamp(0, 1)
            ps.append(psnr(img, ref))
            ss.append(float(ssim(img, ref)))
    return float(np.mean(ps)), float(np.mean(ss))


# ----------------------------------------------------------------------------- Taming score
def edge_map(img: torch.Tensor) -> torch.Tensor:
    """Edge magnitude of the grey image with the 3x3 "find edges" kernel (8 centre, -1 around),
    clipped to ``[0, 1]``: the pixel prior of the Taming score."""
    g = img.mean(-1)[None, None]
    k = -torch.ones(1, 1, 3, 3)
    k[0, 0, 1, 1] = 8.0
    return F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)[0, 0].clamp(0, 1)


def median_normalise(coef: float, v: torch.Tensor) -> torch.Tensor:
    """``coef * v / median(v[v > 0])`` on positive entries, 0 elsewhere (official ``normalize``)."""
    v = torch.nan_to_num(v.float(), nan=0.0)
    out = torch.zeros_like(v)
    pos = v > 0
    if pos.any():
        out[pos] = coef * v[pos] / torch.median(v[pos])
    return out


@torch.no_grad()
def taming_score(model: GaussianModel, cams, images, coeffs: dict | None = None) -> torch.Tensor:
    """Per-Gaussian score of Taming 3DGS (Sec. 4.1): for each view ``v``,

        s_i += w_view L_v ( sum_k w_k g_ik / med(g_k)  +  sum_l w_l p_il / med(p_l) ),

    Gaussian terms ``g``: mean positional gradient, opacity, depth, screen radius, scale
    volume; pixel terms ``p`` accumulated through blending weights ``alpha T``: the loss map
    (``w_mse`` min-max L1 error + ``w_edge`` edge map), the blending weight, the pixel count.
    Only visible Gaussians get a view's contribution.  (The official distance term is omitted.)
    """
    c = dict(TAMING_COEFFS, **(coeffs or {}))
    n = len(model)
    score = torch.zeros(n)
    grads, opac = model.mean_grad(), model.opacity
    scale_vol = model.scales.prod(1)
    for cam, ref in zip(cams, images, strict=True):
        out = render(model, cam, return_weights=True)
        img = out["image"]
        L = float(photometric_loss(img, ref))
        l1 = (img - ref).abs().mean(-1).reshape(-1)
        l1n = (l1 - l1.min()) / (l1.max() - l1.min()).clamp(min=1e-12)
        lmap = c["mse"] * l1n + c["edge"] * edge_map(ref).reshape(-1)
        idx, w, a = out["order"], out["weights"], out["alpha"]
        full = lambda v, idx=idx: torch.zeros(n).index_put((idx,), v)  # noqa: E731
        loss_acc = full(lmap @ w)
        blend = full(w.sum(0))
        count = full((a > 0).float().sum(0))
        vis = out["visible"]
        g_imp = (median_normalise(c["grad"], grads) + median_normalise(c["opac"], opac)
                 + median_normalise(c["depth"], out["depths"] * vis)
                 + median_normalise(c["radii"], out["radii"].float())
                 + median_normalise(c["scale"], scale_vol))
        p_imp = (median_normalise(c["loss"], loss_acc) + median_normalise(c["count"], count)
                 + median_normalise(c["blend"], blend))
        score += torch.where(vis, c["view"] * L * (g_imp + p_imp), torch.zeros(()))
    return score


# ----------------------------------------------------------------------------- densification
LRS = dict(means=2e-3, log_scales=1e-2, quats=1e-2, opacity_logits=5e-2, sh0=1e-2)


def make_optimizer(model: GaussianModel, lrs: dict | None = None) -> torch.optim.Adam:
    lrs = dict(LRS, **(lrs or {}))
    return torch.optim.Adam([{"params": [p], "lr": lrs[k], "name": k} for k, p in model.params.items()],
                            eps=1e-15)


def _replace_params(model: GaussianModel, opt: torch.optim.Adam, keep: torch.Tensor, new: dict):
    """Keep rows ``keep`` and append ``new`` rows to every parameter; Adam moments of kept
    rows are kept, new rows start at zero (as in 3DGS ``densification_postfix``)."""
    n_new = next(iter(new.values())).shape[0]
    for group in opt.param_groups:
        k = group["name"]
        old = group["params"][0]
        p = torch.cat([old.detach()[keep], new[k].detach()]).requires_grad_(True)
        st = opt.state.pop(old, None)
        if st:
            for m in ("exp_avg", "exp_avg_sq"):
                st[m] = torch.cat([st[m][keep], torch.zeros((n_new,) + st[m].shape[1:])])
            opt.state[p] = st
        group["params"][0] = p
        model.params[k] = p
    stats_g = torch.cat([model.grad_accum[keep], torch.zeros(n_new)])
    stats_d = torch.cat([model.denom[keep], torch.zeros(n_new)])
    model.grad_accum, model.denom = stats_g, stats_d


def clone_and_split(model: GaussianModel, opt, clone_idx: torch.Tensor, split_idx: torch.Tensor,
                    gen: torch.Generator):
    """3DGS clone (copy) and split (two samples from ``N(mu, Sigma)``, scales / 1.6, the
    parent removed): each selected Gaussian adds exactly one to the count."""
    P = {k: v.detach() for k, v in model.params.items()}
    n = len(model)
    clones = {k: v[clone_idx] for k, v in P.items()}
    s = model.scales.detach()[split_idx].repeat(2, 1)
    R = quat_to_rotmat(P["quats"][split_idx]).repeat(2, 1, 1)
    z = torch.randn(s.shape, generator=gen) * s
    splits = {k: v[split_idx].repeat(2, *([1] * (v.dim() - 1))) for k, v in P.items()}
    splits["means"] = splits["means"] + (R @ z[..., None])[..., 0]
    splits["log_scales"] = torch.log(s / 1.6)
    new = {k: torch.cat([clones[k], splits[k]]) for k in P}
    keep = torch.ones(n, dtype=torch.bool)
    keep[split_idx] = False
    _replace_params(model, opt, keep, new)


def prune(model: GaussianModel, opt, mask: torch.Tensor):
    """Remove the Gaussians where ``mask`` is true."""
    if mask.any():
        _replace_params(model, opt, ~mask, {k: v.detach()[:0] for k, v in model.params.items()})


def adc_step(model, opt, grad_threshold: float, percent_dense: float, extent: float,
             min_opacity: float, gen, cap: int | None = None) -> dict:
    """3DGS adaptive density control: clone small / split large Gaussians whose mean
    view-space gradient is ``>= grad_threshold``, then prune ``opacity < min_opacity``.
    With ``cap`` (the naive-cap baseline) candidates beyond ``cap - N`` are dropped in index
    order, so the count never exceeds the cap."""
    g = model.mean_grad()
    big = model.scales.detach().max(1).values > percent_dense * extent
    cand = g >= grad_threshold
    clone_idx = torch.nonzero(cand & ~big)[:, 0]
    split_idx = torch.nonzero(cand & big)[:, 0]
    if cap is not None:
        room = max(cap - len(model), 0)
        both = torch.cat([clone_idx, split_idx]).sort().values[:room]
        clone_idx = both[~big[both]]
        split_idx = both[big[both]]
    clone_and_split(model, opt, clone_idx, split_idx, gen)
    prune(model, opt, model.opacity.detach() < min_opacity)
    return {"n_candidates": int(cand.sum())}


def budget_step(model, opt, target: int, scores: torch.Tensor, grad_threshold: float,
                percent_dense: float, extent: float, gen) -> dict:
    """Taming densification to ``target`` Gaussians (Sec. 4.2).

    Candidates are the 3DGS ones (gradient ``>= grad_threshold``); the ``target - N`` new
    Gaussians are split between clone and split candidates in proportion to their numbers and
    drawn by multinomial sampling without replacement with probability proportional to
    ``scores``.  Purely constructive (no pruning).  When there are fewer candidates than
    needed, the remainder is drawn, by score, from the other Gaussians (a deviation from the
    official code, which stops short), so that the count follows Eq. 2 exactly.
    """
    n = len(model)
    need = target - n
    if need < 0:
        raise ValueError(f"target {target} below the current count {n}: Taming is constructive")
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {tuple(scores.shape)}")
    g = model.mean_grad()
    big = model.scales.detach().max(1).values > percent_dense * extent
    cand = g >= grad_threshold
    w = scores.clamp(min=0) + 1e-12
    n_c, n_s = int((cand & ~big).sum()), int((cand & big).sum())
    chosen = []
    if need and n_c + n_s:
        take = min(need, n_c + n_s)
        k_c = (take * n_c) // (n_c + n_s)
        k_s = take - k_c
        for mask, k in ((cand & ~big, k_c), (cand & big, k_s)):
            pool = torch.nonzero(mask)[:, 0]
            if k > 0:
                chosen.append(pool[torch.multinomial(w[pool], k, replacement=False, generator=gen)])
    n_fallback = need - sum(len(c) for c in chosen)
    extra = torch.zeros(0, dtype=torch.long)
    if n_fallback > 0:
        pool = torch.nonzero(~cand)[:, 0]
        k = min(n_fallback, len(pool))
        if k:
            chosen.append(pool[torch.multinomial(w[pool], k, replacement=False, generator=gen)])
        if n_fallback > k:  # more growth than Gaussians: extra clones drawn with replacement
            extra = torch.multinomial(w, n_fallback - k, replacement=True, generator=gen)
    sel = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    clone_and_split(model, opt, torch.cat([sel[~big[sel]], extra]), sel[big[sel]], gen)
    return {"n_candidates": int(cand.sum()), "n_fallback": int(max(n_fallback, 0))}


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    method: str
    psnr: float
    ssim: float
    n_final: int
    n_peak: int
    counts: list = field(default_factory=list)  # count after each densification step
    targets: list = field(default_factory=list)
    n_fallback: int = 0
    seconds: float = 0.0
    model: GaussianModel | None = None


METHODS = ("3dgs", "taming", "random", "gradient", "naive_cap")


def train(scene: Scene, method: str, n_iters: int = 300, densify_from: int = 50,
          densify_until: int = 250, densify_every: int = 25, budget: int | None = None,
          grad_threshold: float = 2e-4, percent_dense: float = 0.01, min_opacity: float = 0.005,
          n_score_views: int = 10, random_state: int = 0, progress: bool = False) -> TrainResult:
    """Optimise Gaussians on the training views with one densification strategy.

    ``method``: ``"3dgs"`` (adaptive density control), ``"taming"`` (Eq. 2 schedule +
    Taming score), ``"random"`` / ``"gradient"`` (same schedule, uniform or gradient-only
    score), ``"naive_cap"`` (ADC stopped at ``budget``).  All methods share the scene, the
    view order, the optimiser and the number of steps; ``random_state`` seeds everything.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "3dgs" and budget is None:
        raise ValueError(f"method {method!r} needs a budget")
    if not 0 < densify_from < densify_until <= n_iters or densify_every < 1:
        raise ValueError("need 0 < densify_from < densify_until <= n_iters and densify_every >= 1")
    torch.manual_seed(random_state)
    gen = torch.Generator().manual_seed(random_state)
    view_rng = np.random.default_rng(random_state)
    model = GaussianModel.from_points(scene.init_points, scene.init_colors)
    opt = make_optimizer(model)
    steps = list(range(densify_from, densify_until + 1, densify_every))
    scheduled = method in ("taming", "random", "gradient")
    targets = count_schedule(len(model), budget, len(steps)).tolist() if scheduled else []
    res = TrainResult(method, 0.0, 0.0, 0, len(model), targets=targets)
    t0 = time.process_time()
    it = tqdm(range(1, n_iters + 1), desc=method, disable=not progress, leave=False)
    for i in it:
        v = int(view_rng.integers(len(scene.train_cams)))
        out = render(model, scene.train_cams[v])
        loss = photometric_loss(out["image"], scene.train_images[v])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            vis = out["visible"]
            half = 0.5 * torch.tensor([scene.train_cams[v].width, scene.train_cams[v].height])
            gnorm = (out["means2d"].grad * half).norm(dim=-1)  # NDC units, as in 3DGS
            model.grad_accum[vis] += gnorm[vis]
            model.denom[vis] += 1
        opt.step()
        if i in steps:
            with torch.no_grad():
                if method == "3dgs":
                    adc_step(model, opt, grad_threshold, percent_dense, scene.extent, min_opacity, gen)
                elif method == "naive_cap":
                    adc_step(model, opt, grad_threshold, percent_dense, scene.extent, min_opacity, gen, cap=budget)
                else:
                    target = targets[steps.index(i)]
                    if method == "taming":
                        views = view_rng.choice(len(scene.train_cams), size=min(n_score_views, len(scene.train_cams)),
                                                replace=False)
                        scores = taming_score(model, [scene.train_cams[j] for j in views],
                                              scene.train_images[views])
                    elif method == "gradient":
                        scores = model.mean_grad()
                    else:
                        scores = torch.ones(len(model))
                    info = budget_step(model, opt, target, scores, grad_threshold, percent_dense,
                                       scene.extent, gen)
                    res.n_fallback += info["n_fallback"]
                model.reset_stats()
            res.counts.append(len(model))
            res.n_peak = max(res.n_peak, len(model))
    res.seconds = time.process_time() - t0
    res.psnr, res.ssim = evaluate(model, scene.test_cams, scene.test_images)
    res.n_final = len(model)
    res.model = model
    return res
