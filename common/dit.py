r"""A tiny Diffusion Transformer (DiT; Peebles & Xie, ICCV 2023) on 2×2 patches, as a flow-matching velocity network.

**Tokens (Sec. 3.2, "Patchify").** An image :math:`x \in \mathbb R^{C \times H \times W}` (here ``H = W = image_size``),
stored flattened as the repository's digits are (row-major ``C·H·W``; 8×8 digits are 64-vectors), is cut into
:math:`T = (H/p)^2` non-overlapping :math:`p \times p` patches (:func:`patchify`; tokens in row-major grid order, each
token's vector ordered (row in patch, column in patch, channel) as the official ``unpatchify``), each linearly embedded
to the width D (the paper's strided convolution is the same map), plus **fixed 2-D sin-cos positional embeddings**
(:func:`sincos_pos_embed_2d`, the MAE/ViT "frequency-based" version the paper uses). p = 2 gives 16 tokens on 8×8 digits
and 64 tokens on 16×16 images.

**Conditioning (Sec. 3.2, "adaLN-Zero block").** The time t (a float in [0, 1], data at t = 0, noise at t = 1 as in
``common/flow_matching.py``) is scaled by ``time_scale`` (1000: the integer DDPM timesteps DiT was trained on) and
embedded by the sinusoidal features of Vaswani et al. / DDPM, :math:`[\cos(s t f_k), \sin(s t f_k)]`,
:math:`f_k = 10^{-4k/(d/2)}` (d = ``t_freq_dim`` = 256, :func:`timestep_embedding`), then an MLP
Linear-SiLU-Linear to D; the class label y is looked up in a table of ``n_classes + 1`` rows, the last one the **null
label** of classifier-free guidance (Sec. 3.2 "Classifier-free guidance"; the index ``n_classes``, as NULL_LABEL = 10 =
N_CLASSES of ``common/diffusion/data.py``). ``y=None`` means the null label for every sample. The condition is
:math:`c = e_t + e_y`.

**Blocks (Sec. 3.2, Fig. 3).** Every block regresses six vectors from c, :math:`(\beta_1, \gamma_1, \alpha_1, \beta_2,
\gamma_2, \alpha_2) = W_{mod}\,\mathrm{SiLU}(c)`, and applies

.. math:: h \leftarrow h + \alpha_1 \odot \mathrm{Attn}\big(\mathrm{LN}(h)(1 + \gamma_1) + \beta_1\big), \qquad
   h \leftarrow h + \alpha_2 \odot \mathrm{MLP}\big(\mathrm{LN}(h)(1 + \gamma_2) + \beta_2\big)

with multi-head self-attention (fused qkv projection, :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h})V`, output
projection) and a GELU(tanh) MLP of hidden size ``mlp_ratio·D``. **adaLN-Zero**: :math:`W_{mod}` is zero-initialised,
so every gate :math:`\alpha` is 0 and each block starts as the identity. The **final layer** is the same adaptive LN
with (shift, scale) from c, then a linear map to :math:`p^2 C` per token, also zero-initialised (so the network's
output is exactly 0 at initialisation), then :func:`unpatchify` back to the flattened image. The remaining weights
follow the official ``initialize_weights``: Xavier-uniform linear layers with zero biases, N(0, 0.02²) for the
label table and the time MLP.

**Interface.** ``TinyDiT(cfg)(x, t, y)`` takes ``x`` [B, C·H·W], ``t`` a float tensor [B] (or a scalar) in [0, 1]
and ``y`` int64 labels [B] or None, and returns a tensor shaped like ``x``: the velocity-network signature of
``common/flow_matching.py`` (its ``flow_matching_loss``, ``train``, ``sample`` and ``FlowView`` take it as it is).

**Cost** (:func:`dit_macs`). Multiply-accumulates per forward pass of one sample, in the convention of
``common/flow_matching.py``'s ``linear_macs``/``MACCounter``: matrix products only (a dense layer on ``rows``
vectors costs rows·d_in·d_out; biases, norms, activations, softmax, the modulation's elementwise products, the
embedding lookup and the positional-embedding addition are not counted; FLOPs = 2 MACs). Unlike a stack of
``nn.Linear`` layers, a transformer also multiplies activations by activations: the attention scores
:math:`QK^\top` (T·T·D per sample, summed over heads) and the weighted sum :math:`AV` (T·T·D) are counted too, as
in the DiT paper's Gflop figures. So ``MACCounter`` (linear layers only) sees everything but those two terms.
``torch.utils.flop_counter.FlopCounterMode`` counts ``mm``/``addmm``/``bmm`` at 2 FLOPs per MAC and nothing
elementwise: with ``attention="matmul"`` its count is exactly 2 × :func:`dit_macs`; with ``"sdpa"`` on a CPU it
misses the two attention terms, as torch 2.13 has no FLOP formula for the CPU SDPA kernel
(``_scaled_dot_product_flash_attention_for_cpu``; the CUDA kernels are counted). The tests check all three.

Written from the paper and a reading of the official code (facebookresearch/DiT ``models.py``); nothing copied.
The sinusoidal time features are the repository's one :func:`common.diffusion.model.timestep_embedding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.diffusion.model import timestep_embedding

__all__ = ["DiTConfig", "patchify", "unpatchify", "sincos_pos_embed_1d", "sincos_pos_embed_2d",
           "per_token", "modulate", "Attention", "DiTBlock", "FinalLayer", "TinyDiT", "dit_macs",
           "drop_labels"]


# --- configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """A DiT's sizes. ``n_classes = 0``: unconditional (no label table); otherwise labels 0..n_classes-1 and the
    null label ``n_classes``. ``attention``: ``"sdpa"`` (``F.scaled_dot_product_attention``, the fast path) or
    ``"matmul"`` (the two products written out; the same function up to rounding)."""

    image_size: int = 8
    channels: int = 1
    patch: int = 2
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    n_classes: int = 10
    t_freq_dim: int = 256
    time_scale: float = 1000.0
    attention: str = "sdpa"

    def __post_init__(self):
        for name in ("image_size", "channels", "patch", "width", "depth", "heads", "t_freq_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 0:
            raise ValueError(f"n_classes must be a non-negative integer, got {self.n_classes!r}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.width % 4:
            raise ValueError(f"the 2-D sin-cos embedding needs width % 4 == 0, got {self.width}")
        if self.t_freq_dim % 2:
            raise ValueError(f"t_freq_dim must be even, got {self.t_freq_dim}")
        if not self.mlp_ratio > 0 or int(self.width * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must give a hidden size >= 1, got {self.mlp_ratio}")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        if self.attention not in ("sdpa", "matmul"):
            raise ValueError(f"attention must be 'sdpa' or 'matmul', got {self.attention!r}")

    @property
    def grid(self) -> int:
        """Patches per side, H/p."""
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        """T = (H/p)^2."""
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        """p·p·C, the length of one token's pixel vector."""
        return self.patch * self.patch * self.channels

    @property
    def dim(self) -> int:
        """C·H·W, the length of a flattened image."""
        return self.channels * self.image_size**2

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def null_label(self) -> int:
        return self.n_classes


