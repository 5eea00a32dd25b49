"""Muon: momentum SGD whose update is orthogonalized by Newton–Schulz (Jordan et al., 2024).

For a 2-D weight ``W`` (conv kernels are viewed as ``(out, in·k·k)``) with gradient ``G_t``:

    M_t = β·M_{t−1} + (1 − β)·G_t                      (momentum, written as a lerp)
    U_t = (1 − β)·G_t + β·M_t      (Nesterov)   or   U_t = M_t
    O_t = NS(U_t) ≈ polar(U_t)                         (common.newton_schulz)
    W_t = W_{t−1}·(1 − η·λ) − η·√max(1, rows/cols)·O_t  (shape scaling, decoupled decay)

Defaults follow ``KellerJordan/Muon``'s ``SingleDeviceMuon``: ``lr = 0.02``, ``β = 0.95``,
Nesterov, no weight decay, five Newton–Schulz steps. Muon is meant for hidden weight matrices;
biases, gains and the output layer go to AdamW (:func:`split_muon_params`).

The orthogonalizer is selectable: ``backend="muon"`` (Frobenius + fixed quintic ×5),
``"muon_plus"`` (per-iteration coefficients ×5), ``"turbo"`` (AOL + per-iteration ×4, the
Turbo-Muon drop-in) or any callable ``f(U) -> O``. The momentum buffers stay readable in
``optimizer.state[p]["momentum_buffer"]`` (real momentum matrices for benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .newton_schulz import VARIANTS


def resolve_backend(backend: str | Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A Newton–Schulz callable from a name in :data:`common.newton_schulz.VARIANTS` or a callable."""
    if callable(backend):
        return backend
    if backend not in VARIANTS:
        raise ValueError(f"unknown Newton–Schulz backend {backend!r}; use one of {sorted(VARIANTS)} or a callable")
    return VARIANTS[backend]


def muon_update(grad: torch.Tensor, momentum: torch.Tensor, beta: float = 0.95, nesterov: bool = True,
                orthogonalize: Callable[[torch.Tensor], torch.Tensor] = VARIANTS["muon"]) -> torch.Tensor:
    """One Muon direction; updates ``momentum`` in place and returns the scaled orthogonal update."""
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp(momentum, beta) if nesterov else momentum
    matrix = update.reshape(update.size(0), -1) if update.ndim > 2 else update
    ortho = orthogonalize(matrix).to(grad.dtype)
    ortho = ortho * max(1.0, matrix.size(-2) / matrix.size(-1)) ** 0.5
    return ortho.reshape(grad.shape)


class Muon(torch.optim.Optimizer):
    """Muon for parameters with ``ndim >= 2`` (see the module docstring for the update)."""

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, backend: str | Callable[[torch.Tensor], torch.Tensor] = "muon"):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.orthogonalize = resolve_backend(backend)
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon needs matrix parameters (ndim >= 2), got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                update = muon_update(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"],
                                     self.orthogonalize)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def split_muon_params(model: torch.nn.Module, head: str | None = None) -> tuple[list, list]:
    """``(muon_params, other_params)``: matrices of hidden layers vs. biases, gains and the head.

    ``head`` is the name prefix of the output layer (its weight goes to the AdamW group).
    """
    muon, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = head is not None and name.startswith(head)
        (muon if p.ndim >= 2 and not is_head else other).append(p)
    return muon, other
