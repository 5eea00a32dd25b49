"""Exploitability of strategy profiles in two-player normal-form (bimatrix) games.

A two-player game with ``n`` row and ``m`` column actions is given by payoff matrices
``A, B ∈ R^{n×m}`` (row player gets ``A_ij``, column player ``B_ij`` when ``(i, j)`` is played).
Every function accepts a single game ``(n, m)`` or a batch ``(..., n, m)`` as torch tensors
(differentiable, so exploitability can be a training loss) or NumPy arrays (converted).

**Nash equilibrium (NE).** For mixed strategies ``x ∈ Δ_n``, ``y ∈ Δ_m`` the players' regrets are

    r_1(x, y) = max_i (A y)_i − xᵀ A y,    r_2(x, y) = max_j (Bᵀ x)_j − xᵀ B y        (1)

and the exploitability is ``max(r_1, r_2)`` (Duan et al. 2023, Sec. 2; ``reduction="sum"``
gives NashConv ``r_1 + r_2``). ``(x, y)`` is an NE iff it is 0.

**Coarse correlated equilibrium (CCE).** For a joint distribution ``π ∈ Δ_{n×m}`` with marginals
``π_1 = π 1``, ``π_2 = πᵀ 1``, a player may only deviate *before* seeing a recommendation:

    r_1^CCE(π) = [max_i (A π_2)_i − ⟨A, π⟩]_+,    r_2^CCE(π) = [max_j (Bᵀ π_1)_j − ⟨B, π⟩]_+   (2)

(clipped at 0: not deviating is always an option, so a strict CCE has regret 0, not < 0).

**Correlated equilibrium (CE).** A player may deviate *after* seeing its recommendation,
each recommendation ``i`` to its own best deviation ``i'``:

    r_1^CE(π) = Σ_i max_{i'} Σ_j π_ij (A_{i'j} − A_ij)                                    (3)

(and symmetrically for the column player). Each of (2), (3) is convex (a max of linear
functions) in ``π``, which is what makes orbit averaging of CE/CCE approximators safe.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "nash_regrets",
    "nash_exploitability",
    "cce_regrets",
    "cce_exploitability",
    "ce_regrets",
    "ce_exploitability",
    "social_welfare",
]


def as_tensor(a) -> torch.Tensor:
    """Return ``a`` as a floating torch tensor (float64 for NumPy input, unchanged for tensors)."""
    if isinstance(a, torch.Tensor):
        return a if a.is_floating_point() else a.double()
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _check_game(A: torch.Tensor, B: torch.Tensor) -> None:
    if A.ndim < 2 or A.shape != B.shape:
        raise ValueError(f"payoffs must be matching (..., n, m) arrays, got {tuple(A.shape)} and {tuple(B.shape)}")


def _reduce(r1: torch.Tensor, r2: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "max":
        return torch.maximum(r1, r2)
    if reduction == "sum":
        return r1 + r2
    raise ValueError(f"reduction must be 'max' or 'sum', got {reduction!r}")


def nash_regrets(A, B, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Both players' regrets (1) of the product profile ``(x, y)``; shapes ``(...)``."""
    A, B, x, y = map(as_tensor, (A, B, x, y))
    _check_game(A, B)
    if x.shape[-1] != A.shape[-2] or y.shape[-1] != A.shape[-1]:
        raise ValueError(f"strategy sizes {x.shape[-1]}, {y.shape[-1]} do not match the game {tuple(A.shape[-2:])}")
    Ay = (A @ y.unsqueeze(-1)).squeeze(-1)  # (..., n): row player's payoff per pure action
    Bx = (B.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1)  # (..., m)
    u1 = (x * Ay).sum(-1)
    u2 = (y * Bx).sum(-1)
    return Ay.amax(-1) - u1, Bx.amax(-1) - u2


def nash_exploitability(A, B, x, y, reduction: str = "max") -> torch.Tensor:
    """Exploitability of ``(x, y)``: the max (or sum) over players of the regrets (1)."""
    return _reduce(*nash_regrets(A, B, x, y), reduction)


def _check_joint(A: torch.Tensor, pi: torch.Tensor) -> None:
    if pi.shape[-2:] != A.shape[-2:]:
        raise ValueError(f"joint distribution shape {tuple(pi.shape)} does not match the game {tuple(A.shape)}")


def cce_regrets(A, B, pi) -> tuple[torch.Tensor, torch.Tensor]:
    """Both players' CCE regrets (2) of the joint distribution ``pi`` (..., n, m)."""
    A, B, pi = map(as_tensor, (A, B, pi))
    _check_game(A, B)
    _check_joint(A, pi)
    p1, p2 = pi.sum(-1), pi.sum(-2)
    dev1 = (A @ p2.unsqueeze(-1)).squeeze(-1)
    dev2 = (B.transpose(-1, -2) @ p1.unsqueeze(-1)).squeeze(-1)
    r1 = dev1.amax(-1) - (A * pi).sum((-1, -2))
    r2 = dev2.amax(-1) - (B * pi).sum((-1, -2))
    return r1.clamp_min(0.0), r2.clamp_min(0.0)


def cce_exploitability(A, B, pi, reduction: str = "max") -> torch.Tensor:
    """CCE exploitability of ``pi``: the max (or sum) over players of (2)."""
    return _reduce(*cce_regrets(A, B, pi), reduction)


def ce_regrets(A, B, pi) -> tuple[torch.Tensor, torch.Tensor]:
    """Both players' CE regrets (3) of the joint distribution ``pi`` (..., n, m)."""
    A, B, pi = map(as_tensor, (A, B, pi))
    _check_game(A, B)
    _check_joint(A, pi)
    # gain1[..., i, i'] = Σ_j π_ij A_{i'j} − Σ_j π_ij A_ij
    gain1 = pi @ A.transpose(-1, -2) - (pi * A).sum(-1, keepdim=True)
    # gain2[..., j, j'] = Σ_i π_ij B_{ij'} − Σ_i π_ij B_ij
    gain2 = pi.transpose(-1, -2) @ B - (pi * B).sum(-2).unsqueeze(-1)
    return gain1.amax(-1).sum(-1), gain2.amax(-1).sum(-1)


def ce_exploitability(A, B, pi, reduction: str = "max") -> torch.Tensor:
    """CE exploitability of ``pi``: the max (or sum) over players of (3)."""
    return _reduce(*ce_regrets(A, B, pi), reduction)


def social_welfare(A, B, pi) -> torch.Tensor:
    """Expected total payoff ``⟨A + B, π⟩``; pass ``π = x yᵀ`` for a product profile."""
    A, B, pi = map(as_tensor, (A, B, pi))
    _check_game(A, B)
    _check_joint(A, pi)
    return ((A + B) * pi).sum((-1, -2))