# --- patches and positions ------------------------------------------------------------------------------


def _check_image_args(image_size: int, channels: int, patch: int) -> None:
    if image_size < 1 or channels < 1 or patch < 1 or image_size % patch:
        raise ValueError(f"need positive sizes with image_size % patch == 0, got {image_size}, {channels}, {patch}")


def patchify(x: torch.Tensor, image_size: int, channels: int = 1, patch: int = 2) -> torch.Tensor:
    """[B, C·H·W] (row-major C, H, W) -> [B, T, p·p·C]: token k = (i, j) row-major over the (H/p)×(W/p) grid, its
    vector ordered (row in patch, column in patch, channel)."""
    _check_image_args(image_size, channels, patch)
    if x.ndim != 2 or x.shape[1] != channels * image_size**2:
        raise ValueError(f"x must be [B, {channels * image_size ** 2}], got {tuple(x.shape)}")
    g = image_size // patch
    x = x.reshape(-1, channels, g, patch, g, patch)  # b c i p j q
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, g * g, patch * patch * channels)  # b (i j) (p q c)


def unpatchify(tokens: torch.Tensor, image_size: int, channels: int = 1, patch: int = 2) -> torch.Tensor:
    """The inverse of :func:`patchify`: [B, T, p·p·C] -> [B, C·H·W]."""
    _check_image_args(image_size, channels, patch)
    g = image_size // patch
    if tokens.ndim != 3 or tokens.shape[1:] != (g * g, patch * patch * channels):
        raise ValueError(f"tokens must be [B, {g * g}, {patch * patch * channels}], got {tuple(tokens.shape)}")
    t = tokens.reshape(-1, g, g, patch, patch, channels)  # b i j p q c
    return t.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels * image_size**2)  # b c (i p) (j q)


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    r"""[N] positions -> [N, dim]: :math:`[\sin(m\,\omega_k), \cos(m\,\omega_k)]_{k < dim/2}`,
    :math:`\omega_k = 10000^{-k/(dim/2)}` (Vaswani et al. 2017), in float64."""
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be even and >= 2, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """[grid², dim] float32 fixed positional embedding of a square grid of tokens (row-major, token k = (i, j)):
    the first dim/2 features embed the column j, the last dim/2 the row i (the MAE/DiT layout)."""
    if dim < 4 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4, got {dim}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    idx = torch.arange(grid * grid)
    rows, cols = idx // grid, idx % grid
    return torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1).float()


