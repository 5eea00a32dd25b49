"""LoRA: low-rank adaptation of frozen linear layers (Hu et al., ICLR 2022).

A pretrained weight W ∈ R^{out×in} is frozen and adapted by a rank-r update,

    h = W x + b + (α / r) · B A x,     A ∈ R^{r×in},  B ∈ R^{out×r},                    (Eq. 3 of LoRA)

with A drawn at random and B = 0, so training starts exactly at the pretrained function.
Only A and B are trained: r·(in + out) parameters per layer instead of
in·out. After training the update can be merged, W' = W + (α/r)·B A, giving a plain
``nn.Linear`` with no inference overhead.

- :class:`LoRALinear` wraps one ``nn.Linear``;
- :func:`apply_lora` replaces every ``nn.Linear`` whose name ends in one of ``target_names``
  (e.g. ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), freezes every other parameter of the
  model, and reports the trainable-parameter count and fraction;
- :func:`merge_lora` folds every adapter back into its base layer.

Initialisation follows PEFT: A ~ U(−1/√in, 1/√in) (``kaiming_uniform_(a=√5)``), B = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) · x Aᵀ Bᵀ`` around a frozen ``nn.Linear`` ``base``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, *, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank <= 0 or rank > min(base.in_features, base.out_features):
            raise ValueError(f"rank must be in 1..{min(base.in_features, base.out_features)}, got {rank}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        bound = 1.0 / math.sqrt(base.in_features)
        w = base.weight
        a = (torch.rand((rank, base.in_features), generator=generator, dtype=w.dtype) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r)·B A, the update merged into W."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())

    def merged(self) -> nn.Linear:
        """A new ``nn.Linear`` with weight W + ΔW and the base bias (same outputs, one matmul)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


@dataclass
class LoRAReport:
    """What :func:`apply_lora` changed: wrapped layers and the trainable share of parameters."""

    replaced: list[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, target_names, rank: int, alpha: float, *,
               generator: torch.Generator | None = None, freeze: bool = True) -> LoRAReport:
    """Wrap every ``nn.Linear`` whose name ends in one of ``target_names`` in :class:`LoRALinear`.

    With ``freeze=True`` every parameter of ``model`` is frozen first, so only the adapters are
    trainable (unfreeze other parameters afterwards if a method trains them too). Layers are
    wrapped in ``named_modules`` order, drawing A from ``generator``. Raises ``ValueError`` if no
    layer matches. Returns the wrapped names and the trainable count and fraction of all parameters.
    """
    targets = (target_names,) if isinstance(target_names, str) else tuple(target_names)
    if not targets:
        raise ValueError("target_names is empty")
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear)
             and name.split(".")[-1] in targets and not name.endswith(".base")]
    if not names:
        raise ValueError(f"no nn.Linear named {targets} in the model")
    for name in names:
        _set_child(model, name, LoRALinear(model.get_submodule(name), rank, alpha, generator=generator))
    return LoRAReport(replaced=names, trainable=count_parameters(model, trainable_only=True),
                      total=count_parameters(model))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The A and B matrices of every adapter in ``model``."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by its merged ``nn.Linear`` (in place); returns ``model``."""
    names = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in names:
        _set_child(model, name, model.get_submodule(name).merged())
    return model
