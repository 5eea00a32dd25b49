r"""Blockwise Flow Matching on a tiny DiT at 16×16 (the issue's full setting): the same method as
:mod:`.blockwise_flow_matching`, with transformer blocks on 2×2 patches instead of MLP blocks.

**Data.** 16×16 digits (``common.digits16``: the sklearn digits upsampled, the same images and split as the 8×8
experiment; ``to_digits8`` maps a sample back exactly, so FD/KID and class accuracy are measured with the same
classifier as at 8×8).

**Network** (official ``src/model/bfm.py`` read for the structure; nothing copied). Every part is a DiT part from
:mod:`common.dit` (patch embedding + fixed 2-D sin-cos positions, adaLN-Zero blocks, adaptive final layer):

* condition :math:`c = \mathrm{MLP}(\mathrm{emb}(1000\,t)) + E[y]`, one vector per sample;
* **feature network** :math:`r_\phi`: its own patch embedding and F DiT blocks conditioned on c, giving one feature
  token per patch, :math:`r \in \mathbb R^{T \times D}`;
* **projection head** :math:`h_\psi` (training only): a per-token MLP D → D → 64. REPA aligns every token with the
  encoder's patch token at its position; our encoder is the digits classifier, whose second convolution gives a
  64-channel map on the 8×8 grid, one feature per token of the 16×16 image's 2×2 patches
  (:func:`spatial_targets`), :math:`\mathcal L_{align} = -\frac1T\sum_k \cos(h_\psi(r_k), E_k(x))`;
* **SFG**: the velocity blocks and the final layer are modulated **per token** by
  :math:`c_{repre} = [c, r_k]` (the official ``c_repre``: c repeated over the tokens, concatenated with the feature
  tokens), the velocity stream starting from its own patch embedding of :math:`x_t`. Without SFG the feature tokens
  are the velocity stream's input and the modulation is c alone (as the 8×8 ablation);
* **FRN** :math:`g_\omega`: K DiT blocks conditioned on c on the feature network's patch embedding of :math:`x_t`
  (the official FRN reuses ``representation_x_embedder``), then a zero-initialised linear map, so that the
  approximation :math:`r(x_{t_s}) + \gamma(t) g_\omega(x_t)` starts at :math:`r(x_{t_s})`.

The official model modulates its velocity blocks through a low-rank ("LoRA") adaLN on top of a shared global
modulation; here each block has a full-rank modulation of the 2D-dimensional token-wise condition, which is
counted in the MACs (at this width it costs about as much as the block itself, so SFG's per-step cost is well above
the non-SFG baseline's; see :meth:`BFMDiTConfig.step_macs`).

**Cost** (:meth:`BFMDiTConfig.step_macs`): MACs per velocity evaluation of one sample, in the convention of
:func:`common.dit.dit_macs` (matrix products, attention scores and weighted sums included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.diffusion.data import N_CLASSES
from common.diffusion.model import timestep_embedding
from common.dit import DiTBlock, DiTConfig, FinalLayer, patchify, sincos_pos_embed_2d, unpatchify

from .blockwise_flow_matching import route_segments, segment_of

__all__ = ["BFMDiTConfig", "BFMDiT", "spatial_targets", "TARGET_DIM"]

TARGET_DIM = 64  # channels of the classifier's second convolution (the per-token alignment target)


@torch.no_grad()
def spatial_targets(x8: torch.Tensor) -> torch.Tensor:
    """The encoder's patch tokens: the committed digits classifier's second-convolution activations
    SiLU(conv2(SiLU(conv1(x)))) on 8×8 digits [N, 64], before its pooling, as [N, 64 positions, 64 channels]
    (positions row-major, the order of :func:`common.dit.patchify`'s tokens on the 16×16 upsampled image: 2×2
    patch (i, j) of the 16×16 image covers pixel (i, j) of the 8×8 one)."""
    import torch.nn.functional as F

    from common.diffusion.metrics import DigitsFeatures

    net = DigitsFeatures.load().net
    h = torch.as_tensor(x8).reshape(-1, 1, 8, 8).to(net.conv1.weight.dtype)
    h = F.silu(net.conv2(F.silu(net.conv1(h))))  # [N, 64, 8, 8]
    return h.permute(0, 2, 3, 1).reshape(len(h), 64, TARGET_DIM).float()


@dataclass(frozen=True)
class BFMDiTConfig:
    """S segments; feature depth F (DiT blocks; 0 = none), velocity depth L per segment, FRN depth K (0 = none);
    ``sfg``: token-wise adaLN conditioning on the features (True) or the features as the input stream (False)."""

    segments: int = 3
    feature_depth: int = 4
    velocity_depth: int = 1
    frn_depth: int = 1
    sfg: bool = True
    width: int = 64
    heads: int = 4
    mlp_ratio: float = 2.0
    image_size: int = 16
    patch: int = 2
    t_freq_dim: int = 256

    def __post_init__(self):
        for name in ("segments", "velocity_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.feature_depth < 0 or self.frn_depth < 0:
            raise ValueError("feature_depth and frn_depth must be >= 0")
        if self.feature_depth == 0 and self.sfg:
            raise ValueError("SFG needs a feature network (feature_depth >= 1)")
        _ = self.dit  # validates the transformer sizes

    @property
    def dit(self) -> DiTConfig:
        """The shared transformer sizes (depth is per part here, so 1 as a placeholder)."""
        return DiTConfig(image_size=self.image_size, channels=1, patch=self.patch, width=self.width, depth=1,
                         heads=self.heads, mlp_ratio=self.mlp_ratio, n_classes=N_CLASSES, t_freq_dim=self.t_freq_dim)

    @property
    def velocity_cond_dim(self) -> int:
        return 2 * self.width if self.sfg else self.width

    def step_macs(self, frn_step: bool = False) -> int:
        """MACs of one velocity evaluation of one sample: condition MLP; feature network (or, on an FRN step, the
        feature patch embedding, the FRN blocks and its output map); the velocity stream's patch embedding (SFG or
        no feature network); L velocity blocks with their modulation (per token, from 2D inputs, under SFG; per
        sample otherwise); the final layer."""
        d = self.dit
        T, D, M, P, Dc = d.tokens, d.width, d.mlp_hidden, d.patch_dim, self.velocity_cond_dim
        block = T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * M  # qkv, scores, weighted sum, out, MLP
        rows = T if self.sfg else 1  # the modulation is applied per token under SFG
        macs = self.t_freq_dim * D + D * D
        if self.feature_depth:
            macs += T * P * D
            if frn_step:
                macs += self.frn_depth * (D * 6 * D + block) + T * D * D
            else:
                macs += self.feature_depth * (D * 6 * D + block)
        if self.sfg or not self.feature_depth:
            macs += T * P * D
        macs += self.velocity_depth * (rows * Dc * 6 * D + block)
        macs += rows * Dc * 2 * D + T * D * P
        return macs


class BFMDiT(nn.Module):
    """The blockwise DiT velocity model with the interface of :class:`.blockwise_flow_matching.BFM`
    (``condition``, ``features``, ``frn``, ``velocity_from``, ``forward(x, t, y, segment, return_features)``,
    ``proj``), so that :mod:`.blockwise_flow_matching`'s losses, sampler and trainer take it as they take the MLP
    model. ``x`` is [B, 256] (flattened 16×16)."""

    data_dim = 256

    def __init__(self, cfg: BFMDiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dit
        D, M, P = d.width, d.mlp_hidden, d.patch_dim
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, d.grid)[None], persistent=False)
        self.t_embedder = nn.Sequential(nn.Linear(cfg.t_freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.y_embedder = nn.Embedding(N_CLASSES, D)
        if cfg.feature_depth:
            self.feat_embed = nn.Linear(P, D)
            self.feat_blocks = nn.ModuleList([DiTBlock(D, cfg.heads, M) for _ in range(cfg.feature_depth)])
            self.proj = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, TARGET_DIM))  # training only
        self.x_embed = nn.Linear(P, D) if (cfg.sfg or not cfg.feature_depth) else None
        Dc = cfg.velocity_cond_dim
        self.velocity_blocks = nn.ModuleList([
            nn.ModuleList([DiTBlock(D, cfg.heads, M, cond_dim=Dc) for _ in range(cfg.velocity_depth)])
            for _ in range(cfg.segments)])
        self.final = FinalLayer(D, P, cond_dim=Dc)
        if cfg.frn_depth and cfg.feature_depth:
            self.frn_blocks = nn.ModuleList([DiTBlock(D, cfg.heads, M) for _ in range(cfg.frn_depth)])
            self.frn_out = nn.Linear(D, D)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's: Xavier-uniform linear layers with zero biases, N(0, 0.02²) label table and time MLP, zero adaLN
        modulations in every block (adaLN-Zero) and zero final layer; the FRN's output map zero too."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        zero = [self.final.adaLN_modulation, self.final.linear]
        for m in self.modules():
            if isinstance(m, DiTBlock):
                zero.append(m.adaLN_modulation)
        if hasattr(self, "frn_out"):
            zero.append(self.frn_out)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def frn_parameters(self) -> list[nn.Parameter]:
        """The FRN's parameters (trained afterwards with everything else frozen)."""
        return [*self.frn_blocks.parameters(), *self.frn_out.parameters()]

    @staticmethod
    def to_digits8(x: torch.Tensor) -> torch.Tensor:
        """Samples [N, 256] -> [N, 64]: the 8×8 preimage the metrics read (``common.digits16.to_digits8``)."""
        from common.digits16.data import to_digits8

        return to_digits8(x)

    # --- parts ---
    def _tokens(self, x: torch.Tensor, embed: nn.Linear) -> torch.Tensor:
        d = self.cfg.dit
        return embed(patchify(x, d.image_size, 1, d.patch)) + self.pos_embed.to(x.dtype)

    def condition(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t.reshape(-1), self.cfg.t_freq_dim, 1000.0).to(self.y_embedder.weight.dtype)
        return self.t_embedder(emb) + self.y_embedder(y)

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """:math:`r_\\phi(x_t)`: feature tokens [B, T, D]."""
        h = self._tokens(x, self.feat_embed)
        for blk in self.feat_blocks:
            h = blk(h, c)
        return h

    def frn(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """:math:`g_\\omega(x_t)`: the feature residual tokens [B, T, D]."""
        h = self._tokens(x, self.feat_embed)
        for blk in self.frn_blocks:
            h = blk(h, c)
        return self.frn_out(h)

    def velocity_from(self, x: torch.Tensor, c: torch.Tensor, r: torch.Tensor | None, segment: torch.Tensor) -> torch.Tensor:
        """Every sample through the velocity blocks of its segment, then the final layer and unpatchify."""
        if self.cfg.sfg:
            h = self._tokens(x, self.x_embed)
            cond = torch.cat([c[:, None, :].expand(-1, h.shape[1], -1), r], dim=-1)
        elif r is not None:
            h, cond = r, c
        else:
            h, cond = self._tokens(x, self.x_embed), c
        d = self.cfg.dit

        def head(hs, cs):
            return unpatchify(self.final(hs, cs), d.image_size, 1, d.patch)

        return route_segments(self.velocity_blocks, head, h, cond, segment, x)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, segment: torch.Tensor | None = None,
                return_features: bool = False):
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must be [B, {self.data_dim}], got {tuple(x.shape)}")
        t = t.to(x.dtype) if t.ndim else t.to(x.dtype).expand(x.shape[0])
        segment = segment_of(t, self.cfg.segments) if segment is None else segment
        c = self.condition(t, y)
        r = self.features(x, c) if self.cfg.feature_depth else None
        v = self.velocity_from(x, c, r, segment)
        return (v, r) if return_features else v