def drop_labels(y: torch.Tensor, p: float, generator: torch.Generator, null_label: int) -> torch.Tensor:
    """Classifier-free guidance training: replace each label by ``null_label`` with probability p (DiT's
    ``LabelEmbedder.token_drop``; the draws come from ``generator``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    drop = torch.rand(len(y), generator=generator) < p
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)


# --- the network ----------------------------------------------------------------------------------------


def per_token(v: torch.Tensor) -> torch.Tensor:
    """A per-sample [B, D] vector broadcast over the tokens ([B, 1, D]); a per-token [B, T, D] one as it is."""
    if v.ndim == 2:
        return v[:, None, :]
    if v.ndim == 3:
        return v
    raise ValueError(f"expected a [B, D] or [B, T, D] tensor, got {tuple(v.shape)}")


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: h (1 + scale) + shift, with per-sample [B, D] shift and scale broadcast over the tokens, or per-token
    [B, T, D] ones (a token-wise condition, as Blockwise Flow Matching's ``c_repre``)."""
    return h * (1 + per_token(scale)) + per_token(shift)


class Attention(nn.Module):
    r"""Multi-head self-attention: fused qkv projection, :math:`\mathrm{softmax}(Q_hK_h^\top/\sqrt{d_h})V_h` per
    head, output projection (qkv with bias, as the official ``timm`` Attention with ``qkv_bias=True``)."""

    def __init__(self, width: int, heads: int, mode: str = "sdpa"):
        super().__init__()
        self.heads, self.mode = heads, mode
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(h).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, dh]
        if self.mode == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax((q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), dim=-1)
            o = a @ v
        return self.proj(o.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    """One adaLN-Zero DiT block (Sec. 3.2, Fig. 3 right): the six modulation vectors come from a zero-initialised
    Linear of SiLU(c), so the block is the identity at initialisation. ``c`` is [B, cond_dim] (one condition per
    sample, DiT's) or [B, T, cond_dim] (one per token); ``cond_dim`` defaults to the width."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, attention: str = "sdpa", cond_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, attention)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, width)
        self.adaLN_modulation = nn.Linear(cond_dim or width, 6 * width)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(F.silu(c)).chunk(6, dim=-1)
        h = h + per_token(gate1) * self.attn(modulate(self.norm1(h), shift1, scale1))
        mlp = self.fc2(F.gelu(self.fc1(modulate(self.norm2(h), shift2, scale2)), approximate="tanh"))
        return h + per_token(gate2) * mlp


class FinalLayer(nn.Module):
    """adaptive LN with (shift, scale) from c, then Linear(D, p·p·C) per token; both linear maps zero-initialised
    (by the owning model's ``initialize_weights``). ``c`` per sample or per token, as in :class:`DiTBlock`."""

    def __init__(self, width: int, patch_dim: int, cond_dim: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Linear(cond_dim or width, 2 * width)
        self.linear = nn.Linear(width, patch_dim)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class TinyDiT(nn.Module):
    """A DiT velocity network: ``forward(x, t, y=None)`` with x [B, C·H·W], t [B] (or scalar) in [0, 1], y int64 [B]
    or None (the null label); returns [B, C·H·W] (see the module docstring)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.x_embedder = nn.Linear(cfg.patch_dim, D)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, cfg.grid)[None], persistent=False)
        self.t_embedder = nn.Sequential(nn.Linear(cfg.t_freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.y_embedder = nn.Embedding(cfg.n_classes + 1, D) if cfg.n_classes else None
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.heads, cfg.mlp_hidden, cfg.attention) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(D, cfg.patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation: Xavier-uniform linear layers with zero biases; N(0, 0.02²) label table and
        time MLP; **zero** adaLN modulations (every block) and final layer (adaLN-Zero, Sec. 3.2)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        for layer in [b.adaLN_modulation for b in self.blocks] + [self.final_layer.adaLN_modulation,
                                                                  self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """c = MLP(timestep_embedding(time_scale · t)) + E[y] (E[null] when y is None)."""
        dtype = self.x_embedder.weight.dtype
        c = self.t_embedder(timestep_embedding(t.reshape(-1), self.cfg.t_freq_dim, self.cfg.time_scale).to(dtype))
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((len(t),), self.cfg.null_label, dtype=torch.long, device=t.device)
            c = c + self.y_embedder(y)
        return c

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim != 2 or x.shape[1] != cfg.dim:
            raise ValueError(f"x must be [B, {cfg.dim}], got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
        if y is not None and y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
        c = self.condition(t, y)
        h = self.x_embedder(patchify(x, cfg.image_size, cfg.channels, cfg.patch)) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        return unpatchify(self.final_layer(h, c), cfg.image_size, cfg.channels, cfg.patch)


# --- analytic cost --------------------------------------------------------------------------------------


def dit_macs(cfg: DiTConfig, breakdown: bool = False):
    """Multiply-accumulates of one forward pass per sample (matrix products only; see the module docstring).

    Per sample, with T tokens, width D, MLP hidden M, depth L and token vector P = p·p·C:
    time MLP ``t_freq_dim·D + D·D``; patch embedding ``T·P·D``; per block modulation ``D·6D``, qkv ``T·D·3D``,
    scores ``T·T·D``, weighted sum ``T·T·D``, output projection ``T·D·D``, MLP ``2·T·D·M``; final modulation
    ``D·2D`` and linear ``T·D·P``. ``breakdown=True`` returns a dict of these terms (blocks summed over depth)
    with the total under ``"total"``."""
    T, D, M, L, P = cfg.tokens, cfg.width, cfg.mlp_hidden, cfg.depth, cfg.patch_dim
    terms = {
        "time_mlp": cfg.t_freq_dim * D + D * D,
        "patch_embed": T * P * D,
        "block_modulation": L * D * 6 * D,
        "qkv": L * T * D * 3 * D,
        "attn_scores": L * T * T * D,
        "attn_values": L * T * T * D,
        "attn_out": L * T * D * D,
        "mlp": L * 2 * T * D * M,
        "final_modulation": D * 2 * D,
        "final_linear": T * D * P,
    }
    total = sum(terms.values())
    if breakdown:
        return {**terms, "total": total}
    return total
