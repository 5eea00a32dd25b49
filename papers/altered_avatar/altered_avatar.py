"""AlteredAvatar (Nguyen-Phuoc et al., arXiv 2305.19245): meta-learned fast style adaptation, as a toy proxy.

The paper stylises a pretrained dynamic 3D avatar (an Instant Avatar decoder) by adapting **only the
bias-mapper weights** with a CLIP style loss on renders from many views and expressions. Direct
optimisation of those weights for one style is good but slow; a feed-forward stylizer is fast but
generalises poorly to novel styles. AlteredAvatar meta-learns an *initialisation* of the adapted
weights: the inner loop fits one style, the outer loop moves the initialisation towards what fits many
styles, so that a novel style is reached in a few update steps.

This module keeps exactly that structure at a size a CPU can run, and replaces what is not available
offline (avatar data, CLIP, VGG) by procedural stand-ins:

* **Avatar** (:class:`DynamicField`): a coordinate MLP ``f_θ(γ(R_v x), e) → RGB`` with Fourier features
  ``γ``, a view ``v`` (an in-plane rotation and a horizontal shift of the image coordinates ``x``) and an
  expression code ``e ∈ R⁴``. Its weights are fitted once to a procedural face (:func:`face_image`) and
  then frozen; only its bias vectors ``b`` (the "bias subset") are adapted.
* **Style targets** (:func:`style_texture`): procedural textures, a two-colour palette on an oriented
  grating, a checkerboard or a band-pass noise field.
* **Style loss** (:class:`RandomGramLoss`): Gram matrices of a *fixed random* three-layer CNN (random
  texture statistics, seeded) plus colour means, eq. (S): ``L_style(I, T) = Σ_l ‖G_l(I) − G_l(T)‖² /
  ‖G_l(T)‖² + ‖μ(I) − μ(T)‖²``; a structure term ``L_struct = ‖P(lum I) − P(lum I₀)‖²`` (``P`` a
  4×4 average pool, ``I₀`` the un-stylised render) keeps the face, eq. (A): ``L = L_style + λ L_struct``.
* **Methods** (all adapt the same bias vector with Adam for K steps on the same renders):
  direct optimisation from the photoreal biases; Reptile meta-initialisation (:func:`reptile`, the
  inner loop is K_in Adam steps on one style, the outer update ``φ ← φ + ε (φ_K − φ)``); a joint
  multi-style initialisation (:func:`joint_init`, same number of gradient evaluations, no inner loop);
  a feed-forward stylizer (:class:`FeedForwardStylizer`, a hypernetwork from the target's random Gram
  statistics to the biases, zero adaptation steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DynamicField", "face_image", "render_views", "sample_views", "style_texture", "sample_styles",
           "RandomGramLoss", "fit_base", "adapt", "reptile", "joint_init", "FeedForwardStylizer",
           "train_feedforward", "steps_to_threshold", "maml_meta_gradient", "Style"]


# ----------------------------------------------------------------------------------------------- avatar
def _grid(resolution: int) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1]², shape (resolution², 2), row-major (y, x)."""
    if resolution < 4:
        raise ValueError(f"resolution must be at least 4, got {resolution}")
    t = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def sample_views(n: int, rng: np.random.Generator, max_angle: float = 0.4, max_shift: float = 0.25) -> torch.Tensor:
    """``n`` random (view, expression) codes, shape (n, 6): angle, shift, then e ∈ [-1, 1]⁴."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    angle = rng.uniform(-max_angle, max_angle, n)
    shift = rng.uniform(-max_shift, max_shift, n)
    expr = rng.uniform(-1, 1, (n, 4))
    return torch.tensor(np.column_stack([angle, shift, expr]), dtype=torch.float32)


def _view_coords(coords: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Camera change: rotate by the angle and shift horizontally, (n, P, 2)."""
    c, s = torch.cos(codes[:, 0]), torch.sin(codes[:, 0])
    x = c[:, None] * coords[None, :, 0] - s[:, None] * coords[None, :, 1] + codes[:, 1, None]
    y = s[:, None] * coords[None, :, 0] + c[:, None] * coords[None, :, 1]
    return torch.stack([x, y], dim=-1)


