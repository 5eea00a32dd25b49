"""Recurrent (state-passing) inference of a linearized TinyGPT, and the softmax teacher with a KV cache.

A LoLCATs layer (Eq. 2 of :mod:`common.attention.linear`) needs, to decode token i, only

- the last ``w`` keys and values (the sliding window; softmax weights γ_h·exp(s_ij − m_i)), and
- the linear-attention state of every older key, S = Σ_{j ≤ i−w} φ(k_j) v_jᵀ (f × d) and z = Σ φ(k_j) (f),

so each new token costs O(w·d + f·d) per head whatever its position: when key i arrives it joins the
window, and key i − w leaves the window for the state. :class:`HybridState` is that recurrence;
:class:`WindowState` keeps only the window (the sliding-window-only control), and :class:`SoftmaxCacheState`
is the teacher's exact softmax attention over a growing key/value cache (O(i·d) per token, like
``TinyGPT``'s ``KVCache``, which appends by concatenation).

:func:`decode` runs a model one token at a time with one state per layer, reusing the model's own
modules (embedding, LayerNorms, q/k/v/o projections with any LoRA adapters, RoPE, MLP, output head), so a
state-passing run and the model's parallel forward differ only in how attention is computed: the
recurrent logits equal the parallel ones up to float rounding (the notebook's sanity check). Positions
are not limited to the model's training context here (the timing benchmark decodes past it; the
numbers there are speeds, not predictions).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.attention.linear import HybridAttention, SlidingWindowAttention
from common.tinylm.model import apply_rope, rope_angles


class SoftmaxCacheState:
    """Exact causal softmax attention for one new query over every cached key (cache grows by concatenation)."""

    def __init__(self):
        self.k = self.v = None

    def step(self, q, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return F.scaled_dot_product_attention(q, self.k, self.v)

    def fill(self, k, v):
        """Start from the cache of keys/values ``(B, H, P, d)`` (as if P tokens had been decoded)."""
        self.k, self.v = k, v


class WindowState:
    """Softmax over the last ``window`` keys only (the sliding-window-only control)."""

    def __init__(self, window: int):
        self.window = window
        self.k = self.v = None

    def _push(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)[..., -self.window:, :]
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)[..., -self.window:, :]

    def step(self, q, k, v):
        self._push(k, v)
        return F.scaled_dot_product_attention(q, self.k, self.v)

    def fill(self, k, v):
        self.k, self.v = k[..., -self.window:, :], v[..., -self.window:, :]


class HybridState:
    """The O(1)-per-token recurrence of a :class:`HybridAttention` layer (window ``w`` ≥ 0, Eq. 2).

    Window keys/values and their key features sit in a buffer of at most ``w`` entries; a key leaving it
    is added to the linear state (S, z). With ``w = 0`` every key goes to the state at once (pure linear
    attention, Eq. 1, the query's own key included).
    """

    def __init__(self, layer: HybridAttention):
        self.layer = layer
        self.window = layer.window
        gamma, lam = layer.factors()
        self.gamma = gamma.detach().reshape(-1, 1, 1)
        self.lam = lam.detach().reshape(-1, 1, 1) if torch.is_tensor(lam) else lam
        self.k = self.v = self.phi_k = None
        self.S = self.z = None

    def _to_state(self, phi_k, v):
        s = phi_k.transpose(-1, -2) @ v                     # (B, H, f, d) for one key
        if self.S is None:
            self.S, self.z = s, phi_k.squeeze(-2)
        else:
            self.S = self.S + s
            self.z = self.z + phi_k.squeeze(-2)

    def fill(self, k, v):
        """Start from keys/values ``(B, H, P, d)``: the last ``w`` in the window, the rest in (S, z)."""
        w, n = self.window, k.shape[-2]
        phi = self.layer.feature_map_k(k)
        old = n - w if w else n
        if old > 0:
            self.S = phi[..., :old, :].transpose(-1, -2) @ v[..., :old, :]
            self.z = phi[..., :old, :].sum(-2)
        if w:
            self.k, self.v, self.phi_k = k[..., old:, :], v[..., old:, :], phi[..., old:, :]

    def step(self, q, k, v):
        layer = self.layer
        phi_q, phi_k = layer.feature_map_q(q), layer.feature_map_k(k)   # (B, H, 1, f)
        w = self.window
        if w == 0:
            self._to_state(phi_k, v)
            num = phi_q @ self.S
            den = (phi_q.squeeze(-2) * self.z).sum(-1)[..., None, None]
            return num / (den + layer.eps)
        if self.k is None:
            self.k, self.v, self.phi_k = k, v, phi_k
        else:
            self.k = torch.cat([self.k, k], dim=-2)
            self.v = torch.cat([self.v, v], dim=-2)
            self.phi_k = torch.cat([self.phi_k, phi_k], dim=-2)
            if self.k.shape[-2] > w:
                self._to_state(self.phi_k[..., :1, :], self.v[..., :1, :])
                self.k, self.v, self.phi_k = self.k[..., 1:, :], self.v[..., 1:, :], self.phi_k[..., 1:, :]
        logits = (q @ self.k.transpose(-1, -2)) / math.sqrt(q.shape[-1])            # (B, H, 1, n_w)
        e = self.gamma * torch.exp(logits - logits.amax(-1, keepdim=True))
        num, den = e @ self.v, e.sum(-1, keepdim=True)
        if self.S is not None:
            num = num + self.lam * (phi_q @ self.S)
            den = den + self.lam * (phi_q.squeeze(-2) * self.z).sum(-1)[..., None, None]
        return num / (den + layer.eps)


def new_states(model: nn.Module) -> list:
    """One fresh decoding state per layer, from each layer's ``attn_fn`` (None: softmax with a KV cache)."""
    states = []
    for block in model.blocks:
        fn = block.attn.attn_fn
        if fn is None:
            states.append(SoftmaxCacheState())
        elif isinstance(fn, HybridAttention):
            states.append(HybridState(fn))
        elif isinstance(fn, SlidingWindowAttention):
            states.append(WindowState(fn.window))
        else:
            raise TypeError(f"no recurrent form for attention {type(fn).__name__}")
    return states


@torch.no_grad()
def decode_step(model: nn.Module, states: list, token: torch.Tensor, position: int) -> torch.Tensor:
    """Logits ``(B, V)`` for one new token ``(B,)`` at ``position``, updating ``states`` in place."""
    x = model.tok_emb(token[:, None])
    b, _, d = x.shape
    first = model.blocks[0].attn
    cos, sin = rope_angles(torch.tensor([position]), first.head_dim, first.rope_base)
    for block, state in zip(model.blocks, states, strict=True):
        attn, h = block.attn, block.ln_1(x)
        q = apply_rope(attn._heads(attn.q_proj(h)), cos, sin)
        k = apply_rope(attn._heads(attn.k_proj(h)), cos, sin)
        v = attn._heads(attn.v_proj(h))
        y = state.step(q, k, v)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(b, 1, d))
        x = x + block.mlp(block.ln_2(x))
    return (model.ln_f(x) @ model.output_weight.T)[:, 0]


