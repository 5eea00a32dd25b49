"""TinyGPT: a small GPT-style causal language model with the hooks several papers need.

Architecture (GPT-2 style, pre-LayerNorm)::

    h_0 = E[x]                                                    (token embedding)
    a_l = h_{l-1} + W_o Attn(RoPE(W_q n), RoPE(W_k n), W_v n),    n = LN_1(h_{l-1})
    h_l = a_l + W_2 GeLU(W_1 LN_2(a_l) + b_1) + b_2
    logits = LN_f(h_L) U^T,    U = E (tied, the default) or a separate bias-free head

``model.output_weight`` is ``U``: code that computes logits from ``LN_f``'s output uses it, so it works for
both. Initialisation is GPT-2's (N(0, 0.02), residual projections scaled by 1/sqrt(2L)); ``emb_std`` and
``head_init`` change the embedding's and the untied head's. On a 2-layer synthetic multi-query associative
recall probe, an untied head with PyTorch's default init (``head_init="uniform"``, ``emb_std=1.0``) turned this
model from 0/3 seeds solved into 3/3; on TinyGrammar's recall it has not yet given a recall-capable model
(``results/zoo/recall_diagnostics``, sections 5-6 and ``pilot_s20.md``).

* **Attention** (per head, causal): ``Attn(q, k, v)_t = sum_{s<=t} softmax_s(q_t . k_s / sqrt(d_h)) v_s``.
* **RoPE** (Su et al., 2021, eq. 34): the pairs ``(x_i, x_{i + d/2})`` of q and k at position ``p`` are
  rotated by the angle ``p * theta_i``, ``theta_i = base^{-2i/d_h}``, so that ``q_t . k_s`` depends only on
  ``t - s``. The KV cache stores *rotated* keys.
* **GeLU** is the exact ``x Phi(x)`` (erf), not the tanh approximation, so that approximations such as
  PUMA's have something to approximate.

Hooks (all ``None`` = the exact default):

* ``attn_fn(q, k, v) -> y`` per layer (``block.attn.attn_fn``, ``model.set_attn_fn``): q of shape
  ``[B, H, Tq, Dh]``, k and v ``[B, H, Tk, Dh]`` (q and k rotated), causal with the queries aligned to the
  *end* of the keys (``Tq < Tk`` while decoding with a cache); returns ``[B, H, Tq, Dh]``. May be an
  ``nn.Module`` with parameters (it is then registered as a submodule).
* ``softmax_fn(scores, dim) -> probs``: used by the default attention;
* ``act_fn(x) -> y``: the MLP activation;
* ``norm_fn(x, weight, bias, eps) -> y``: every LayerNorm (``ln_1``, ``ln_2``, ``ln_f``).

``forward(idx, kv_cache=None, return_qkv=False)``; :class:`KVCache` holds explicit per-layer keys and
values that can be read and overwritten (ReSA's rectification rewrites them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyGPTConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 256
    mlp_ratio: int = 4
    rope_base: float = 10000.0
    ln_eps: float = 1e-5
    # added later; written to a manifest only when not at their default (earlier manifests stay valid)
    tie_embeddings: bool = True       # False: a separate bias-free output head U
    emb_std: float | None = None      # std of the token embedding's N(0, std^2) init; None: GPT-2's 0.02
    head_init: str = "normal"         # untied head: "normal" N(0, 0.02^2), "uniform" nn.Linear's U(+-1/sqrt(d))

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("the head dimension must be even for RoPE")
        if min(self.vocab_size, self.n_layers, self.context, self.mlp_ratio) <= 0:
            raise ValueError("vocab_size, n_layers, context and mlp_ratio must be positive")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        if self.emb_std is not None and (isinstance(self.emb_std, bool) or not 0 < self.emb_std < math.inf):
            raise ValueError(f"emb_std must be a positive finite number (or None for 0.02), got {self.emb_std!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.tie_embeddings and self.head_init != "normal":
            raise ValueError("head_init applies to an untied head only (tie_embeddings=False)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """The fields, without the later ones left at their default (so earlier manifests compare equal)."""
        d = asdict(self)
        for name, default in LATER_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d


HEAD_INITS = ("normal", "uniform")
LATER_DEFAULTS = {"tie_embeddings": True, "emb_std": None, "head_init": "normal"}


# --------------------------------------------------------------------------------------------------
# Default functions behind the hooks
# --------------------------------------------------------------------------------------------------
def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """Exact GeLU, ``x * Phi(x) = x/2 (1 + erf(x / sqrt 2))``."""
    return F.gelu(x, approximate="none")


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last dimension."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(scores, dim=dim)


def causal_mask(t_q: int, t_k: int, device=None) -> torch.Tensor:
    """Boolean ``[Tq, Tk]`` mask, True where query ``i`` (absolute position ``Tk - Tq + i``) may see key ``j``."""
    offset = t_k - t_q
    if offset < 0:
        raise ValueError(f"more queries ({t_q}) than keys ({t_k})")
    rows = torch.arange(t_q, device=device)[:, None] + offset
    return torch.arange(t_k, device=device)[None, :] <= rows


def softmax_attention(q, k, v, softmax_fn=None) -> torch.Tensor:
    """Explicit causal softmax attention ``softmax(q k^T / sqrt(d_h) + mask) v`` (end-aligned when Tq < Tk)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (softmax_fn or softmax)(scores, -1) @ v


