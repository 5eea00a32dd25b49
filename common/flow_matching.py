r"""Flow matching on the linear (CondOT) path: the path, the loss, a seeded trainer, Euler/midpoint sampling, MACs.

**Time convention (the SiT / official BFM one).** :math:`t \in [0, 1]`, **data at t = 0, noise at t = 1**:

.. math:: x_t = (1 - t)\,x + t\,\varepsilon, \qquad v^\star(x_t, t) = \frac{dx_t}{dt} = \varepsilon - x,
   \qquad \varepsilon \sim \mathcal N(0, I)

(Lipman et al. 2023, Eq. 20-23 with :math:`\sigma_{min} = 0`; Liu et al. 2023's rectified flow; the
official BFM ``interpolant`` with ``path_type="linear"``). A network :math:`v_\theta(x, t, y)` regresses the
conditional velocity, :math:`\mathcal L = \mathbb E_{t, x, \varepsilon}\|v_\theta(x_t, t, y) - (\varepsilon - x)\|^2`
(:func:`flow_matching_loss`, the mean over pixels as ``mean_flat``), and sampling integrates
:math:`dx/dt = v_\theta` from :math:`t = 1` (noise) down to :math:`t = 0`.

**Sampling through** :mod:`common.diffusion.flow` **(read-only).** That module's solvers
(:func:`~common.diffusion.flow.rk_euler`, :func:`~common.diffusion.flow.rk_midpoint`) integrate an FM-OT velocity
along *increasing* FM time :math:`\tau` with data at :math:`\tau = 1`. The two conventions are one path read backwards:
:math:`\tau = 1 - t` and :math:`u_\tau(x) = dx/d\tau = -v(x, t)`. :class:`FlowView` exposes a t-convention velocity
network through the ``flow_velocity(x, tau, y)`` method those solvers call, so :func:`sample` with ``n_steps``
Euler steps is exactly :math:`x \leftarrow x + (t_{i+1} - t_i) v_\theta(x, t_i)` on the uniform grid
:math:`t_i = 1 - i/n`.

**Trainer.** :func:`train` is a small seeded loop (AdamW, cosine learning rate to 0, gradient clipping) around a
caller's ``loss_fn(model, x, y, generator) -> (loss, logs)``: the batches and every random draw come from one
``torch.Generator`` seeded by :func:`common.harness.seeding.seeded_training`, so the same seed and thread count give
bit-identical weights.

**Cost.** Models here are stacks of ``nn.Linear`` layers; a linear layer applied to ``rows`` vectors costs
``rows * d_in * d_out`` multiply-accumulates (MACs; FLOPs = 2 MACs; biases, norms and activations are not counted,
as in the usual DiT GFLOP tables). :func:`linear_macs` is the analytic count; :class:`MACCounter` counts the MACs
that the linear layers of a module actually execute (forward hooks), which checks an analytic per-step formula
against the code (``torch.utils.flop_counter.FlopCounterMode`` is the independent cross-check in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

__all__ = ["interpolate", "velocity_target", "sample_time", "flow_matching_loss", "FlowView", "sample",
           "TrainConfig", "TrainResult", "train", "linear_macs", "MACCounter"]


# --- the path and the loss ------------------------------------------------------------------------------


def _column(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(x: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    r"""The linear path :math:`x_t = (1 - t)x + t\varepsilon` (t = 0: data, t = 1: noise)."""
    if x.shape != eps.shape:
        raise ValueError(f"x and eps must have the same shape, got {tuple(x.shape)} and {tuple(eps.shape)}")
    tc = _column(t, x)
    return (1 - tc) * x + tc * eps


def velocity_target(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""The conditional velocity :math:`dx_t/dt = \varepsilon - x` (constant along each conditional path)."""
    return eps - x


