"""LoLCATs: low-rank linearizing of a softmax-attention language model, and the baselines.

Zhang, Arora, Chalamala, Wu, Spector, Singhal, Ramesh, Ré. *LoLCATs: On Low-Rank Linearizing of
Large Language Models.* ICLR 2025 (arXiv 2410.10254). Official code: ``HazyResearch/lolcats``.

**Linearizing** swaps every softmax attention of a pretrained model for a subquadratic one and
then repairs the model with a little training. LoLCATs does it in two stages:

1. **Attention transfer.** Each layer's attention is replaced by the hybrid of
   :mod:`common.attention.linear` (Eq. 2 there): softmax over a sliding window of the last w keys,
   linear attention φ(q)ᵀφ(k) with the Hedgehog feature map φ(x) = [softmax(xW), softmax(−xW)]
   for older keys, one shared normaliser and a learnable per-head window factor γ_h. Only the
   feature maps and window factors are trained, on the frozen model's own queries, keys and
   values, to match the softmax output of the same layer:

       ℓ_MSE = 1/L Σ_l  mean_{b,h,t,d} ( ŷ_l − y_l )²,   y_l = softmax(q kᵀ/√d) v,  ŷ_l = hybrid(q, k, v)  (Section 3.1)

   The residual stream keeps the teacher's attention outputs, so all layers train at once and
   independently (the official ``train_attention`` mode).
2. **Low-rank adjusting.** The feature maps are frozen and LoRA (rank r, Eq. 3 of
   :mod:`common.lora`) is applied to the q, k, v and o projections, trained by next-token
   cross-entropy (Section 3.2).

**Baselines and ablations** (all at equal data: the same linearization tokens, the same
fine-tuning batches in the same order, the same seeds; and at equal optimizer steps: a method without
attention transfer makes its single next-token stage over the linearization set twice, as many steps
as LoLCATs' two stages together, see :func:`run_methods`):

- *T2R-style (LoRA)*: ReLU feature maps φ(x) = relu(Wx + b), no window, no attention transfer; the
  feature maps and LoRA are trained together by next-token loss.
- *T2R (full fine-tuning)*: the same ReLU feature maps trained with *every* weight of the model by
  next-token loss, as Kasai et al. (2021) do (learning rate ``full_finetune_lr``).
- *Sliding window only*: softmax over the last w keys and nothing else (no linear attention, no
  feature maps), repaired with LoRA: the control that says how much of LoLCATs is the window alone.
- *Hedgehog without a window*: attention transfer of pure linear attention, then LoRA.
- *LoRA only*: LoLCATs' architecture without attention transfer (feature maps, window factors and
  LoRA trained by next-token loss).
- *Attention transfer only*: LoLCATs after stage 1, without LoRA.

Metrics: validation perplexity, the fraction of the T2R-to-teacher gap closed,
(ppl_T2R − ppl_X) / (ppl_T2R − ppl_teacher), the per-layer attention-output MSE after stage 1,
fact-recall accuracy, trainable-parameter fractions and tokens used.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from common.attention import softmax_attention
from common.attention.linear import HybridAttention, SlidingWindowAttention, make_hybrid_attention
from common.lora import apply_lora, lora_parameters
from common.tinylm.grammar import COLORS

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
METHOD_NAMES = ("t2r", "t2r_full", "hedgehog", "lolcats", "window_only", "lora_only", "transfer_only")
#: methods whose single next-token stage is repeated to match LoLCATs' optimizer steps (``equal_steps``).


@dataclass(frozen=True)
class Method:
    """One linearization recipe.

    ``feature_map`` is a :func:`common.attention.linear.make_feature_map` kind, ``window`` the
    sliding window (0: pure linear attention), ``attention_transfer`` whether stage 1 runs,
    ``lora`` whether stage 2 runs, ``finetune_feature_maps`` whether the feature maps and window
    factors are also trained by next-token loss in stage 2 (methods without attention transfer),
    ``full_finetune`` whether stage 2 trains every weight of the model instead of LoRA adapters.
    ``feature_map="none"`` is sliding-window softmax only (no linear part).
    """

    name: str
    feature_map: str
    window: int
    attention_transfer: bool
    lora: bool
    finetune_feature_maps: bool
    full_finetune: bool = False

    def __post_init__(self):
        if self.feature_map == "none" and (self.window < 1 or self.attention_transfer or self.finetune_feature_maps):
            raise ValueError("a window-only method needs a window and has no feature maps to transfer or train")
        if self.full_finetune and self.lora:
            raise ValueError("full fine-tuning and LoRA are exclusive")

    @property
    def has_stage2(self) -> bool:
        return self.lora or self.full_finetune

    @property
    def stage1_key(self) -> tuple[str, int]:
        """Methods with equal keys share the same attention-transfer stage (same seed, same data)."""
        return self.feature_map, self.window


def methods(window: int) -> dict[str, Method]:
    """The seven recipes compared in the notebook, LoLCATs with sliding window ``window``."""
    if window < 1:
        raise ValueError(f"LoLCATs needs a sliding window >= 1, got {window}")
    return {
        "t2r": Method("t2r", "t2r_relu", 0, attention_transfer=False, lora=True, finetune_feature_maps=True),
        "t2r_full": Method("t2r_full", "t2r_relu", 0, attention_transfer=False, lora=False,
                           finetune_feature_maps=True, full_finetune=True),
        "hedgehog": Method("hedgehog", "hedgehog", 0, attention_transfer=True, lora=True, finetune_feature_maps=False),
        "lolcats": Method("lolcats", "hedgehog", window, attention_transfer=True, lora=True,
                          finetune_feature_maps=False),
        "window_only": Method("window_only", "none", window, attention_transfer=False, lora=True,
                              finetune_feature_maps=False),
        "lora_only": Method("lora_only", "hedgehog", window, attention_transfer=False, lora=True,
                            finetune_feature_maps=True),
        "transfer_only": Method("transfer_only", "hedgehog", window, attention_transfer=True, lora=False,
                                finetune_feature_maps=False),
    }


# ------------------------------------------------------------------ data


def token_batches(tokens: torch.Tensor, context: int, batch_size: int, n_batches: int) -> torch.Tensor:
    """``(n_batches, batch_size, context + 1)`` consecutive, non-overlapping windows of a token stream.

    Each row holds inputs ``[:-1]`` and next-token targets ``[1:]``.
    """
    tokens = tokens.reshape(-1)
    need = n_batches * batch_size * (context + 1)
    if min(context, batch_size, n_batches) <= 0:
        raise ValueError("context, batch_size and n_batches must be positive")
    if tokens.numel() < need:
        raise ValueError(f"need {need} tokens for {n_batches} batches of {batch_size}×{context + 1}, "
                         f"got {tokens.numel()}")
    return tokens[:need].reshape(n_batches, batch_size, context + 1).clone()


# ------------------------------------------------------------------ building the student


def attention_layers(model: nn.Module, method: Method, *, generator: torch.Generator,
                     init_window_factor: float = 0.1) -> list[nn.Module]:
    """One :class:`HybridAttention` (or, for ``feature_map="none"``, :class:`SlidingWindowAttention`) per
    block of ``model`` for ``method`` (seeded by ``generator``)."""
    if method.feature_map == "none":
        return [SlidingWindowAttention(method.window) for _ in model.blocks]
    first = model.blocks[0].attn
    d_model = first.q_proj.out_features
    n_heads = model.config.n_heads
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    return [make_hybrid_attention(method.feature_map, n_heads, d_model // n_heads, window=method.window,
                                  init_window_factor=init_window_factor, generator=generator)
            for _ in model.blocks]


def linearize(teacher: nn.Module, layers: list[HybridAttention]) -> nn.Module:
    """A frozen copy of ``teacher`` whose attentions are ``layers`` (the ``attn_fn`` hook)."""
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(False)
    student.set_attn_fn(list(layers))
    return student


def parameter_set(*modules: nn.Module | Iterable[nn.Module]) -> list[nn.Parameter]:
    """All parameters of ``modules`` (or lists of modules), each tensor once."""
    seen, out = set(), []
    for item in modules:
        for m in (item if isinstance(item, (list, tuple)) else [item]):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def attention_parameters(layers: list[HybridAttention]) -> list[nn.Parameter]:
    """Feature-map weights and (for windowed layers) window factors: what stage 1 trains."""
    params = []
    for layer in layers:
        if not isinstance(layer, HybridAttention):
            continue
        params += list(layer.feature_map_q.parameters()) + list(layer.feature_map_k.parameters())
        if layer.window > 0:
            params.append(layer.window_factors)
    return params


# ------------------------------------------------------------------ stage 1: attention transfer


def teacher_qkv(teacher: nn.Module, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each layer's post-RoPE (q, k, v) of the frozen softmax model on ``idx``."""
    with torch.no_grad():
        _, qkv = teacher(idx, return_qkv=True)
    return [tuple(t.detach() for t in layer) for layer in qkv]