@torch.no_grad()
def decode(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits ``(B, T, V)`` of ``tokens (B, T)``, one token at a time with fresh states."""
    states = new_states(model)
    return torch.stack([decode_step(model, states, tokens[:, t], t) for t in range(tokens.shape[1])], dim=1)


@torch.no_grad()
def time_at_position(model: nn.Module, batch: int, position: int, steps: int, generator: torch.Generator,
                     clock=time.process_time) -> float:
    """Seconds (``clock``: CPU time of this process by default) per decoded token at ``position``.

    Every layer's state is first filled as if ``position`` tokens had been decoded, from random keys and
    values of the right shape (the cost of a step depends on the shapes only), then ``steps`` tokens are
    decoded at positions ``position, position + 1, ...``.
    """
    states = new_states(model)
    first = model.blocks[0].attn
    shape = (batch, first.n_heads, position, first.head_dim)
    for state in states:
        if position:
            state.fill(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    tokens = torch.randint(0, model.config.vocab_size, (batch, steps), generator=generator)
    decode_step(model, states, tokens[:, 0], position)          # warm-up, not timed
    start = clock()
    for t in range(1, steps):
        decode_step(model, states, tokens[:, t], position + t)
    return (clock() - start) / (steps - 1)


def scaling_benchmark(models: dict[str, nn.Module], positions, *, batch: int, steps: int, repeats: int,
                      seed: int = 0) -> dict:
    """Per model, seconds per token at each of ``positions`` (``(repeats, len(positions))``, models and
    positions interleaved within a repeat), tokens/s = batch / seconds per token, and per repeat the
    least-squares slope of log(seconds per token) on log(position) (0: flat, 1: linear growth)."""
    positions = list(positions)
    generator = torch.Generator().manual_seed(seed)
    per = {name: np.empty((repeats, len(positions))) for name in models}
    for r in range(repeats):
        for i, p in enumerate(positions):
            for name, model in models.items():
                per[name][r, i] = time_at_position(model, batch, p, steps, generator)
    x = np.log(np.asarray(positions, dtype=float))
    return {name: {"per_token_s": per[name], "positions": np.asarray(positions),
                   "tokens_per_s": batch / per[name],
                   "slope": np.array([np.polyfit(x, np.log(row), 1)[0] for row in per[name]])}
            for name in models}


@torch.no_grad()
def time_decode(model: nn.Module, tokens: torch.Tensor, block: int) -> np.ndarray:
    """Seconds per decoded token (wall clock, ``perf_counter``) in consecutive blocks of ``block`` positions."""
    states = new_states(model)
    n = tokens.shape[1] // block
    out = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        for t in range(i * block, (i + 1) * block):
            decode_step(model, states, tokens[:, t], t)
        out[i] = (time.perf_counter() - start) / block
    return out


def decode_benchmark(models: dict[str, nn.Module], tokens: torch.Tensor, *, block: int, repeats: int) -> dict:
    """Per model, ``repeats`` runs of :func:`time_decode` on the same tokens, models interleaved within a repeat.

    Returns ``{name: {"per_token_s": (repeats, n_blocks), "positions": block midpoints,
    "tokens_per_s": (repeats,), "slope": (repeats,)}}``, with ``slope`` the least-squares slope of
    log(per-token time) on log(position) over the blocks (0: flat; 1: linear growth) and ``tokens_per_s``
    = batch × positions / total time.
    """
    n_blocks = tokens.shape[1] // block
    positions = (np.arange(n_blocks) + 0.5) * block
    out = {name: {"per_token_s": [], "positions": positions} for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            out[name]["per_token_s"].append(time_decode(model, tokens, block))
    for name in models:
        per = np.asarray(out[name]["per_token_s"])
        out[name]["per_token_s"] = per
        out[name]["tokens_per_s"] = tokens.shape[0] / per.mean(axis=1)
        x = np.log(positions)
        out[name]["slope"] = np.array([np.polyfit(x, np.log(row), 1)[0] for row in per])
    return out