# --------------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------------
def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``[T, head_dim/2]`` for angles ``p * base^{-2i/head_dim}``."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(x_i, x_{i+d/2})`` of ``x [B, H, T, Dh]`` by the angles (half-split convention)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# --------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------
class KVCache:
    """Explicit per-layer key/value cache: ``keys[l]``, ``values[l]`` of shape ``[B, H, T, Dh]`` (keys rotated).

    ``length`` is the number of cached positions; :meth:`append` is what the model calls while decoding,
    :meth:`get`/:meth:`set` give read and write access (e.g. to overwrite entries with a dense
    recomputation), :meth:`truncate` drops the last positions.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[-2]

    def layer_length(self, layer: int) -> int:
        return 0 if self.keys[layer] is None else self.keys[layer].shape[-2]

    def get(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys[layer], self.values[layer]

    def set(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if k.shape != v.shape:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
        self.keys[layer], self.values[layer] = k, v

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new positions to layer ``layer`` and return the full ``(k, v)``."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.set(layer, k, v)
        return k, v

    def truncate(self, length: int) -> None:
        for layer in range(self.n_layers):
            if self.keys[layer] is not None:
                self.keys[layer] = self.keys[layer][..., :length, :]
                self.values[layer] = self.values[layer][..., :length, :]

    def clone(self) -> KVCache:
        other = KVCache(self.n_layers)
        other.keys = [None if k is None else k.clone() for k in self.keys]
        other.values = [None if v is None else v.clone() for v in self.values]
        return other


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """LayerNorm with weight and bias whose computation is the hook ``norm_fn(x, weight, bias, eps)``."""

    def __init__(self, dim: int, eps: float = 1e-5, norm_fn=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.norm_fn = norm_fn

    def forward(self, x):
        return (self.norm_fn or layer_norm)(x, self.weight, self.bias, self.eps)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections, RoPE, and the ``attn_fn`` hook."""

    def __init__(self, config: TinyGPTConfig, softmax_fn=None):
        super().__init__()
        d = config.d_model
        self.n_heads, self.head_dim, self.rope_base = config.n_heads, config.head_dim, config.rope_base
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.attn_fn = None
        self.softmax_fn = softmax_fn

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def attend(self, q, k, v) -> torch.Tensor:
        """Run the hook if set, else exact causal softmax attention (fused when no softmax hook is set)."""
        if self.attn_fn is not None:
            return self.attn_fn(q, k, v)
        if self.softmax_fn is None and q.shape[-2] == k.shape[-2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return softmax_attention(q, k, v, self.softmax_fn)

    def forward(self, x, positions, layer_cache: tuple[KVCache, int] | None = None):
        """``x [B, T, d]`` at absolute ``positions [T]``; returns ``(y, (q, k_all, v_all))``."""
        b, t, d = x.shape
        cos, sin = rope_angles(positions, self.head_dim, self.rope_base)
        q = apply_rope(self._heads(self.q_proj(x)), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x)), cos, sin)
        v = self._heads(self.v_proj(x))
        if layer_cache is not None:
            cache, layer = layer_cache
            k, v = cache.append(layer, k, v)
        y = self.attend(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d)), (q, k, v)


