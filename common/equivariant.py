"""Permutation-equivariant layers for matrix-shaped inputs (exchangeable matrices).

A two-player normal-form game is a tensor ``G ∈ R^{C×n×m}`` (channels = the players' payoff
matrices). Relabelling actions permutes rows and columns: ``(σ_r, σ_c)·G = G[:, σ_r][:, :, σ_c]``.
Hartford et al. (2018, "Deep models of interactions across sets") show that the most general
linear layer equivariant to independent row *and* column permutations is

    Y_ij = W_1 X_ij + W_2 mean_j' X_ij' + W_3 mean_i' X_i'j + W_4 mean_i'j' X_i'j' + b      (1)

with channel-mixing matrices ``W_k ∈ R^{C_out×C_in}`` (row pooling, column pooling, global
pooling). Stacking (1) with pointwise nonlinearities keeps equivariance. Readouts:

* :func:`row_readout` pools over columns → a vector indexed by rows (equivariant to σ_r,
  invariant to σ_c), e.g. the row player's mixed strategy; :func:`col_readout` likewise.
* a softmax over all ``n·m`` entries gives an equivariant joint distribution (CE/CCE).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ExchangeableLayer", "ExchangeableNet", "row_readout", "col_readout", "permute_game"]


class ExchangeableLayer(nn.Module):
    """Layer (1): ``(batch, C_in, n, m) → (batch, C_out, n, m)``, row- and column-equivariant."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        if c_in < 1 or c_out < 1:
            raise ValueError(f"channel counts must be positive, got {c_in}, {c_out}")
        self.lin = nn.Linear(4 * c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected (batch, C, n, m), got {tuple(x.shape)}")
        n, m = x.shape[-2:]
        row = x.mean(-1, keepdim=True).expand_as(x)
        col = x.mean(-2, keepdim=True).expand_as(x)
        glob = x.mean((-1, -2), keepdim=True).expand_as(x)
        feats = torch.cat([x, row, col, glob], dim=1)  # (batch, 4C, n, m)
        return self.lin(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ExchangeableNet(nn.Module):
    """A stack of :class:`ExchangeableLayer` with ReLU in between; last layer has no activation."""

    def __init__(self, c_in: int, hidden: int, c_out: int, depth: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dims = [c_in] + [hidden] * (depth - 1) + [c_out]
        self.layers = nn.ModuleList(ExchangeableLayer(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def row_readout(x: torch.Tensor) -> torch.Tensor:
    """Pool ``(..., n, m)`` over columns → ``(..., n)`` (equivariant to row permutations)."""
    return x.mean(-1)


def col_readout(x: torch.Tensor) -> torch.Tensor:
    """Pool ``(..., n, m)`` over rows → ``(..., m)`` (equivariant to column permutations)."""
    return x.mean(-2)


def permute_game(G: torch.Tensor, row_perm, col_perm) -> torch.Tensor:
    """Relabel actions: ``G[..., row_perm, :][..., :, col_perm]`` for ``G`` of shape (..., n, m)."""
    row_perm = torch.as_tensor(row_perm, dtype=torch.long)
    col_perm = torch.as_tensor(col_perm, dtype=torch.long)
    if sorted(row_perm.tolist()) != list(range(G.shape[-2])) or sorted(col_perm.tolist()) != list(range(G.shape[-1])):
        raise ValueError("row_perm/col_perm must be permutations of the game's actions")
    return G.index_select(-2, row_perm).index_select(-1, col_perm)