def face_image(codes: torch.Tensor, resolution: int) -> torch.Tensor:
    """The procedural "photoreal" avatar: a face seen from each view with each expression, (n, 3, R, R).

    A skin-coloured ellipse on a dark background, two eyes whose size follows ``e₀``, a mouth whose
    curvature follows ``e₁``, brows whose height follows ``e₂`` and a skin tint that follows ``e₃``.
    """
    p = _view_coords(_grid(resolution), codes)
    x, y = p[..., 0], p[..., 1]
    e = codes[:, 2:]
    head = ((x / 0.62) ** 2 + (y / 0.78) ** 2 < 1).float()
    eye_r = 0.09 + 0.04 * e[:, 0:1]
    eyes = (((x - 0.25) ** 2 + (y + 0.2) ** 2 < eye_r ** 2) | ((x + 0.25) ** 2 + (y + 0.2) ** 2 < eye_r ** 2)).float()
    mouth_y = 0.38 + 0.15 * e[:, 1:2] * (1 - (x / 0.3) ** 2)
    mouth = ((x.abs() < 0.3) & ((y - mouth_y).abs() < 0.05)).float()
    brow_y = -0.38 - 0.08 * e[:, 2:3]
    brows = (((x.abs() - 0.25).abs() < 0.12) & ((y - brow_y).abs() < 0.035)).float()
    tint = 0.1 * e[:, 3:4]
    skin = torch.stack([0.85 + tint, 0.65 + 0.5 * tint, 0.5 - tint], dim=-1)
    bg = torch.tensor([0.15, 0.2, 0.3])
    img = bg + head[..., None] * (skin - bg)
    dark = torch.clamp(eyes + mouth + brows, 0, 1)[..., None] * head[..., None]
    img = img * (1 - dark) + dark * torch.tensor([0.1, 0.05, 0.05])
    return img.clamp(0, 1).permute(0, 2, 1).reshape(codes.shape[0], 3, resolution, resolution)