class MLP(nn.Module):
    def __init__(self, config: TinyGPTConfig, act_fn=None):
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.fc_out = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)
        self.act_fn = act_fn

    def forward(self, x):
        return self.fc_out((self.act_fn or gelu_erf)(self.fc_in(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``."""

    def __init__(self, config: TinyGPTConfig, act_fn=None, norm_fn=None, softmax_fn=None):
        super().__init__()
        self.ln_1 = LayerNorm(config.d_model, config.ln_eps, norm_fn)
        self.attn = CausalSelfAttention(config, softmax_fn)
        self.ln_2 = LayerNorm(config.d_model, config.ln_eps, norm_fn)
        self.mlp = MLP(config, act_fn)

    def forward(self, x, positions, layer_cache=None):
        a, qkv = self.attn(self.ln_1(x), positions, layer_cache)
        x = x + a
        return x + self.mlp(self.ln_2(x)), qkv


class TinyGPT(nn.Module):
    """The tiny causal LM. ``forward(idx [B, T]) -> logits [B, T, V]``; see the module docstring for hooks."""

    def __init__(self, config: TinyGPTConfig, act_fn=None, norm_fn=None, softmax_fn=None):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, act_fn, norm_fn, softmax_fn) for _ in range(config.n_layers))
        self.ln_f = LayerNorm(config.d_model, config.ln_eps, norm_fn)
        self.head = None
        if not config.tie_embeddings:
            # nn.Linear draws its own init; fork the (CPU) RNG so that this draw leaves no trace and
            # reset_parameters draws every weight as for the tied model
            with torch.random.fork_rng(devices=[]):
                self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    @property
    def output_weight(self) -> torch.Tensor:
        """``U`` of ``logits = LN_f(h_L) U^T``: the token embedding when tied, else the head's weight."""
        return self.tok_emb.weight if self.head is None else self.head.weight

    # -- initialisation -----------------------------------------------------------------------------
    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L);
        then ``config.emb_std`` for the token embedding and ``config.head_init`` for an untied head (drawn
        after every other weight, so the others are those of the tied model with the same seed)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name.split(".")[-2]:
                nn.init.ones_(p)
            elif name.endswith("o_proj.weight") or name.endswith("fc_out.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)
        with torch.no_grad():
            if self.config.emb_std is not None:
                nn.init.normal_(self.tok_emb.weight, 0.0, self.config.emb_std)
            if self.head is not None and self.config.head_init == "uniform":
                bound = 1.0 / math.sqrt(self.config.d_model)
                nn.init.uniform_(self.head.weight, -bound, bound)

    def n_parameters(self, non_embedding: bool = False) -> int:
        """All parameters, or (``non_embedding``) all but the token embedding (an untied head counts)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    # -- hooks ----------------------------------------------------------------------------------------
    def _per_layer(self, fn_or_list) -> list:
        if isinstance(fn_or_list, (list, tuple, nn.ModuleList)):
            if len(fn_or_list) != self.config.n_layers:
                raise ValueError(f"need one function per layer ({self.config.n_layers}), got {len(fn_or_list)}")
            return list(fn_or_list)
        return [fn_or_list] * self.config.n_layers

    def set_attn_fn(self, fn_or_list) -> None:
        """Set ``attn_fn`` on every layer (one callable for all, or a list with one per layer; None = default)."""
        for block, fn in zip(self.blocks, self._per_layer(fn_or_list), strict=True):
            block.attn.attn_fn = fn

    def set_act_fn(self, fn) -> None:
        for block in self.blocks:
            block.mlp.act_fn = fn

    def set_norm_fn(self, fn) -> None:
        for module in self.modules():
            if isinstance(module, LayerNorm):
                module.norm_fn = fn

    def set_softmax_fn(self, fn) -> None:
        for block in self.blocks:
            block.attn.softmax_fn = fn

    # -- forward --------------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, return_qkv: bool = False):
        """Logits ``[B, T, V]`` for tokens ``idx [B, T]``.

        With ``kv_cache``, ``idx`` holds the *new* tokens: they take positions ``cache.length ...`` and
        their keys/values are appended to the cache. With ``return_qkv`` also returns ``qkv[l] = (q, k, v)``
        of every layer (post-RoPE, ``[B, H, T, Dh]``; k and v include the cached positions).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be [B, T], got shape {tuple(idx.shape)}")
        start = 0 if kv_cache is None else kv_cache.length
        if start + idx.shape[1] > self.config.context:
            raise ValueError(f"sequence length {start + idx.shape[1]} exceeds the context {self.config.context}")
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.tok_emb(idx)
        qkvs = []
        for layer, block in enumerate(self.blocks):
            x, qkv = block(x, positions, None if kv_cache is None else (kv_cache, layer))
            qkvs.append(qkv)
        h = self.ln_f(x)
        logits = h @ self.tok_emb.weight.T if self.head is None else self.head(h)  # the module: its hooks apply
        return (logits, qkvs) if return_qkv else logits

    # -- decoding -------------------------------------------------------------------------------------
    @staticmethod
    def _next_token(logits, temperature, top_k, generator):
        """Greedy when ``temperature == 0``, else sample from ``softmax(logits / T)`` (optionally top-k)."""
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, use_cache: bool = True, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None, return_logits: bool = False):
        """Append ``max_new_tokens`` tokens to ``idx [B, T]``; ``temperature=0`` is greedy.

        With ``use_cache`` the prompt is prefilled once and each step feeds one token; without it every step
        recomputes the whole sequence. Both give the same tokens (and logits up to float rounding).
        With ``return_logits`` also returns the next-token logits of every step, ``[B, max_new_tokens, V]``.
        """
        if idx.shape[1] + max_new_tokens > self.config.context:
            raise ValueError(f"prompt {idx.shape[1]} + {max_new_tokens} new tokens exceed the context {self.config.context}")
        cache = self.new_cache() if use_cache else None
        steps = []
        logits = self(idx, kv_cache=cache)[:, -1]
        for i in range(max_new_tokens):
            steps.append(logits)
            nxt = self._next_token(logits, temperature, top_k, generator)
            idx = torch.cat([idx, nxt], dim=1)
            if i + 1 < max_new_tokens:
                logits = (self(nxt, kv_cache=cache) if use_cache else self(idx))[:, -1]
        if return_logits:
            return idx, torch.stack(steps, dim=1) if steps else idx.new_zeros((idx.shape[0], 0, self.config.vocab_size))
        return idx
