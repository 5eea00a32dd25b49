r"""Blockwise Flow Matching (Park, Lee, Joo, Kim; NeurIPS 2025), scaled down to 8x8 digits and MLP blocks.

**Flow matching** on the linear path of :mod:`common.flow_matching` (data at t = 0, noise at t = 1):
:math:`x_t = (1-t)x + t\varepsilon`, target :math:`\varepsilon - x`, Euler sampling from t = 1 to t = 0.

**Blockwise velocity (Sec. 3.1).** The time axis is cut into S equal segments
:math:`[t_{s+1}, t_s]` with :math:`t_s = 1 - s/S` (segment 0 is the noisiest, as ``sigmas = linspace(1, 0, S+1)``
in the official scheduler), and segment s has its own velocity block :math:`v_\theta^{(s)}`:

.. math:: v_\theta(x_t, t, y) = v_\theta^{(s(t))}(x_t, t, y), \qquad
   \mathcal L_{BFM} = \sum_s \mathbb E_{t \sim U[t_{s+1}, t_s]}\|v_\theta^{(s)}(x_t, t, y) - (\varepsilon - x)\|^2 .

Training splits every batch evenly over the segments (:func:`segment_split`), so every block sees the same number
of samples and one step costs the same for every S. A sampler with N Euler steps per segment calls one block per
step (:func:`sample_bfm`), so **per-step cost does not grow with S; the parameter count does**.

**Semantic Feature Guidance (Sec. 3.2).** A shared feature network :math:`r_\phi(x_t, t, y)` (depth F) runs at every
step; a projection head :math:`h_\psi` aligns it with a frozen pretrained encoder :math:`E` (DINOv2 in the paper;
here the digits classifier's 32-D bottleneck) by the REPA cosine loss

.. math:: \mathcal L_{align} = -\mathbb E\, \cos\big(h_\psi(r_\phi(x_t)), E(x)\big), \qquad
   \mathcal L = \mathcal L_{BFM} + \lambda\,\mathcal L_{align}, \ \lambda = 0.05 \text{ (official config)},

and the velocity blocks are conditioned on :math:`[c, r_\phi]` (c = time + label embedding) through adaLN
modulation (the official ``c_repre = cat(c, representation)`` feeding every block's adaLN). **Without SFG** (the
ablation here) the same feature network and alignment loss are kept but its output is simply the input stream of the
velocity block, conditioned on c alone: a REPA-style stacked network of the same depth and nearly the same cost.

**Feature Residual Approximation (Sec. 3.3).** Inside segment s the feature network runs only at the first step
:math:`t_s`; later steps approximate :math:`r_\phi(x_t) \approx r_\phi(x_{t_s}) + \gamma(t)\,g_\omega(x_t, t, y)`
with :math:`\gamma(t) = (t_s - t)/(t_s - t_{s+1})` and a shallow FRN :math:`g_\omega` (depth K), trained with the
rest frozen on :math:`\|r_\phi(x_{t_s}) + \gamma g_\omega(x_t) - r_\phi(x_t)\|^2`, where :math:`x_{t_s}, x_t` lie on
the same conditional path (same x, ε), as the official ``compute_loss_ft``.

**Cost** (:func:`step_macs`): MACs of one velocity evaluation, counted analytically from the layer sizes and
checked against :class:`common.flow_matching.MACCounter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.diffusion.data import DIM, N_CLASSES
from common.diffusion.model import timestep_embedding
from common.flow_matching import interpolate, linear_macs, velocity_target

FEATURE_DIM = 32  # the digits classifier's bottleneck (the DINOv2 stand-in)
ALIGN_WEIGHT = 0.05  # proj_loss_weight of configs/train/BFM_XL.yaml
T_EMB_DIM = 64


@dataclass(frozen=True)
class BFMConfig:
    """S segments; feature net depth F (0 = no feature net), velocity depth L per segment, FRN depth K (0 = none);
    ``sfg``: condition the velocity blocks on the features (True) or feed them in as the input stream (False)."""

    segments: int = 3
    feature_depth: int = 4
    velocity_depth: int = 1
    width: int = 128
    cond_dim: int = 128
    mlp_ratio: int = 2
    sfg: bool = True
    frn_depth: int = 1

    def __post_init__(self):
        for name in ("segments", "velocity_depth", "width", "cond_dim", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.feature_depth < 0 or self.frn_depth < 0:
            raise ValueError("feature_depth and frn_depth must be >= 0")
        if self.feature_depth == 0 and self.sfg:
            raise ValueError("SFG needs a feature network (feature_depth >= 1)")

    def step_macs(self, frn_step: bool = False) -> int:
        """MACs of one velocity evaluation of one sample: condition MLP, feature net (or FRN), velocity block, final."""
        W, C, m = self.width, self.cond_dim, self.mlp_ratio
        macs = linear_macs(T_EMB_DIM, C) + linear_macs(C, C)
        if self.feature_depth:
            if frn_step:
                macs += linear_macs(DIM, W) + self.frn_depth * AdaLNBlock.macs(W, C, m) + linear_macs(W, W)
            else:
                macs += linear_macs(DIM, W) + self.feature_depth * AdaLNBlock.macs(W, C, m)
        vel_cond = C + W if self.sfg else C
        if self.sfg or not self.feature_depth:
            macs += linear_macs(DIM, W)
        macs += self.velocity_depth * AdaLNBlock.macs(W, vel_cond, m)
        macs += linear_macs(vel_cond, 2 * W) + linear_macs(W, DIM)
        return macs


def segment_bounds(segments: int) -> np.ndarray:
    """:math:`t_s = 1 - s/S`, s = 0..S (decreasing: segment s is :math:`[t_{s+1}, t_s]`)."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    return 1.0 - np.arange(segments + 1) / segments