def layer_mse(layers: list[HybridAttention], qkv) -> torch.Tensor:
    """Per-layer MSE between each hybrid attention and softmax attention on the same (q, k, v)."""
    losses = []
    for layer, (q, k, v) in zip(layers, qkv, strict=True):
        with torch.no_grad():
            target = softmax_attention(q, k, v, causal=True)
        losses.append(F.mse_loss(layer(q, k, v), target))
    return torch.stack(losses)


def teacher_targets(teacher: nn.Module, batches: torch.Tensor) -> list[list[tuple[torch.Tensor, ...]]]:
    """Per batch, per layer ``(q, k, v, softmax(q kᵀ/√d) v)`` of the frozen teacher: stage 1's inputs and
    targets, computed once and shared by every attention-transfer run on the same batches."""
    out = []
    with torch.no_grad():
        for b in batches:
            out.append([(q, k, v, softmax_attention(q, k, v, causal=True)) for q, k, v in teacher_qkv(teacher, b[:, :-1])])
    return out


def _targets_mse(layers: list[HybridAttention], targets) -> torch.Tensor:
    return torch.stack([F.mse_loss(layer(q, k, v), y) for layer, (q, k, v, y) in zip(layers, targets, strict=True)])


def attention_transfer(teacher: nn.Module | None, layers: list[HybridAttention], batches: torch.Tensor | None, *,
                       lr: float, progress: Callable | None = None, targets=None,
                       snapshot_at: Iterable[int] = (), snapshots: dict | None = None) -> list[float]:
    """Stage 1: Adam on the feature maps and window factors, loss = mean over layers of the output MSE.

    ``targets`` (from :func:`teacher_targets`) replaces the teacher's forward pass on ``batches``. After
    each step count in ``snapshot_at``, a deep copy of ``layers`` is stored in ``snapshots[step]``.
    """
    if targets is None:
        targets = teacher_targets(teacher, batches)
    params = attention_parameters(layers)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    marks = set(snapshot_at)
    steps = range(len(targets))
    for step in (progress(steps, desc="attention transfer", leave=False) if progress else steps):
        loss = _targets_mse(layers, targets[step]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if step + 1 in marks and snapshots is not None:
            snapshots[step + 1] = copy.deepcopy(layers)
    return history


def stage_one_mse(teacher: nn.Module | None, layers: list[HybridAttention], batches: torch.Tensor | None,
                  targets=None) -> torch.Tensor:
    """Per-layer attention-output MSE against softmax, averaged over ``batches`` (or precomputed ``targets``)."""
    if targets is None:
        targets = teacher_targets(teacher, batches)
    with torch.no_grad():
        total = sum(_targets_mse(layers, t) for t in targets)
    return total / len(targets)


# ------------------------------------------------------------------ stage 2: next-token fine-tuning


def next_token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``batch[:, 1:]`` from ``batch[:, :-1]``."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def finetune(model: nn.Module, param_groups: list[dict], batches: torch.Tensor, *,
             progress: Callable | None = None, desc: str = "fine-tuning") -> list[float]:
    """Stage 2: Adam on ``param_groups`` (dicts with ``params`` and ``lr``), one step per batch."""
    for group in param_groups:
        for p in group["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(param_groups)
    history = []
    steps = range(len(batches))
    for step in (progress(steps, desc=desc, leave=False) if progress else steps):
        loss = next_token_loss(model, batches[step])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


# ------------------------------------------------------------------ evaluation


def recall_accuracy(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, answers: torch.Tensor, *,
                    batch_size: int = 32) -> float:
    """Fraction of episodes whose answer token is the model's top next-token prediction.

    ``tokens`` ``(n, T)``; ``positions[i]`` is the index of episode i's answer token in its row,
    predicted from the logits at ``positions[i] − 1``.
    """
    positions, answers = torch.as_tensor(positions).reshape(-1), torch.as_tensor(answers).reshape(-1)
    if tokens.dim() != 2 or len(tokens) != len(positions) or len(positions) != len(answers):
        raise ValueError("tokens must be (n, T) with one position and one answer per row")
    if bool((positions < 1).any()) or bool((positions >= tokens.shape[1]).any()):
        raise ValueError("answer positions must lie in 1..T-1")
    hits = 0
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            rows = slice(start, start + batch_size)
            pos = positions[rows]
            width = int(pos.max())
            logits = model(tokens[rows, :width])
            pred = logits[torch.arange(len(pos)), pos - 1].argmax(-1)
            hits += int((pred == answers[rows]).sum())
    return hits / len(tokens)


def unpack_episodes(episodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens (n, T), answer positions (n,), answer ids (n,))`` from recall episodes.

    Accepts a ``(tokens, positions, answers)`` tuple, a mapping or an object with those fields
    (``tokens``; ``positions`` or ``answer_positions``; ``answers`` or ``answer_ids``). Rows of
    unequal length are right-padded with 0: only tokens before each answer are read (causal model).
    """
    def field_of(names):
        for name in names:
            if isinstance(episodes, dict) and name in episodes:
                return episodes[name]
            if hasattr(episodes, name):
                return getattr(episodes, name)
        raise ValueError(f"recall episodes have none of the fields {names}")

    if isinstance(episodes, (tuple, list)) and len(episodes) == 3 and not isinstance(episodes[0], int):
        tokens, positions, answers = episodes
    else:
        tokens = field_of(("tokens",))
        positions = field_of(("positions", "answer_positions", "answer_position"))
        answers = field_of(("answers", "answer_ids", "answer_id"))
    if not torch.is_tensor(tokens):
        rows = [torch.as_tensor(t, dtype=torch.long).reshape(-1) for t in tokens]
        tokens = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = r
    return (tokens.long(), torch.as_tensor(positions, dtype=torch.long).reshape(-1),
            torch.as_tensor(answers, dtype=torch.long).reshape(-1))


def mean_nll(model: nn.Module, batches: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over ``(n, B, T + 1)`` batches."""
    with torch.no_grad():
        return sum(float(next_token_loss(model, b)) for b in batches) / len(batches)


def gap_closed(ppl: float, ppl_t2r: float, ppl_teacher: float) -> float:
    """(ppl_T2R − ppl) / (ppl_T2R − ppl_teacher): 0 at T2R, 1 at the softmax teacher."""
    if ppl_t2r == ppl_teacher:
        raise ValueError("T2R and the teacher have the same perplexity: the gap is zero")
    return (ppl_t2r - ppl) / (ppl_t2r - ppl_teacher)


# ------------------------------------------------------------------ one method end to end


@dataclass
class Linearized:
    """A linearized model and its bookkeeping."""

    method: Method
    model: nn.Module
    layers: list[HybridAttention]
    stage1_losses: list[float] = field(default_factory=list)
    stage2_losses: list[float] = field(default_factory=list)
    stage1_trainable: int = 0
    stage2_trainable: int = 0
    total_parameters: int = 0
    stage1_tokens: int = 0
    stage2_tokens: int = 0
    #: the attention layers after the whole attention-transfer run (``transfer_batches``), when the
    #: two-stage model itself continues from an earlier snapshot (``linearization_steps``)
    transfer_layers: list | None = None
    transfer_losses: list[float] = field(default_factory=list)

    @property
    def stage1_steps(self) -> int:
        return len(self.stage1_losses)

    @property
    def stage2_steps(self) -> int:
        return len(self.stage2_losses)

    @property
    def steps(self) -> int:
        """Optimizer steps of both stages together."""
        return self.stage1_steps + self.stage2_steps

    @property
    def stage1_fraction(self) -> float:
        return self.stage1_trainable / self.total_parameters

    @property
    def stage2_fraction(self) -> float:
        return self.stage2_trainable / self.total_parameters


@dataclass(frozen=True)
class TrainConfig:
    """Shared hyper-parameters of every method (one set, never tuned per method)."""

    transfer_lr: float = 1e-2       # official attention-transfer learning rate
    lora_lr: float = 1e-3
    feature_map_lr: float = 1e-2    # feature maps trained by next-token loss (T2R, LoRA only)
    full_finetune_lr: float = 3e-4  # every weight (T2R full fine-tuning): the teacher's final learning rate
    lora_rank: int = 8
    lora_alpha: float = 16.0
    init_window_factor: float = 0.1


def _tokens(batches: torch.Tensor) -> int:
    return int(batches.shape[0] * batches.shape[1] * (batches.shape[2] - 1))


def run_stage1(teacher: nn.Module, method: Method, batches: torch.Tensor, config: TrainConfig, seed: int, *,
               progress: Callable | None = None, steps: int | None = None, targets=None) -> Linearized:
    """Build ``method``'s student (feature maps seeded by ``seed``) and, if it has one, run stage 1.

    Stage 1 runs over all of ``batches`` (``targets``: their precomputed :func:`teacher_targets`); with
    ``steps`` < ``len(batches)`` the student keeps the layers as they were after ``steps`` steps (what its
    stage 2 continues from) and ``transfer_layers`` holds them after the whole run.
    """
    layers = attention_layers(teacher, method, generator=torch.Generator().manual_seed(seed),
                              init_window_factor=config.init_window_factor)
    steps = len(batches) if steps is None else steps
    if not 0 < steps <= len(batches) and method.attention_transfer:
        raise ValueError(f"steps must lie in 1..{len(batches)}, got {steps}")
    result = Linearized(method, None, layers)
    if method.attention_transfer:
        snapshots: dict[int, list] = {}
        losses = attention_transfer(teacher, layers, batches, lr=config.transfer_lr, progress=progress,
                                    targets=targets, snapshot_at=(steps,) if steps < len(batches) else (),
                                    snapshots=snapshots)
        result.transfer_layers, result.transfer_losses = layers, losses
        if steps < len(batches):
            layers = snapshots[steps]
        result.layers = layers
        result.stage1_losses = losses[:steps]
        result.stage1_trainable = sum(p.numel() for p in attention_parameters(layers))
        result.stage1_tokens = _tokens(batches[:steps])
        for p in attention_parameters(result.transfer_layers):
            p.requires_grad_(False)
    for p in attention_parameters(layers):
        p.requires_grad_(False)
    result.model = linearize(teacher, layers)
    return result


def run_stage2(result: Linearized, batches: torch.Tensor, config: TrainConfig, seed: int, *,
               progress: Callable | None = None) -> Linearized:
    """Apply LoRA to q, k, v, o (seeded by ``seed``) and fine-tune by next-token loss, if the method has stage 2;
    a ``full_finetune`` method instead trains every weight of the model (and its feature maps)."""
    method = result.method
    if method.full_finetune:
        attn = {id(p) for p in attention_parameters(result.layers)}
        weights = [p for p in parameter_set(result.model) if id(p) not in attn and not _is_window_factor(p, result.layers)]
        groups = [{"params": weights, "lr": config.full_finetune_lr}]
        if method.finetune_feature_maps and attention_parameters(result.layers):
            groups.append({"params": attention_parameters(result.layers), "lr": config.feature_map_lr})
        result.stage2_losses = finetune(result.model, groups, batches, progress=progress, desc=method.name)
        result.stage2_trainable = sum(p.numel() for g in groups for p in g["params"])
        result.stage2_tokens = _tokens(batches)
    elif method.lora:
        apply_lora(result.model, LORA_TARGETS, config.lora_rank, config.lora_alpha,
                   generator=torch.Generator().manual_seed(seed + 1))
        groups = [{"params": lora_parameters(result.model), "lr": config.lora_lr}]
        if method.finetune_feature_maps:
            groups.append({"params": attention_parameters(result.layers), "lr": config.feature_map_lr})
        result.stage2_losses = finetune(result.model, groups, batches, progress=progress, desc=method.name)
        result.stage2_trainable = sum(p.numel() for g in groups for p in g["params"])
        result.stage2_tokens = _tokens(batches)
    for p in result.model.parameters():
        p.requires_grad_(False)
    result.total_parameters = sum(p.numel() for p in parameter_set(result.model, result.layers))
    return result


def _is_window_factor(p: nn.Parameter, layers) -> bool:
    return any(isinstance(layer, HybridAttention) and p is layer.window_factors for layer in layers)


def run_methods(teacher: nn.Module, recipes: dict[str, Method], transfer_batches: torch.Tensor,
                finetune_batches: torch.Tensor, config: TrainConfig, seed: int, *,
                progress: Callable | None = None, equal_steps: bool = True,
                linearization_steps: int | None = None, targets=None) -> dict[str, Linearized]:
    """Every recipe from the same seed and data; recipes with the same stage 1 share one run of it.

    Stage 1 runs over all of ``transfer_batches`` (``targets``: their :func:`teacher_targets`, computed
    here once when not given); the two-stage models continue from its first ``linearization_steps``
    steps (default: all), and the whole run's layers are kept in ``transfer_layers``. With
    ``equal_steps`` a method with a next-token stage but no attention transfer fine-tunes on
    ``finetune_batches`` followed by the first ``linearization_steps`` transfer batches (in the notebook
    the same linearization set, i.e. two passes), so it takes as many optimizer steps, on the same unique
    tokens, as a two-stage method (attention transfer + LoRA). ``transfer_only`` keeps its single stage.
    """
    for p in teacher.parameters():
        p.requires_grad_(False)
    steps = len(transfer_batches) if linearization_steps is None else linearization_steps
    if any(m.attention_transfer for m in recipes.values()) and targets is None:
        targets = teacher_targets(teacher, transfer_batches)
    stage1_cache: dict[tuple[str, int], Linearized] = {}
    results = {}
    for name, method in recipes.items():
        key = method.stage1_key
        if method.attention_transfer and key in stage1_cache:
            cached = stage1_cache[key]
            layers = copy.deepcopy(cached.layers)
            result = Linearized(method, linearize(teacher, layers), layers, list(cached.stage1_losses),
                                stage1_trainable=cached.stage1_trainable, stage1_tokens=cached.stage1_tokens,
                                transfer_layers=cached.transfer_layers, transfer_losses=cached.transfer_losses)
        else:
            result = run_stage1(teacher, method, transfer_batches, config, seed, progress=progress, steps=steps,
                                targets=targets)
            if method.attention_transfer:
                stage1_cache[key] = Linearized(method, result.model, copy.deepcopy(result.layers),
                                               list(result.stage1_losses), stage1_trainable=result.stage1_trainable,
                                               stage1_tokens=result.stage1_tokens,
                                               transfer_layers=result.transfer_layers,
                                               transfer_losses=result.transfer_losses)
        batches = finetune_batches
        if equal_steps and not method.attention_transfer and method.has_stage2:
            batches = torch.cat([finetune_batches, transfer_batches[:steps]])
        results[name] = run_stage2(result, batches, config, seed, progress=progress)
    return results


def perplexity_of(model: nn.Module, batches: torch.Tensor) -> float:
    """exp(mean next-token cross-entropy) over validation batches."""
    return math.exp(mean_nll(model, batches))


# ------------------------------------------------------------------ one seed, every method, every metric


ORDER = ("t2r", "t2r_full", "hedgehog", "lolcats", "window_only", "lora_only", "transfer_only")
#: methods whose recall is measured (the teacher too): the recall claim compares LoLCATs with both T2Rs
RECALL_METHODS = ("lolcats", "t2r", "t2r_full")
#: where the linearization and validation text comes from: the grammar's default corpus, or the teacher's own
#: training mix (its zoo manifest's ``corpus.mix``)
CORPUS_MIXES = ("default", "teacher")


def corpus_kinds(corpus_mix: str, manifest: dict) -> dict | None:
    """The ``kinds`` of :func:`common.tinylm.corpus_tokens` for ``corpus_mix``: ``None`` (the default corpus) or
    the teacher's training mix read from its manifest."""
    if corpus_mix == "default":
        return None
    if corpus_mix == "teacher":
        mix = (manifest.get("corpus") or {}).get("mix")
        if not mix:
            raise ValueError("the checkpoint's manifest records no corpus mix (corpus.mix)")
        return dict(mix)
    raise ValueError(f"corpus_mix must be one of {CORPUS_MIXES}, got {corpus_mix!r}")


def recall_chance() -> float:
    """Accuracy of guessing a colour uniformly: 1 / (number of colours); a model may also answer a non-colour."""
    return 1.0 / len(COLORS)


def run_seed(teacher: nn.Module, recipes: dict[str, Method], data: dict, config: TrainConfig, seed: int, *,
             linearization_steps: int, progress: Callable | None = None) -> dict:
    """Linearize with every recipe at one seed and return that seed's metrics (plain floats and lists).

    ``data`` holds ``transfer`` (the attention-transfer batches; the first ``linearization_steps`` are
    the linearization set every next-token stage uses), ``val`` (validation batches) and ``recall``
    (``(tokens, positions, answers)``). Returned: ``ppl``, ``gap_closed`` and ``recall`` per method
    (``t2r_best`` = the T2R variant with the lower perplexity, its recall the higher of the two),
    ``steps``, ``stage1_fraction``/``stage2_fraction``, ``tokens_stage1``/``tokens_stage2`` per method, and
    for ``hedgehog`` and ``lolcats`` the per-layer stage-1 MSE on the validation batches both after
    ``linearization_steps`` transfer steps (``mse_short``, what their LoRA stage starts from) and after the
    whole transfer run (``mse``), the window-over-linear ratios and ``max_ratio``.
    """
    transfer, val = data["transfer"], data["val"]
    lin = transfer[:linearization_steps]
    targets = teacher_targets(teacher, transfer)
    results = run_methods(teacher, recipes, transfer, lin, config, seed, progress=progress,
                          linearization_steps=linearization_steps, targets=targets)
    del targets
    out: dict = {"ppl": {"teacher": perplexity_of(teacher, val)},
                 "recall": {"teacher": recall_accuracy(teacher, *data["recall"])}}
    for name, res in results.items():
        out["ppl"][name] = perplexity_of(res.model, val)
        if name in RECALL_METHODS:
            out["recall"][name] = recall_accuracy(res.model, *data["recall"])
    best = min(("t2r", "t2r_full"), key=out["ppl"].get)
    out["t2r_best_is_full"] = int(best == "t2r_full")
    out["ppl"]["t2r_best"] = out["ppl"][best]
    out["recall"]["t2r_best"] = max(out["recall"]["t2r"], out["recall"]["t2r_full"])
    out["gap_closed"] = {n: gap_closed(p, out["ppl"]["t2r_best"], out["ppl"]["teacher"]) for n, p in out["ppl"].items()}
    for key in ("steps", "stage1_fraction", "stage2_fraction", "stage1_tokens", "stage2_tokens"):
        out[key] = {n: getattr(r, key) for n, r in results.items()}
    val_targets = teacher_targets(teacher, val)
    mse, short = {}, {}
    for name in ("hedgehog", "lolcats"):
        mse[name] = stage_one_mse(None, results[name].transfer_layers, None, targets=val_targets).tolist()
        short[name] = stage_one_mse(None, results[name].layers, None, targets=val_targets).tolist()
    out["mse"], out["mse_short"] = mse, short
    out["mse_ratio"] = [a / b for a, b in zip(mse["lolcats"], mse["hedgehog"], strict=True)]
    out["mse_short_ratio"] = [a / b for a, b in zip(short["lolcats"], short["hedgehog"], strict=True)]
    out["max_ratio"] = max(out["mse_ratio"])
    out["transfer_steps"] = len(results["lolcats"].transfer_losses)
    out["stage2_losses"] = {n: r.stage2_losses for n, r in results.items()}
    out["models"] = {n: r.model for n, r in results.items()}
    return out


def across_seeds(runs: list[dict]) -> dict:
    """Per-seed arrays of :func:`run_seed` outputs: ``{"ppl.<method>": [...], "gap_closed.<method>": [...],
    "recall.<method>": [...], "mse.<method>.layer<l>": [...], "mse_ratio.layer<l>": [...], "max_ratio": [...], ...}``."""
    out: dict[str, list] = {}
    for run in runs:
        for group in ("ppl", "gap_closed", "recall"):
            for name, value in run[group].items():
                out.setdefault(f"{group}.{name}", []).append(value)
        for group in ("mse", "mse_short"):
            for name, values in run[group].items():
                for layer, value in enumerate(values):
                    out.setdefault(f"{group}.{name}.layer{layer}", []).append(value)
        for group in ("mse_ratio", "mse_short_ratio"):
            for layer, value in enumerate(run[group]):
                out.setdefault(f"{group}.layer{layer}", []).append(value)
        out.setdefault("max_ratio", []).append(run["max_ratio"])
        out.setdefault("max_short_ratio", []).append(max(run["mse_short_ratio"]))
        out.setdefault("t2r_best_is_full", []).append(run["t2r_best_is_full"])
    return out


def comparisons(arrays: dict) -> dict:
    """The claims' intervals over seeds (paired t, 95%): perplexity differences (positive = the first
    method named is worse), LoLCATs' gap closed, the largest stage-1 MSE ratio, and recall (LoLCATs' own and its
    difference to the better-recalling T2R)."""
    from common.stats import mean_interval, paired_difference

    ppl = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("ppl.")}
    return {
        "hedgehog_minus_lolcats": paired_difference(ppl["hedgehog"], ppl["lolcats"]),
        "t2r_best_minus_hedgehog": paired_difference(ppl["t2r_best"], ppl["hedgehog"]),
        "lora_only_minus_lolcats": paired_difference(ppl["lora_only"], ppl["lolcats"]),
        "window_only_minus_lolcats": paired_difference(ppl["window_only"], ppl["lolcats"]),
        "t2r_best_minus_lolcats": paired_difference(ppl["t2r_best"], ppl["lolcats"]),
        "lolcats_gap_closed": mean_interval(arrays["gap_closed.lolcats"]),
        "max_ratio": mean_interval(arrays["max_ratio"]),
        "recall_lolcats_minus_t2r_best": paired_difference(arrays["recall.lolcats"], arrays["recall.t2r_best"]),
        "recall_lolcats": mean_interval(arrays["recall.lolcats"]),
    }