def sample_time(n: int, generator: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``n`` times uniform on [lo, hi] (float32), drawn from ``generator``."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"need 0 <= lo < hi <= 1, got {lo}, {hi}")
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def flow_matching_loss(velocity_fn: Callable, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, y=None,
                       **kwargs) -> torch.Tensor:
    r"""Conditional flow matching, :math:`\frac1B\sum_b \frac1D\|v_\theta(x_t, t, y) - (\varepsilon - x)\|^2`.

    ``velocity_fn(x_t, t, y, **kwargs)`` returns the predicted velocity (same shape as ``x``)."""
    xt = interpolate(x, eps, t)
    pred = velocity_fn(xt, t, y, **kwargs)
    if pred.shape != x.shape:
        raise ValueError(f"velocity_fn returned shape {tuple(pred.shape)}, expected {tuple(x.shape)}")
    return (pred - velocity_target(x, eps)).pow(2).flatten(1).mean(1).mean()


# --- sampling through common.diffusion.flow -------------------------------------------------------------


class FlowView:
    r"""A t-convention velocity network seen in FM time: ``flow_velocity(x, tau, y) = -v(x, 1 - tau, y)``.

    ``velocity_fn(x, t, y)`` takes ``t`` as a float32 [B] tensor. This is the interface that
    :func:`common.diffusion.flow.rk_euler` / ``rk_midpoint`` call (through ``common.diffusion.flow.velocity``)."""

    def __init__(self, velocity_fn: Callable):
        self.velocity_fn = velocity_fn

    def flow_velocity(self, x: torch.Tensor, tau: torch.Tensor, y=None) -> torch.Tensor:
        t = (1.0 - torch.as_tensor(tau, dtype=torch.float64)).to(x.dtype)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return -self.velocity_fn(x, t, y)


@torch.no_grad()
def sample(velocity_fn: Callable, noise: torch.Tensor, y=None, n_steps: int = 8, method: str = "euler") -> torch.Tensor:
    r"""Integrate :math:`dx/dt = v_\theta(x, t, y)` from ``noise`` at t = 1 to t = 0 on the uniform grid with
    ``n_steps`` steps: Euler (one call per step) or explicit midpoint (two calls), via :mod:`common.diffusion.flow`."""
    from common.diffusion.flow import rk_euler, rk_midpoint, uniform_flow_grid

    solvers = {"euler": rk_euler, "midpoint": rk_midpoint}
    if method not in solvers:
        raise ValueError(f"method must be one of {sorted(solvers)}, got {method!r}")
    return solvers[method](FlowView(velocity_fn), noise, uniform_flow_grid(0.0, 1.0, n_steps), y)


# --- a small seeded trainer -----------------------------------------------------------------------------


@dataclass
class TrainConfig:
    n_iters: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup: int = 0
    seed: int = 0


@dataclass
class TrainResult:
    losses: list = field(default_factory=list)  # the total loss per iteration
    logs: dict = field(default_factory=dict)  # name -> list per iteration (e.g. the two parts of a loss)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for ``cfg.warmup`` steps, then cosine decay from ``cfg.lr`` to 0 at ``cfg.n_iters``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.n_iters - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def train(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor | None, cfg: TrainConfig,
          parameters=None, generator: torch.Generator | None = None, progress: bool = False) -> TrainResult:
    """Minimise ``loss_fn(model, xb, yb, generator) -> (loss, logs)`` over minibatches of ``(x, y)`` drawn with
    replacement from ``generator`` (default: a fresh generator seeded with ``cfg.seed``; the caller seeds the
    initialisation, e.g. with :func:`common.harness.seeding.seeded_training`). ``parameters``: the trainable ones
    (default ``model.parameters()``). Returns the per-iteration losses and logs."""
    if cfg.n_iters < 1 or cfg.batch_size < 1:
        raise ValueError(f"n_iters and batch_size must be >= 1, got {cfg.n_iters}, {cfg.batch_size}")
    if y is not None and len(y) != len(x):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    gen = torch.Generator().manual_seed(cfg.seed) if generator is None else generator
    params = [p for p in (model.parameters() if parameters is None else parameters) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    result = TrainResult()
    steps = range(cfg.n_iters)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="train", leave=False)
    model.train()
    for step in steps:
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
        loss, logs = loss_fn(model, x[idx], None if y is None else y[idx], gen)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        result.losses.append(float(loss.detach()))
        for k, v in (logs or {}).items():
            result.logs.setdefault(k, []).append(float(v))
    model.eval()
    return result


# --- analytic MACs and a counter ------------------------------------------------------------------------


def linear_macs(d_in: int, d_out: int, rows: int = 1) -> int:
    """Multiply-accumulates of a dense layer ``d_in -> d_out`` applied to ``rows`` vectors (bias not counted)."""
    for name, v in (("d_in", d_in), ("d_out", d_out), ("rows", rows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return rows * d_in * d_out


class MACCounter:
    """Counts the MACs executed by every ``nn.Linear`` inside ``module`` while the context is open
    (rows = the number of input vectors the layer saw). ``.macs``; ``.flops = 2 * macs``."""

    def __init__(self, module: nn.Module):
        self.module, self.macs, self._handles = module, 0, []

    def _hook(self, layer: nn.Linear, inputs, output) -> None:
        rows = inputs[0].numel() // layer.in_features
        self.macs += rows * layer.in_features * layer.out_features

    def __enter__(self) -> "MACCounter":
        self.macs = 0
        self._handles = [m.register_forward_hook(self._hook) for m in self.module.modules() if isinstance(m, nn.Linear)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def flops(self) -> int:
        return 2 * self.macs