def segment_of(t: torch.Tensor, segments: int) -> torch.Tensor:
    """The segment index of each time: s with :math:`t \\in (t_{s+1}, t_s]` (t = 1 is segment 0, t = 0 the last).

    A time within 1e-5 above a boundary :math:`t_s` counts as the start of segment s (a float32 grid point
    :math:`t_s` may be rounded up by ~1e-7: the sampler's step from :math:`t_s` belongs to segment s)."""
    s = torch.floor((1.0 - t.double()) * segments + 1e-5).long()
    return s.clamp(0, segments - 1)


def segment_split(batch: int, segments: int) -> list[int]:
    """Split a batch as evenly as possible over the segments (the first ``batch % S`` get one more), as official."""
    base, rem = divmod(batch, segments)
    return [base + (1 if s < rem else 0) for s in range(segments)]


def stratified_times(batch: int, segments: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Times uniform inside each segment, ``segment_split`` samples per segment; returns (t, segment index)."""
    bounds = segment_bounds(segments)
    ts, ss = [], []
    for s, n in enumerate(segment_split(batch, segments)):
        lo, hi = float(bounds[s + 1]), float(bounds[s])
        ts.append(lo + (hi - lo) * torch.rand(n, generator=generator))
        ss.append(torch.full((n,), s, dtype=torch.long))
    return torch.cat(ts), torch.cat(ss)


def route_segments(velocity_blocks: nn.ModuleList, head, h: torch.Tensor, cond: torch.Tensor, segment: torch.Tensor,
                   like: torch.Tensor) -> torch.Tensor:
    """Every sample through the velocity blocks of its own segment (``velocity_blocks[s]``, a list of blocks taking
    ``(h, cond)``), then ``head(h, cond)``; the output has the shape and dtype of ``like`` (one block per sample; the
    sampler's batch lies in one segment and goes through in one piece)."""
    present = torch.unique(segment).tolist()
    if len(present) == 1:
        for blk in velocity_blocks[present[0]]:
            h = blk(h, cond)
        return head(h, cond)
    out = torch.empty_like(like)
    for s in present:
        m = segment == s
        hs, cs = h[m], cond[m]
        for blk in velocity_blocks[s]:
            hs = blk(hs, cs)
        out[m] = head(hs, cs)
    return out


class AdaLNBlock(nn.Module):
    """Residual MLP block with adaLN-Zero: h + g * W2 SiLU(W1 (LN(h)(1 + a) + b)), (a, b, g) = M SiLU(c)."""

    def __init__(self, width: int, cond_dim: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(cond_dim, 3 * width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(F.silu(c)).chunk(3, dim=1)
        return h + gate * self.fc2(F.silu(self.fc1(self.norm(h) * (1 + scale) + shift)))

    @staticmethod
    def macs(width: int, cond_dim: int, mlp_ratio: int) -> int:
        return linear_macs(cond_dim, 3 * width) + 2 * linear_macs(width, mlp_ratio * width)


class FinalLayer(nn.Module):
    """LN(h)(1 + a) + b with (a, b) = M SiLU(c), then a linear map to the 64 pixels (zero-initialised)."""

    def __init__(self, width: int, cond_dim: int, out_dim: int = DIM):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(cond_dim, 2 * width)
        self.out = nn.Linear(width, out_dim)
        for layer in (self.mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h, c):
        shift, scale = self.mod(F.silu(c)).chunk(2, dim=1)
        return self.out(self.norm(h) * (1 + scale) + shift)


class BFM(nn.Module):
    """The blockwise velocity model: condition embedding, shared feature net (+ projection head), S velocity
    blocks of depth L, a shared final layer, and an optional FRN. ``forward(x, t, y)`` returns the velocity."""

    data_dim = DIM

    def __init__(self, cfg: BFMConfig):
        super().__init__()
        self.cfg = cfg
        W, C = cfg.width, cfg.cond_dim
        self.t_embed = nn.Sequential(nn.Linear(T_EMB_DIM, C), nn.SiLU(), nn.Linear(C, C))
        self.y_embed = nn.Embedding(N_CLASSES, C)
        if cfg.feature_depth:
            self.feat_in = nn.Linear(DIM, W)
            self.feat_blocks = nn.ModuleList([AdaLNBlock(W, C, cfg.mlp_ratio) for _ in range(cfg.feature_depth)])
            self.proj = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, FEATURE_DIM))  # training only
        vel_cond = C + W if cfg.sfg else C
        self.x_in = nn.Linear(DIM, W) if (cfg.sfg or not cfg.feature_depth) else None
        self.velocity_blocks = nn.ModuleList([
            nn.ModuleList([AdaLNBlock(W, vel_cond, cfg.mlp_ratio) for _ in range(cfg.velocity_depth)])
            for _ in range(cfg.segments)])
        self.final = FinalLayer(W, vel_cond)
        if cfg.frn_depth and cfg.feature_depth:
            self.frn_in = nn.Linear(DIM, W)
            self.frn_blocks = nn.ModuleList([AdaLNBlock(W, C, cfg.mlp_ratio) for _ in range(cfg.frn_depth)])
            self.frn_out = nn.Linear(W, W)
            nn.init.zeros_(self.frn_out.weight)
            nn.init.zeros_(self.frn_out.bias)

    def frn_parameters(self) -> list[nn.Parameter]:
        """The FRN's parameters (trained afterwards with everything else frozen)."""
        return [*self.frn_in.parameters(), *self.frn_blocks.parameters(), *self.frn_out.parameters()]

    @staticmethod
    def to_digits8(x: torch.Tensor) -> torch.Tensor:
        """The samples the metrics read (already 8×8 digits here)."""
        return x

    # --- parts ---
    def condition(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.t_embed(timestep_embedding(t, T_EMB_DIM).to(self.y_embed.weight.dtype)) + self.y_embed(y)

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """:math:`r_\\phi(x_t)`: the shared feature network."""
        h = self.feat_in(x)
        for blk in self.feat_blocks:
            h = blk(h, c)
        return h

    def frn(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """:math:`g_\\omega(x_t)`: the feature residual network."""
        h = self.frn_in(x)
        for blk in self.frn_blocks:
            h = blk(h, c)
        return self.frn_out(h)

    def velocity_from(self, x: torch.Tensor, c: torch.Tensor, r: torch.Tensor | None, segment: torch.Tensor) -> torch.Tensor:
        """Route every sample through the velocity block of its segment (one block per sample)."""
        if self.cfg.sfg:
            h, cond = self.x_in(x), torch.cat([c, r], dim=1)
        elif r is not None:
            h, cond = r, c
        else:
            h, cond = self.x_in(x), c
        return route_segments(self.velocity_blocks, self.final, h, cond, segment, x)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, segment: torch.Tensor | None = None,
                return_features: bool = False):
        t = t.to(x.dtype) if t.ndim else t.to(x.dtype).expand(x.shape[0])
        segment = segment_of(t, self.cfg.segments) if segment is None else segment
        c = self.condition(t, y)
        r = self.features(x, c) if self.cfg.feature_depth else None
        v = self.velocity_from(x, c, r, segment)
        return (v, r) if return_features else v


# --- losses ---------------------------------------------------------------------------------------------


def alignment_loss(model: BFM, r: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """REPA cosine loss :math:`-\\cos(h_\\psi(r), E(x))`, averaged over the batch (and over the tokens when ``r`` is
    [B, T, D] feature tokens: token k is aligned with the encoder's feature at its position (``target`` [B, T·C],
    flattened row-major from [B, T, C], as REPA aligns patch tokens)."""
    z = model.proj(r)
    target = target.to(r.dtype)
    if z.ndim == 3:
        target = target.reshape(z.shape)
    return -F.cosine_similarity(z, target, dim=-1).mean()


def bfm_loss(model: BFM, x: torch.Tensor, y: torch.Tensor, target_features: torch.Tensor | None,
             generator: torch.Generator, align_weight: float = ALIGN_WEIGHT):
    """:math:`\\mathcal L_{BFM} + \\lambda \\mathcal L_{align}` on one batch (times stratified over segments)."""
    t, seg = stratified_times(len(x), model.cfg.segments, generator)
    eps = torch.randn(x.shape, generator=generator)
    v, r = model(interpolate(x, eps, t), t, y, segment=seg, return_features=True)
    fm = (v - velocity_target(x, eps)).pow(2).mean(1).mean()
    if r is None or target_features is None or align_weight == 0:
        return fm, {"fm": fm.detach()}
    al = alignment_loss(model, r, target_features)
    return fm + align_weight * al, {"fm": fm.detach(), "align": al.detach()}


def frn_loss(model: BFM, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
    """:math:`\\|r(x_{t_s}) + \\gamma(t) g(x_t) - r(x_t)\\|^2` (mean over features), r frozen, same (x, ε)."""
    S = model.cfg.segments
    bounds = torch.as_tensor(segment_bounds(S), dtype=x.dtype)
    t, seg = stratified_times(len(x), S, generator)
    eps = torch.randn(x.shape, generator=generator)
    t_start, t_end = bounds[seg], bounds[seg + 1]
    gamma = (t_start - t) / (t_start - t_end)
    xt, xs = interpolate(x, eps, t), interpolate(x, eps, t_start)
    with torch.no_grad():
        r_t = model.features(xt, model.condition(t, y))
        r_s = model.features(xs, model.condition(t_start, y))
    gamma = gamma.reshape(-1, *([1] * (r_t.ndim - 1)))  # [B, 1] for feature vectors, [B, 1, 1] for tokens
    approx = r_s + gamma * model.frn(xt, model.condition(t, y))
    loss = (approx - r_t).pow(2).mean(1).mean()
    return loss, {"frn": loss.detach()}


# --- sampling -------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_bfm(model: BFM, noise: torch.Tensor, y: torch.Tensor, steps_per_segment: int, use_frn: bool = False):
    """Euler from t = 1 to 0 with ``steps_per_segment`` uniform steps inside every segment, block s in segment s.

    ``use_frn``: the feature network runs at the first step of each segment only; later steps use
    :math:`r(x_{t_s}) + \\gamma(t) g(x_t)` (official ``sample_ode_frn``). Returns (x_0, number of full and FRN steps)."""
    if steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be >= 1, got {steps_per_segment}")
    if use_frn and not hasattr(model, "frn_blocks"):
        raise ValueError("this model has no FRN (frn_depth = 0 or no feature network)")
    S = model.cfg.segments
    bounds = segment_bounds(S)
    x = noise.clone()
    n = len(x)
    counts = {"full": 0, "frn": 0}
    for s in range(S):
        grid = np.linspace(bounds[s], bounds[s + 1], steps_per_segment + 1)
        seg = torch.full((n,), s, dtype=torch.long)
        r_start = None
        for j, (a, b) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
            t = torch.full((n,), float(a), dtype=x.dtype)
            c = model.condition(t, y)
            if not model.cfg.feature_depth:
                r = None
            elif use_frn and j > 0:
                gamma = (bounds[s] - a) / (bounds[s] - bounds[s + 1])
                r = r_start + float(gamma) * model.frn(x, c)
                counts["frn"] += 1
            else:
                r = model.features(x, c)
                r_start = r
                counts["full"] += 1
            x = x + float(b - a) * model.velocity_from(x, c, r, seg)
    return x, counts


def step_macs(cfg, frn_step: bool = False) -> int:
    """MACs of one velocity evaluation of one sample (``cfg.step_macs``: :class:`BFMConfig` or the DiT's config)."""
    return cfg.step_macs(frn_step)


def sampling_macs(cfg: BFMConfig, steps_per_segment: int, use_frn: bool = False) -> int:
    """MACs per generated sample: S·N steps, of which S(N-1) use the FRN when ``use_frn``."""
    full = cfg.segments * (1 if use_frn else steps_per_segment)
    frn = cfg.segments * steps_per_segment - full
    return full * step_macs(cfg) + frn * step_macs(cfg, frn_step=True)


def inference_parameters(model: BFM, include_frn: bool = False) -> int:
    """Parameters used at sampling time (the projection head is training-only; the FRN optional)."""
    skip = {"proj"} | (set() if include_frn else {"frn_in", "frn_blocks", "frn_out"})
    return sum(p.numel() for name, p in model.named_parameters() if name.split(".")[0] not in skip)


# --- the experiment: training and evaluation helpers used by the notebook ---------------------------------


def build_model(cfg) -> nn.Module:
    """:class:`BFM` for a :class:`BFMConfig`, the 16×16 DiT (:class:`.dit16.BFMDiT`) for a ``BFMDiTConfig``."""
    from .dit16 import BFMDiT, BFMDiTConfig

    if isinstance(cfg, BFMDiTConfig):
        return BFMDiT(cfg)
    if isinstance(cfg, BFMConfig):
        return BFM(cfg)
    raise TypeError(f"expected a BFMConfig or BFMDiTConfig, got {type(cfg).__name__}")


def training_data(cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, encoder targets) of the digits train split at the model's resolution. MLP model: 8×8
    images, targets the classifier's 32-D bottleneck [N, 32]. DiT: the same images upsampled to 16×16, targets the
    classifier's spatial feature map at the token grid (:func:`.dit16.spatial_targets`, [N, 64·64] flattened)."""
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import train_features
    from common.digits16.data import load_digits16_split

    from .dit16 import BFMDiTConfig, spatial_targets

    if isinstance(cfg, BFMDiTConfig):
        data, split8 = load_digits16_split(), load_digits_split()
        return data.x_train, data.y_train, spatial_targets(split8.x_train).flatten(1)
    data = load_digits_split()
    return data.x_train, data.y_train, train_features().to(torch.float32)


# the code that shapes a trained model: a cached model is reused only while all of it is unchanged
_TRAINING_CODE = ("BFMConfig", "segment_bounds", "segment_of", "segment_split", "stratified_times", "route_segments",
                  "AdaLNBlock", "FinalLayer", "BFM", "alignment_loss", "bfm_loss", "frn_loss", "build_model",
                  "training_data", "train_bfm")


def model_cache_path(cache_dir, cfg, seed: int, n_iters: int, batch_size: int, lr: float, frn_iters: int) -> Path:
    """The cache file of one trained model, named by everything that shapes its weights: the config, seed,
    iterations, batch, learning rate, FRN iterations, the training data's bytes (targets included), torch's and
    numpy's versions, the torch thread count, this module's constants, the source of this module's training code (``_TRAINING_CODE``) and the whole source of ``common/dit.py``,
    ``common/flow_matching.py``, ``common/diffusion/model.py``, ``common/harness/seeding.py`` and
    :mod:`.dit16`. Evaluation code and docstrings elsewhere in this module do not enter. Relative
    ``cache_dir`` is relative to the repository."""
    import hashlib
    import inspect
    import sys

    import common.diffusion.model
    import common.dit
    import common.flow_matching
    import common.harness.seeding

    from . import dit16

    h = hashlib.sha256()
    for part in training_data(cfg):
        h.update(part.numpy().tobytes())
    h.update(repr((cfg, seed, n_iters, batch_size, lr, frn_iters, torch.__version__, np.__version__,
                   torch.get_num_threads(), FEATURE_DIM, ALIGN_WEIGHT, T_EMB_DIM, DIM)).encode())
    module = sys.modules[__name__]
    for name in _TRAINING_CODE:
        h.update(inspect.getsource(getattr(module, name)).encode())
    for mod in (common.dit, common.flow_matching, common.diffusion.model, common.harness.seeding, dit16):
        h.update(Path(mod.__file__).read_bytes())
    root = Path(cache_dir)
    if not root.is_absolute():
        root = Path(__file__).resolve().parents[2] / root
    kind = type(cfg).__name__.replace("Config", "").lower()
    return root / f"{kind}_S{cfg.segments}_{'sfg' if cfg.sfg else 'nosfg'}_seed{seed}_{h.hexdigest()[:16]}.safetensors"


def train_bfm(cfg, seed: int, n_iters: int, batch_size: int = 128, lr: float = 2e-3,
              frn_iters: int = 0, progress: bool = False, cache_dir=None):
    """Train a BFM model (:func:`build_model`) on the digits train split (seeded init and batches), then, if
    ``frn_iters``, its FRN with everything else frozen. Every model of a comparison gets the same seed, data,
    optimiser and iterations. Returns (model, {"fm": last-100 mean FM loss, "frn": last-100 mean FRN loss or nan,
    "frn_initial": first-10 mean FRN loss or nan, "cached": whether the weights came from ``cache_dir``}).

    ``cache_dir``: a trained model is saved there (safetensors, written to a temporary file and renamed) under
    :func:`model_cache_path`, and a later call with the same everything loads it instead of training."""
    from common.flow_matching import TrainConfig, train
    from common.harness.seeding import seeded_training

    path = model_cache_path(cache_dir, cfg, seed, n_iters, batch_size, lr, frn_iters) if cache_dir else None
    if path is not None and path.exists():
        return _load_cached(cfg, path)
    x, y, target = training_data(cfg)
    dim = x.shape[1]
    xy = torch.cat([x, target], dim=1)  # features ride along with their images in every batch
    gen = seeded_training(seed)
    model = build_model(cfg)

    def loss_fn(m, batch, yb, g):
        return bfm_loss(m, batch[:, :dim], yb, batch[:, dim:], g)

    res = train(model, loss_fn, xy, y, TrainConfig(n_iters=n_iters, batch_size=batch_size, lr=lr),
                generator=gen, progress=progress)
    summary = {"fm": float(np.mean(res.logs["fm"][-100:])), "frn": float("nan"), "frn_initial": float("nan"),
               "cached": False}
    if frn_iters and hasattr(model, "frn_blocks"):
        res_f = train(model, lambda m, xb, yb, g: frn_loss(m, xb, yb, g), x, y,
                      TrainConfig(n_iters=frn_iters, batch_size=batch_size, lr=lr), parameters=model.frn_parameters(),
                      generator=gen, progress=progress)
        summary["frn"] = float(np.mean(res_f.losses[-100:]))
        summary["frn_initial"] = float(np.mean(res_f.losses[:10]))  # the FRN starts at 0: E|r(x_ts) - r(x_t)|^2
    model.requires_grad_(False)
    if path is not None:
        _save_cached(model, summary, path)
    return model, summary


def _save_cached(model: nn.Module, summary: dict, path: Path) -> None:
    import json
    import os

    from safetensors.torch import save_file

    from common.harness.provenance import device

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    meta = {"summary": json.dumps({k: v for k, v in summary.items() if k != "cached"}),
            "device": json.dumps(device()), "threads": str(torch.get_num_threads())}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_cached(cfg, path: Path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    model = build_model(cfg)
    model.load_state_dict(load_file(str(path)))
    model.requires_grad_(False)
    model.eval()
    with safe_open(str(path), "pt") as f:
        summary = json.loads(f.metadata()["summary"])
    return model, {**summary, "cached": True}


def noise_bank(n_samples: int, seed: int, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian starting points [n, dim] (64 for 8×8, 256 for 16×16) and balanced labels (i mod 10) for one
    sampling seed."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n_samples, dim, generator=g), torch.arange(n_samples) % N_CLASSES


def sample_quality(x: torch.Tensor, y: torch.Tensor) -> dict:
    """FD and KID (classifier features, against the train split) and the class accuracy of conditional samples."""
    from common.diffusion.metrics import DigitsFeatures, fd_to_train, kid_to_train

    acc = float((DigitsFeatures.load().predict(x) == y).double().mean())
    return {"fd": fd_to_train(x), "kid": kid_to_train(x), "acc": acc}


def evaluate(model: BFM, total_steps: list[int], sampling_seeds: list[int], n_samples: int,
             use_frn: bool = False) -> dict:
    """Metrics for every total Euler step count (a multiple of S: steps/S per segment) and sampling seed:
    ``{steps: {"fd": [...], "kid": [...], "acc": [...], "macs": MACs per sample}}`` (lists over sampling seeds)."""
    S = model.cfg.segments
    out = {}
    for n in total_steps:
        if n % S:
            raise ValueError(f"total steps {n} is not a multiple of S = {S}")
        row = {"fd": [], "kid": [], "acc": []}
        for sd in sampling_seeds:
            noise, y = noise_bank(n_samples, sd, model.data_dim)
            x, _ = sample_bfm(model, noise, y, n // S, use_frn=use_frn)
            for k, v in sample_quality(model.to_digits8(x), y).items():
                row[k].append(v)
        row["macs"] = sampling_macs(model.cfg, n // S, use_frn=use_frn)
        out[n] = row
    return out


def flops_to_match(curve_flops, curve_fd, target_fd: float) -> float:
    """The smallest FLOPs of a (FLOPs, FD) sweep whose FD is at most ``target_fd`` (inf if none)."""
    ok = [f for f, d in zip(curve_flops, curve_fd, strict=True) if d <= target_fd]
    return float(min(ok)) if ok else float("inf")


def flops_to_match_bounds(curves, target_fd: float) -> tuple[float, float]:
    """Bounds on the least FLOPs at which any of several (FLOPs, FD) sweeps reaches ``target_fd``.

    A sweep is a grid, so the first matching point is only an upper bound on the crossover: per curve (points in
    increasing FLOPs), the crossover lies in (FLOPs of the point just before the first match, FLOPs of the first
    match] (0 if the cheapest point matches), or above the curve's largest FLOPs (upper bound inf) if none matches.
    Returns (min of the per-curve lower bounds, min of the upper bounds): the crossover of the best curve lies in
    this range, assuming FD falls as FLOPs rise along each curve."""
    lows, highs = [], []
    for flops, fd in curves:
        order = np.argsort(flops)
        f = [float(flops[i]) for i in order]
        d = [float(fd[i]) for i in order]
        first = next((i for i, v in enumerate(d) if v <= target_fd), None)
        if first is None:
            lows.append(f[-1])
            highs.append(float("inf"))
        else:
            lows.append(f[first - 1] if first > 0 else 0.0)
            highs.append(f[first])
    return float(min(lows)), float(min(highs))


# --- the whole experiment: every variant trained and evaluated (in worker processes if asked) ----------------

PAIR = ("s1_sfg", "s3_sfg")  # the pair of claim 2, trained on every training seed
FRN_VARIANT = "s3_sfg"  # the model whose FRN is trained (and evaluated on the ablation seeds)


def _variant_task(task: dict) -> dict:
    """Train one variant on one seed (or load it from the cache) and evaluate it; see :func:`run_variants`."""
    model, summary = train_bfm(task["cfg"], task["seed"], task["n_iters"], batch_size=task["batch_size"],
                               lr=task["lr"], frn_iters=task["frn_iters"], cache_dir=task["cache_dir"])
    out = {"summary": summary, "eval": evaluate(model, task["total_steps"], task["sampling_seeds"], task["n_samples"])}
    if task["eval_frn"]:
        out["eval_frn"] = evaluate(model, task["total_steps"], task["sampling_seeds"], task["n_samples"], use_frn=True)
    if task["grid"]:
        noise, y = noise_bank(task["grid"], task["sampling_seeds"][0], model.data_dim)
        out["grid"] = sample_bfm(model, noise, y, task["grid_steps"] // model.cfg.segments)[0]
    return out


def run_variants(configs: dict, train_seeds: list[int], n_ablation_seeds: int, n_iters: int, frn_iters: int,
                 batch_size: int, total_steps: list[int], sampling_seeds: list[int], n_samples: int, lr: float = 2e-3,
                 n_jobs: int = 1, cache_dir=None, grid: int = 0, grid_steps: int = 0, progress: bool = True):
    """Train and evaluate the variants of ``configs`` (names as in the notebooks): the pair :data:`PAIR` on every
    training seed, the other variants on the first ``n_ablation_seeds``; :data:`FRN_VARIANT` always with its FRN
    (``frn_iters``), evaluated with it (``"s3_sfg_frn"``) on the ablation seeds. Every model gets the same data,
    optimiser, iterations and batch; each training seed seeds its initialisation and batches.

    ``n_jobs`` > 1 runs the (train, evaluate) tasks in worker processes (spawned, each with this process's torch
    thread count, so the metrics equal a sequential run's; :func:`common.workers.process_map`); ``cache_dir`` keeps
    the trained models (:func:`train_bfm`); ``grid`` > 0 also returns that many samples at ``grid_steps`` total
    steps from each variant's first training seed.

    Returns ``(results, losses, extras)``: ``results[name]`` a list over its seeds of :func:`evaluate` dicts,
    ``losses[name]`` the final FM (FRN for ``s3_sfg_frn``) losses, ``extras`` with ``cached`` (models loaded from
    the cache), ``grids`` ({name: samples}) and ``frn_initial`` (the FRN losses at its start, per ablation seed)."""
    from common.workers import process_map

    tasks, keys = [], []
    for k, ts in enumerate(train_seeds):
        for name, cfg in configs.items():
            if k >= n_ablation_seeds and name not in PAIR:
                continue
            tasks.append({"cfg": cfg, "seed": ts, "n_iters": n_iters, "batch_size": batch_size, "lr": lr,
                          "frn_iters": frn_iters if name == FRN_VARIANT else 0, "cache_dir": cache_dir,
                          "total_steps": total_steps, "sampling_seeds": sampling_seeds, "n_samples": n_samples,
                          "eval_frn": name == FRN_VARIANT and k < n_ablation_seeds,
                          "grid": grid if k == 0 else 0, "grid_steps": grid_steps})
            keys.append(name)
    names = [*configs, f"{FRN_VARIANT}_frn"] if FRN_VARIANT in configs else [*configs]
    results = {k: [] for k in names}
    losses = {k: [] for k in names}
    extras = {"cached": 0, "grids": {}, "frn_initial": []}
    for name, out in zip(keys, process_map(_variant_task, tasks, n_jobs=n_jobs, progress=progress,
                                           desc="train + evaluate"), strict=True):
        results[name].append(out["eval"])
        losses[name].append(out["summary"]["fm"])
        extras["cached"] += int(out["summary"]["cached"])
        if "eval_frn" in out:
            results[f"{name}_frn"].append(out["eval_frn"])
            losses[f"{name}_frn"].append(out["summary"]["frn"])
            extras["frn_initial"].append(out["summary"]["frn_initial"])
        if "grid" in out:
            extras["grids"][name] = out["grid"]
    return results, losses, extras


def per_unit(results: dict, name: str, steps: int, metric: str, n_seeds: int) -> list[float]:
    """The unit of an interval: a training seed (its metric averaged over sampling seeds) when a comparison has at
    least 3 training seeds, else one sampling seed of the single trained model."""
    rows = [r[steps][metric] for r in results[name][:n_seeds]]
    return [float(np.mean(r)) for r in rows] if n_seeds >= 3 else [v for r in rows for v in r]


def claim_metrics(results: dict, losses: dict, floor_fd: float, total_steps: list[int], claim_steps: int,
                  frn_claim_steps: int, n_train_seeds: int, n_ablation_seeds: int) -> dict:
    """Every metric the claims read, as {name: value or :class:`common.stats.Interval`} (the notebooks record
    them, with a prefix for the 16×16 DiT): per-variant losses and FD/KID/accuracy/MACs at every step count;
    claim 2's S=1 − S=3 gains (with and without SFG) and whether both arms are trained (worse arm's FD over the
    held-out floor; ``claim{3,4,5}.fd_over_floor`` the same for the arms of claims 3, 4 and 5 (1)); claim 3's −SFG − +SFG gain; claim 4's
    FRN/full FD ratio; claim 5's accuracy gap; claim 1's FLOPs ratios (upper and lower bounds per ablation seed,
    :func:`flops_to_match_bounds`)."""
    from common import stats

    out = {"setup.train_seeds_claim2": n_train_seeds, "setup.train_seeds_ablation": n_ablation_seeds}
    for name in results:
        out[f"train.{name}.final_loss"] = losses[name]
        for n in total_steps:
            for metric in ("fd", "kid", "acc"):
                out[f"{name}.steps{n}.{metric}"] = per_unit(results, name, n, metric, len(results[name]))
            out[f"{name}.steps{n}.macs"] = results[name][0][n]["macs"]
    nt, na = n_train_seeds, n_ablation_seeds

    def gain(a, b, metric, seeds, steps=claim_steps):
        return stats.paired_difference(per_unit(results, a, steps, metric, seeds),
                                       per_unit(results, b, steps, metric, seeds))

    for steps in total_steps:  # S=1 minus S=3 at every step count (claim 2 reads claim_steps)
        out[f"claim2.steps{steps}.fd_gain"] = gain("s1_sfg", "s3_sfg", "fd", nt, steps)
        out[f"claim2.steps{steps}.kid_gain"] = gain("s1_sfg", "s3_sfg", "kid", nt, steps)
    out["claim2.fd_gain"] = gain("s1_sfg", "s3_sfg", "fd", nt)
    out["claim2.fd_over_floor"] = max(float(np.mean(per_unit(results, k, claim_steps, "fd", nt)))
                                      for k in PAIR) / floor_fd

    def over_floor(arms, seeds):  # are the compared models trained? the worse arm's mean FD over the floor
        return max(float(np.mean(per_unit(results, k, claim_steps, "fd", seeds))) for k in arms) / floor_fd

    out["claim3.fd_over_floor"] = over_floor(("s3_sfg", "s3_nosfg"), na)
    out["claim4.fd_over_floor"] = over_floor(("s3_sfg",), na)  # the FRN's FD is what claim 4 tests
    out["claim5.fd_over_floor"] = over_floor(("s3_sfg", "s1_nosfg"), na)  # also claim 1's arms
    out["claim2.fd_gain_nosfg"] = gain("s1_nosfg", "s3_nosfg", "fd", na)
    out["claim3.fd_gain"] = gain("s3_nosfg", "s3_sfg", "fd", na)
    out["claim4.fd_ratio"] = stats.ratio_of_means(per_unit(results, "s3_sfg_frn", frn_claim_steps, "fd", na),
                                                  per_unit(results, "s3_sfg", frn_claim_steps, "fd", na))
    out["claim5.acc_gap"] = gain("s3_sfg", "s1_nosfg", "acc", na)
    ratios, ratios_lo = [], []
    for k in range(na):
        base_fd = mean_fd_curve(results, "s1_nosfg", k, total_steps)
        best = int(np.argmin(base_fd))
        base_macs = results["s1_nosfg"][k][total_steps[best]]["macs"]
        curves = [([results[v][k][s]["macs"] for s in total_steps], mean_fd_curve(results, v, k, total_steps))
                  for v in ("s3_sfg", "s3_sfg_frn")]
        bfm_macs = [m for c in curves for m in c[0]]
        bfm_fd = [d for c in curves for d in c[1]]
        ratios.append(min(flops_to_match(bfm_macs, bfm_fd, base_fd[best]) / base_macs, 1e6))
        # the sweep is a grid: the crossover lies between the last failing and the first matching point of a curve
        ratios_lo.append(min(flops_to_match_bounds(curves, base_fd[best])[0] / base_macs, 1e6))
    out["claim1.flops_ratio"] = ratios  # upper bound on the ratio (the first sweep point that matches)
    out["claim1.flops_ratio_lo"] = ratios_lo  # lower bound (the sweep point before it)
    return out


def mean_fd_curve(results: dict, name: str, k: int, total_steps: list[int]) -> list[float]:
    """Training seed k's FD (mean over sampling seeds) at every total step count."""
    return [float(np.mean(results[name][k][s]["fd"])) for s in total_steps]


def pareto_figure(results: dict, floor_fd: float, total_steps: list[int]):
    """FD against MACs per sample (the Pareto view of claim 1) and class accuracy against total steps, every
    variant averaged over its training seeds; the held-out floor as a grey line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    styles = {"s1_nosfg": "k--o", "s1_sfg": "C0-o", "s3_nosfg": "C1--s", "s3_sfg": "C2-s", "s3_sfg_frn": "C3-^"}
    for name, st in styles.items():
        if not results.get(name):
            continue
        macs = [results[name][0][s]["macs"] / 1e6 for s in total_steps]
        fd = [np.mean([np.mean(r[s]["fd"]) for r in results[name]]) for s in total_steps]
        acc = [np.mean([np.mean(r[s]["acc"]) for r in results[name]]) for s in total_steps]
        axes[0].plot(macs, fd, st, label=name)
        axes[1].plot(total_steps, acc, st, label=name)
    axes[0].axhline(floor_fd, color="grey", lw=0.8, label="held-out floor")
    axes[0].set(xscale="log", yscale="log", xlabel="MMACs per sample", ylabel="FD (classifier features)")
    axes[1].set(xscale="log", xlabel="total Euler steps", ylabel="class accuracy")
    axes[0].legend(fontsize=7)
    return fig