class DynamicField(nn.Module):
    """A tiny dynamic neural field ``f(γ(R_v x), e) → RGB`` (eq. F).

    ``γ(p) = [sin(2^k π p), cos(2^k π p)]_{k<n_freq}``; three linear layers, ReLU, a sigmoid output.
    The weights are the frozen base; the three bias vectors, concatenated into one flat vector
    (:attr:`n_bias`), are the adapted subset. :meth:`forward` takes that vector explicitly, so any
    method can render with its own biases without touching the module.
    """

    def __init__(self, width: int = 48, n_freq: int = 4, random_state: int = 0):
        super().__init__()
        if width <= 0 or n_freq <= 0:
            raise ValueError(f"width and n_freq must be positive, got {width}, {n_freq}")
        g = torch.Generator().manual_seed(int(random_state))
        d_in = 4 * n_freq + 4
        self.n_freq, self.width = n_freq, width
        self.w1 = nn.Parameter(torch.randn(width, d_in, generator=g) / math.sqrt(d_in))
        self.w2 = nn.Parameter(torch.randn(width, width, generator=g) * math.sqrt(2 / width))
        self.w3 = nn.Parameter(torch.randn(3, width, generator=g) * math.sqrt(1 / width))
        self.bias = nn.Parameter(torch.zeros(2 * width + 3))

    @property
    def n_bias(self) -> int:
        return 2 * self.width + 3

    def features(self, coords: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        p = _view_coords(coords, codes)
        freqs = (2.0 ** torch.arange(self.n_freq, dtype=torch.float32)) * math.pi
        ang = p[..., None] * freqs
        gamma = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)
        expr = codes[:, None, 2:].expand(-1, coords.shape[0], -1)
        return torch.cat([gamma, expr], dim=-1)

    def forward(self, coords: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """RGB at ``coords`` for each code, (n, P, 3); ``bias`` defaults to the module's own."""
        b = self.bias if bias is None else bias
        if b.shape != (self.n_bias,):
            raise ValueError(f"bias must have shape ({self.n_bias},), got {tuple(b.shape)}")
        w = self.width
        h = F.relu(self.features(coords, codes) @ self.w1.T + b[:w])
        h = F.relu(h @ self.w2.T + b[w:2 * w])
        return torch.sigmoid(h @ self.w3.T + b[2 * w:])


def render_views(field: DynamicField, codes: torch.Tensor, resolution: int,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Render the field for each (view, expression) code, (n, 3, R, R)."""
    rgb = field(_grid(resolution), codes, bias)
    return rgb.permute(0, 2, 1).reshape(codes.shape[0], 3, resolution, resolution)


def fit_base(field: DynamicField, resolution: int, steps: int, lr: float = 3e-3, batch: int = 8,
             rng: np.random.Generator | None = None, progress: bool = False) -> list[float]:
    """Fit all weights (and the base biases) to the procedural face over random views; returns the MSE curve."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    rng = np.random.default_rng(0) if rng is None else rng
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    losses = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="base avatar")
    for _ in it:
        codes = sample_views(batch, rng)
        loss = F.mse_loss(render_views(field, codes, resolution), face_image(codes, resolution))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in field.parameters():
        p.requires_grad_(False)
    return losses


# ----------------------------------------------------------------------------------------------- styles
@dataclass(frozen=True)
class Style:
    """One procedural style: two palette colours, a pattern kind, a frequency and an orientation."""

    colors: tuple
    kind: str
    frequency: float
    angle: float
    seed: int


KINDS = ("grating", "checker", "noise")


def sample_styles(n: int, rng: np.random.Generator) -> list[Style]:
    """``n`` styles drawn i.i.d. from the procedural family (training and held-out come from disjoint draws)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    out = []
    for _ in range(n):
        c = rng.uniform(0, 1, (2, 3))
        out.append(Style(tuple(map(tuple, c.round(4))), KINDS[int(rng.integers(3))], float(rng.uniform(2, 6)),
                         float(rng.uniform(0, math.pi)), int(rng.integers(2**31))))
    return out


def style_texture(style: Style, resolution: int) -> torch.Tensor:
    """The style's texture image, (3, R, R) in [0, 1]."""
    if style.kind not in KINDS:
        raise ValueError(f"unknown style kind {style.kind!r}; expected one of {KINDS}")
    t = np.linspace(-1, 1, resolution)
    xx, yy = np.meshgrid(t, t)
    u = np.cos(style.angle) * xx + np.sin(style.angle) * yy
    v = -np.sin(style.angle) * xx + np.cos(style.angle) * yy
    if style.kind == "grating":
        m = 0.5 + 0.5 * np.sin(math.pi * style.frequency * u)
    elif style.kind == "checker":
        m = ((np.floor(style.frequency * (u + 2) / 2) + np.floor(style.frequency * (v + 2) / 2)) % 2).astype(float)
    else:
        r = np.random.default_rng(style.seed)
        spec = np.fft.fft2(r.standard_normal((resolution, resolution)))
        f = np.fft.fftfreq(resolution) * resolution / 2
        fr = np.hypot(*np.meshgrid(f, f))
        spec *= np.exp(-((fr - style.frequency) ** 2) / 2)
        m = np.real(np.fft.ifft2(spec))
        m = (m - m.min()) / (np.ptp(m) + 1e-8)
    c = np.asarray(style.colors)
    img = c[0][:, None, None] * (1 - m) + c[1][:, None, None] * m
    return torch.tensor(img, dtype=torch.float32)


class RandomGramLoss(nn.Module):
    """Random-feature texture statistics: Gram matrices of a fixed, seeded, random CNN (eq. S).

    Three 3×3 conv layers (3→c₁→c₂→c₃, the last two with stride 2), ReLU after each, weights drawn
    once from ``random_state`` and never trained. ``G_l(I) = φ_l(I) φ_l(I)ᵀ / (C_l H_l W_l)``.
    """

    def __init__(self, channels: tuple = (8, 16, 16), random_state: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(random_state))
        ws, c_in = [], 3
        for c in channels:
            ws.append(torch.randn(c, c_in, 3, 3, generator=g) * math.sqrt(2 / (9 * c_in)))
            c_in = c
        self.weights = ws

    def grams(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Gram matrices per layer, each (n, C_l, C_l)."""
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"images must be (n, 3, H, W), got {tuple(img.shape)}")
        h, out = img - 0.5, []
        for i, w in enumerate(self.weights):
            h = F.relu(F.conv2d(h, w, stride=1 if i == 0 else 2, padding=1))
            f = h.flatten(2)
            out.append(f @ f.transpose(1, 2) / f.shape[1] / f.shape[2])
        return out

    def target(self, texture: torch.Tensor) -> dict:
        """Precompute a texture's statistics (Grams, their squared norms, colour means)."""
        with torch.no_grad():
            g = [x[0] for x in self.grams(texture[None])]
            return {"grams": g, "norms": [float((x ** 2).sum()) + 1e-8 for x in g], "mean": texture.mean((1, 2))}

    def per_render(self, img: torch.Tensor, target: dict) -> torch.Tensor:
        """``L_style`` of each render against one target, (n,)."""
        loss = ((img.mean((2, 3)) - target["mean"]) ** 2).sum(1)
        for g, tg, nrm in zip(self.grams(img), target["grams"], target["norms"], strict=True):
            loss = loss + ((g - tg) ** 2).sum((1, 2)) / nrm
        return loss

    def stats_vector(self, target: dict) -> torch.Tensor:
        """A flat style descriptor for the feed-forward stylizer: upper-triangular Grams and colour means."""
        parts = [target["mean"]]
        for g in target["grams"]:
            i, j = torch.triu_indices(g.shape[0], g.shape[0])
            parts.append(g[i, j] / math.sqrt(sum(target["norms"])))
        return torch.cat(parts)


def structure_loss(img: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``L_struct``: MSE of 4×4-pooled luminance against the un-stylised render, per render (n,)."""
    lum = lambda x: (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # noqa: E731
    return ((F.avg_pool2d(lum(img), 4) - F.avg_pool2d(lum(reference), 4)) ** 2).mean((1, 2, 3))


# ----------------------------------------------------------------------------------------------- methods
class Task:
    """One style on a fixed set of renders: the objective ``L = mean(L_style) + λ mean(L_struct)`` (eq. A)."""

    def __init__(self, field: DynamicField, loss: RandomGramLoss, style: Style, codes: torch.Tensor,
                 resolution: int, structure_weight: float, reference_bias: torch.Tensor):
        self.field, self.loss, self.codes, self.resolution = field, loss, codes, resolution
        self.target = loss.target(style_texture(style, resolution))
        self.lam = float(structure_weight)
        with torch.no_grad():
            self.reference = render_views(field, codes, resolution, reference_bias)

    def terms(self, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = render_views(self.field, self.codes, self.resolution, bias)
        return self.loss.per_render(img, self.target), structure_loss(img, self.reference)

    def objective(self, bias: torch.Tensor) -> tuple[torch.Tensor, float]:
        style, struct = self.terms(bias)
        return style.mean() + self.lam * struct.mean(), float(style.mean().detach())


def adapt(task: Task, init: torch.Tensor, steps: int, lr: float,
          checkpoints: tuple = ()) -> tuple[torch.Tensor, np.ndarray] | tuple[torch.Tensor, np.ndarray, dict]:
    """K Adam steps on the bias vector from ``init``; returns the adapted bias and ``L_style`` before each
    step and after the last one (length ``steps + 1``: entry k is the style loss after k steps).
    With ``checkpoints``, also a dict ``{k: bias after k steps}``."""
    if any(k < 0 or k > steps for k in checkpoints):
        raise ValueError(f"checkpoints must lie in [0, {steps}], got {checkpoints}")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    b = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([b], lr=lr)
    curve, snaps = [], {}
    for k in range(steps):
        if k in checkpoints:
            snaps[k] = b.detach().clone()
        obj, style = task.objective(b)
        curve.append(style)
        opt.zero_grad()
        obj.backward()
        opt.step()
    with torch.no_grad():
        curve.append(task.objective(b)[1])
    if steps in checkpoints:
        snaps[steps] = b.detach().clone()
    if checkpoints:
        return b.detach(), np.asarray(curve), snaps
    return b.detach(), np.asarray(curve)


def reptile(make_task, n_styles: int, init: torch.Tensor, meta_iters: int, inner_steps: int, inner_lr: float,
            meta_lr: float, rng: np.random.Generator, progress: bool = False) -> torch.Tensor:
    """Reptile (Nichol et al. 2018) on the bias subset: for each meta-iteration draw a training style τ,
    run ``inner_steps`` Adam steps ``φ_K = U_τ^K(φ)`` and move ``φ ← φ + ε_t (φ_K − φ)``, with ``ε_t``
    annealed linearly from ``meta_lr`` to 0 (the outer loop of the paper's meta-learning, Sec. 3)."""
    if meta_iters <= 0 or inner_steps <= 0:
        raise ValueError(f"meta_iters and inner_steps must be positive, got {meta_iters}, {inner_steps}")
    phi = init.detach().clone()
    it = range(meta_iters)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="reptile", leave=False)
    for t in it:
        task = make_task(int(rng.integers(n_styles)))
        phi_k, _ = adapt(task, phi, inner_steps, inner_lr)
        eps = meta_lr * (1 - t / meta_iters)
        phi = phi + eps * (phi_k - phi)
    return phi


def joint_init(make_task, n_styles: int, init: torch.Tensor, steps: int, lr: float,
               rng: np.random.Generator) -> torch.Tensor:
    """Joint multi-style initialisation: Adam on ``E_τ L_τ(φ)`` with one random training style per step
    (no inner loop), given the same number of gradient evaluations as Reptile."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    b = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([b], lr=lr)
    for _ in range(steps):
        obj, _ = make_task(int(rng.integers(n_styles))).objective(b)
        opt.zero_grad()
        obj.backward()
        opt.step()
    return b.detach()


class FeedForwardStylizer(nn.Module):
    """The "fast approximation" baseline: a hypernetwork ``h(s) = b₀ + W₂ ReLU(W₁ s)`` from the target's
    random-Gram descriptor ``s`` to the bias vector, trained across the training styles; no adaptation."""

    def __init__(self, d_stats: int, base_bias: torch.Tensor, hidden: int = 64, random_state: int = 0):
        super().__init__()
        torch.manual_seed(int(random_state))
        self.net = nn.Sequential(nn.Linear(d_stats, hidden), nn.ReLU(), nn.Linear(hidden, base_bias.numel()))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)
        self.register_buffer("b0", base_bias.detach().clone())

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.b0 + self.net(stats)


def train_feedforward(make_task, descriptors: list, n_styles: int, base_bias: torch.Tensor, steps: int, lr: float,
                      rng: np.random.Generator, random_state: int = 0) -> FeedForwardStylizer:
    """Train the stylizer with ``steps`` Adam steps, one random training style per step."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    model = FeedForwardStylizer(descriptors[0].numel(), base_bias, random_state=random_state)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        i = int(rng.integers(n_styles))
        obj, _ = make_task(i).objective(model(descriptors[i]))
        opt.zero_grad()
        obj.backward()
        opt.step()
    return model


def steps_to_threshold(curve: np.ndarray, threshold: float) -> int:
    """The first k with ``curve[k] ≤ threshold`` (``len(curve)`` when never reached)."""
    hit = np.flatnonzero(np.asarray(curve) <= threshold)
    return int(hit[0]) if hit.size else len(curve)


def maml_meta_gradient(task: Task, init: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Second-order MAML meta-gradient ``∇_φ L(U^K(φ))`` of plain SGD inner steps, by a hand unroll
    (used to cross-check the inner loop against ``higher``)."""
    phi = init.detach().clone().requires_grad_(True)
    b = phi
    for _ in range(steps):
        obj, _ = task.objective(b)
        (g,) = torch.autograd.grad(obj, b, create_graph=True)
        b = b - lr * g
    obj, _ = task.objective(b)
    (meta,) = torch.autograd.grad(obj, phi)
    return meta
