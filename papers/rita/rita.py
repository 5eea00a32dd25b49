"""RITA (Liang et al., SIGMOD 2024): group attention for time-series Transformers.

RITA cuts a time series into windows (tokens) and encodes them with a Transformer whose
attention is **group attention** (:func:`common.attention.group_attention`): the keys of a
layer are clustered by k-means into N groups, every key is replaced by its group's centroid,
and the softmax is computed against the N centroids with a count-weighted normaliser,

    out_i = Σ_g exp(q_iᵀc_g/√d)·(Σ_{j∈g} v_j) / Σ_g cnt_g·exp(q_iᵀc_g/√d),

O(n·N·d) instead of O(n²·d). Its guarantee: if every key lies within r of its centroid and
every query has norm at most R, each attention weight is within a factor exp(2·R·r/√d) of
the exact one, so r ≤ ln(ε)·√d/(2R) keeps every weight ratio in [1/ε, ε]; in particular the
result is exact when every key equals its centroid.

RITA's **adaptive scheduler** picks N during training. The official rule (``code/utils.py::
group_measure`` and ``update_N_auto_once`` of ljmzlh/RITA) is **merge only**: per (sequence, head)
it counts the centroids that have an earlier centroid within squared distance 4·r², with
r² = (ln ε)²/(4·mean‖q‖²) (mean over the queries; the official threshold has no 1/√d even
though the scores are divided by √d), and moves N towards N − mean(merges) with momentum
(N ← a·N + (1 − a)·N_new, a = 0.5), never below N_min (10 in the official code). Its split
count (groups whose mean squared key-to-centroid distance, ``compatness = compatness_sum /
cnt`` in ``grouping.py::kmeans_gpu``, exceeds r²) is computed but the line that would use it is
commented out. :class:`AdaptiveGroupScheduler` implements that rule (``rule="official"``) and two
variants of ours, both with splits and merges and the threshold of the guarantee
r = ln(ε)·√d/(2R): ``rule="rms"`` (R and the group radii as root mean squares, the official
statistics) and ``rule="bound"`` (the bound's own maxima: largest query norm, largest radius).

This module supplies the replication's pieces: :func:`make_synhar` (a procedural
human-activity-like classification task: class-specific motif bursts with jitter, drift and
noise), :class:`TimeSeriesEncoder` (a small windowed Transformer with exact, fixed-N group or
adaptive group attention), :func:`train` and :func:`accuracy`, and
:func:`attention_time_benchmark` (attention-only timings with :mod:`common.timing`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from common import attention as at
from common import timing

MOTIFS = ("sine", "fast_sine", "square", "chirp_up", "chirp_down", "sawtooth")


# ------------------------------------------------------------------ data: SynHAR


def motif(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """One burst of a motif, with jittered frequency (±15%) and phase, and a Hann envelope."""
    t = np.arange(length, dtype=np.float64)
    jitter = rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "sine":
        wave = np.sin(2 * np.pi * t / 24 * jitter + phase)
    elif kind == "fast_sine":
        wave = np.sin(2 * np.pi * t / 8 * jitter + phase)
    elif kind == "square":
        wave = np.sign(np.sin(2 * np.pi * t / 16 * jitter + phase))
    elif kind == "chirp_up":
        wave = np.sin(2 * np.pi * (t / 30 + t**2 / (2 * length * 8)) * jitter + phase)
    elif kind == "chirp_down":
        wave = np.sin(2 * np.pi * (t / 8 - t**2 / (2 * length * 12)) * jitter + phase)
    elif kind == "sawtooth":
        wave = 2 * ((t / 14 * jitter + phase / (2 * np.pi)) % 1.0) - 1
    else:
        raise ValueError(f"unknown motif {kind!r}; motifs: {MOTIFS}")
    return wave * np.hanning(length)


def make_synhar(n_series: int, length: int, rng: np.random.Generator, *, n_channels: int = 3,
                n_class_bursts: int = 3, n_distractors: int = 2, noise: float = 0.35,
                drift: float = 0.03, amplitude: tuple = (0.6, 1.2)) -> tuple[np.ndarray, np.ndarray]:
    """A SynHAR data set: ``(X, y)`` with X ``(n_series, n_channels, length)`` float32, y in 0..5.

    Each series is a random-walk drift plus Gaussian noise, with ``n_class_bursts`` bursts of
    its class's motif and ``n_distractors`` bursts of other classes' motifs, each 60 to 140
    samples long at a random position and channel with amplitude 0.6 to 1.2. The class is
    the motif that occurs most often, so a model must find and compare bursts along the
    whole series.
    """
    if n_distractors >= n_class_bursts:
        raise ValueError("the class motif must occur more often than the distractors")
    if length < 200:
        raise ValueError(f"series must be at least 200 samples long, got {length}")
    n_classes = len(MOTIFS)
    y = rng.integers(0, n_classes, size=n_series)
    X = np.empty((n_series, n_channels, length))
    for i in range(n_series):
        series = np.cumsum(rng.normal(0, drift, size=(n_channels, length)), axis=1)
        series += rng.normal(0, noise, size=(n_channels, length))
        others = [c for c in range(n_classes) if c != y[i]]
        kinds = [y[i]] * n_class_bursts + list(rng.choice(others, size=n_distractors, replace=False))
        for kind in kinds:
            burst_len = int(rng.integers(60, 141))
            start = int(rng.integers(0, length - burst_len))
            channel = int(rng.integers(0, n_channels))
            series[channel, start:start + burst_len] += rng.uniform(*amplitude) * motif(MOTIFS[kind], burst_len, rng)
        X[i] = series
    return X.astype(np.float32), y.astype(np.int64)


def windows(X: np.ndarray | torch.Tensor, window: int) -> torch.Tensor:
    """``(N, C, T)`` series as ``(N, T // window, C·(window + 1))`` tokens (non-overlapping windows).

    Each channel of a window contributes its ``window`` samples minus their mean (the shape,
    free of the slow drift) followed by that mean (the level).
    """
    X = torch.as_tensor(X)
    n, c, t = X.shape
    if t % window:
        raise ValueError(f"the window ({window}) must divide the length ({t})")
    w = X.reshape(n, c, t // window, window)
    level = w.mean(-1, keepdim=True)
    w = torch.cat([w - level, level], dim=-1)
    return w.permute(0, 2, 1, 3).reshape(n, t // window, c * (window + 1))


# ------------------------------------------------------------------ the adaptive scheduler


RULES = ("official", "rms", "bound")


@dataclass
class AdaptiveGroupScheduler:
    """RITA's dynamic choice of the number of groups N, one value per layer.

    ``epsilon`` is the error target: every attention weight within a factor ε of exact.
    After each batch, :meth:`observe` counts per (sequence, head) the groups to split and the
    centroid pairs to merge, and N moves towards its new value with momentum ``momentum``:

    - ``rule="official"`` (ljmzlh/RITA ``update_N_auto_once``): merges only, N_new = N − mean(merges);
      a centroid merges when an earlier centroid lies within 2r, r² = (ln ε)²/(4·mean‖q‖²) (no
      1/√d, as in the official code); splits (mean squared distance to the centroid above r²) are
      counted and reported but not applied (the official split line is commented out);
    - ``rule="rms"`` (ours): N_new = N + mean(splits) − mean(merges) with the guarantee's threshold
      r = ln(ε)/(2·scale·R), R the root-mean-square query norm and the group radius the root mean
      square key-to-centroid distance (no guarantee);
    - ``rule="bound"`` (ours): as ``rms`` with the bound's own maxima (largest query norm, largest
      key-to-centroid distance), which is what the guarantee needs.

    The official code updates N once every ``N_sample`` = 3000 training samples from the counts
    accumulated since the last update; here N is updated after every batch (a ci run has a few
    thousand samples).
    """

    n_tokens: int
    n_layers: int
    epsilon: float = 2.0
    n_init: int | None = None
    n_min: int = 2
    momentum: float = 0.5
    rule: str = "bound"
    n: list = field(default_factory=list)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.epsilon <= 1:
            raise ValueError(f"epsilon bounds a ratio of weights and must exceed 1, got {self.epsilon}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        start = self.n_init if self.n_init is not None else max(self.n_min, self.n_tokens // 10)
        self.n = [float(start)] * self.n_layers

    def n_groups(self, layer: int) -> int:
        return int(min(self.n_tokens, max(self.n_min, round(self.n[layer]))))

    def thresholds(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """The distance threshold r per (sequence, head) (``(...,)``) of this rule."""
        if self.rule == "official":
            return math.log(self.epsilon) / (2 * q.square().sum(-1).mean(-1).sqrt())
        if self.rule == "rms":
            return math.log(self.epsilon) / (2 * scale * q.square().sum(-1).mean(-1).sqrt())
        return at.radius_for_ratio(q, self.epsilon, scale=scale)

    def observe(self, layer: int, q: torch.Tensor, k: torch.Tensor, grouping: at.Grouping,
                scale: float | None = None) -> dict:
        """Update N of ``layer`` from one batch's queries, keys and grouping (``(..., n, d)``)."""
        with torch.no_grad():
            q, k = q.detach().double(), k.detach().double()
            scale = at.default_scale(q.shape[-1]) if scale is None else scale
            threshold = self.thresholds(q, scale)                                   # (...,)
            if self.rule == "bound":
                radius = at.group_radius(k, grouping)                               # (..., N)
            else:   # root mean square key-to-centroid distance per group (official "compatness", rooted)
                centroids_k, counts = at.group_means(k, grouping.assignment, grouping.n_groups)
                member = torch.gather(centroids_k, -2, grouping.assignment.unsqueeze(-1).expand(k.shape))
                sq = (k - member).square().sum(-1)
                sums = torch.zeros_like(counts).scatter_add(-1, grouping.assignment, sq)
                radius = (sums / counts.clamp_min(1)).sqrt()
            present = grouping.counts > 0
            splits = ((radius > threshold.unsqueeze(-1)) & present).sum(-1).double()
            centroids = grouping.centroids.double()
            dist = torch.cdist(centroids, centroids)
            far = torch.finfo(dist.dtype).max
            dist = dist.masked_fill(~(present.unsqueeze(-1) & present.unsqueeze(-2)), far)
            dist = dist + torch.triu(torch.full_like(dist, far), diagonal=0)         # each pair once, no self
            merges = (dist.amin(-1) < 2 * threshold.unsqueeze(-1)).sum(-1).double()
            applied_splits = 0.0 if self.rule == "official" else float(splits.mean())
            target = self.n[layer] + applied_splits - float(merges.mean())
            new = self.momentum * self.n[layer] + (1 - self.momentum) * target
            self.n[layer] = float(min(self.n_tokens, max(self.n_min, new)))
        return {"splits": float(splits.mean()), "merges": float(merges.mean()), "n_groups": grouping.n_groups}


# ------------------------------------------------------------------ the encoder


class Attention(nn.Module):
    """Multi-head self-attention whose core is exact, fixed-N group or adaptive group attention."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, core) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return self.out(core(q, k, v).transpose(1, 2).reshape(b, n, d))


class TimeSeriesEncoder(nn.Module):
    """Windowed Transformer encoder for classification (pre-LayerNorm, mean pooling).

    ``attention`` is ``"exact"``, ``"group"`` (fixed ``n_groups``) or ``"adaptive"`` (N from a
    :class:`AdaptiveGroupScheduler`). With ``monitor=True`` every layer also computes the exact
    attention of its batch (without gradient) and appends error statistics to ``self.log``.
    """

    def __init__(self, d_in: int, n_tokens: int, n_classes: int, *, d_model: int = 32, n_heads: int = 2,
                 n_layers: int = 2, d_ff: int = 64, attention: str = "exact", n_groups: int = 16,
                 scheduler: AdaptiveGroupScheduler | None = None, n_iter: int = 3, generator=None):
        super().__init__()
        if attention not in ("exact", "group", "adaptive"):
            raise ValueError(f"attention must be 'exact', 'group' or 'adaptive', got {attention!r}")
        if attention == "adaptive" and scheduler is None:
            raise ValueError("adaptive group attention needs a scheduler")
        self.attention, self.n_groups, self.scheduler, self.n_iter = attention, n_groups, scheduler, n_iter
        self.generator = generator
        self.embed = nn.Linear(d_in, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(n_tokens, d_model, generator=generator))
        self.norms1 = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.attns = nn.ModuleList(Attention(d_model, n_heads) for _ in range(n_layers))
        self.norms2 = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.ffns = nn.ModuleList(nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
                                  for _ in range(n_layers))
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, n_classes))
        self.monitor = False
        self.monitor_sequences: int | None = None
        self.log: list[dict] = []

    def set_attention(self, attention: str, *, n_groups: int | None = None,
                      scheduler: AdaptiveGroupScheduler | None = None) -> TimeSeriesEncoder:
        """Switch the attention core (the parameters are shared by every core); returns ``self``."""
        if attention not in ("exact", "group", "adaptive"):
            raise ValueError(f"attention must be 'exact', 'group' or 'adaptive', got {attention!r}")
        if attention == "adaptive" and scheduler is None:
            raise ValueError("adaptive group attention needs a scheduler")
        self.attention = attention
        self.n_groups = self.n_groups if n_groups is None else n_groups
        self.scheduler = scheduler
        return self

    def _core(self, layer: int):
        def core(q, k, v):
            if self.attention == "exact":
                return nn.functional.scaled_dot_product_attention(q, k, v)
            n_groups = self.n_groups if self.attention == "group" else self.scheduler.n_groups(layer)
            out, grouping = at.group_attention(q, k, v, n_groups=n_groups, n_iter=self.n_iter,
                                               generator=self.generator, return_grouping=True)
            if self.monitor:
                m = self.monitor_sequences or q.shape[0]
                sub = at.Grouping(grouping.assignment[:m], grouping.centroids[:m], grouping.counts[:m])
                self.log.append({"layer": layer, **group_error_stats(q[:m], k[:m], v[:m], sub, out[:m])})
            if self.attention == "adaptive" and self.training:
                self.scheduler.observe(layer, q, k, grouping)
            return out
        return core

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        for layer, (n1, attn, n2, ffn) in enumerate(zip(self.norms1, self.attns, self.norms2, self.ffns, strict=True)):
            x = x + attn(n1(x), self._core(layer))
            x = x + ffn(n2(x))
        return self.head(x.mean(1))


def group_error_stats(q, k, v, grouping: at.Grouping, out: torch.Tensor, epsilon: float | None = None) -> dict:
    """Errors of one batch of group attention against exact attention (no gradient).

    ``max_log_ratio``: max over the batch of |log(Ã_ij/A_ij)| (what ε bounds);
    ``rel_out_error``: ‖GA(Q,K,V) − Attn(Q,K,V)‖_F / ‖Attn(Q,K,V)‖_F; ``bound``: the guarantee's
    2·max‖q‖·max radius/√d; ``n_groups`` and ``n_tokens``.
    """
    with torch.no_grad():
        q, k, v, out = (t.detach().double() for t in (q, k, v, out))
        exact = at.softmax_attention_matrix(q, k)
        approx = at.group_attention_matrix(q, k, grouping)
        return {
            "max_log_ratio": float(at.max_log_ratio(approx, exact)),
            "rel_out_error": float(at.relative_frobenius_error(out, exact @ v)),
            "bound": float(at.group_error_bound(q, k, grouping).max()),
            "n_groups": grouping.n_groups,
            "n_tokens": k.shape[-2],
        }


# ------------------------------------------------------------------ training and evaluation


def train(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
          lr: float, generator: torch.Generator, on_batch=None) -> list[float]:
    """AdamW with a linear learning-rate decay; returns the mean loss of each epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tokens) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(tokens), generator=generator)
        total = 0.0
        for start in range(0, len(tokens), batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(tokens[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            if on_batch is not None:
                on_batch(model)
        losses.append(total / len(tokens))
    return losses


def accuracy(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(tokens[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
                      for i in range(0, len(tokens), batch_size))
    return correct / len(tokens)


# ------------------------------------------------------------------ experiments


def compare_attention(train_tokens: torch.Tensor, train_labels: torch.Tensor, test_tokens: torch.Tensor,
                      test_labels: torch.Tensor, *, modes=("exact", "group"), n_seeds: int, seed: int = 0,
                      n_groups: int = 16, epochs: int = 1, batch_size: int = 32, lr: float = 0.005,
                      log=print) -> dict:
    """Test accuracy of each attention mode over ``n_seeds`` seeds, paired by seed.

    For a given seed every mode starts from the same initialisation and sees the batches in the
    same order (and group attention's k-means draws from a generator with that seed); seeds
    differ in initialisation, batch order and k-means draws. Returns ``{"accuracy": {mode: [per
    seed]}, "seconds": {mode: total training seconds}}``.
    """
    import time

    accuracies = {mode: [] for mode in modes}
    seconds = {mode: 0.0 for mode in modes}
    for rep in range(n_seeds):
        run_seed = seed * 100 + rep
        for mode in modes:
            torch.manual_seed(run_seed)
            model = TimeSeriesEncoder(train_tokens.shape[-1], train_tokens.shape[1], len(MOTIFS), attention=mode,
                                      n_groups=n_groups, generator=torch.Generator().manual_seed(run_seed))
            start = time.perf_counter()
            losses = train(model, train_tokens, train_labels, epochs=epochs, batch_size=batch_size, lr=lr,
                           generator=torch.Generator().manual_seed(run_seed))
            seconds[mode] += time.perf_counter() - start
            accuracies[mode].append(accuracy(model, test_tokens, test_labels))
            if log is not None:
                log(f"seed {rep} {mode:5s}: final loss {losses[-1]:.3f}, test accuracy {accuracies[mode][-1]:.4f}")
    return {"accuracy": accuracies, "seconds": seconds}


def scheduler_study(train_tokens: torch.Tensor, train_labels: torch.Tensor, test_tokens: torch.Tensor,
                    test_labels: torch.Tensor, *, rules=RULES, epsilon: float = 2.0, pretrain_steps: int,
                    steps: int, batch_size: int = 32, lr: float = 0.005, n_min: int = 2, seed: int = 0,
                    monitor_sequences: int | None = None) -> dict:
    """The adaptive scheduler of each rule, measured on an encoder that has learned the task.

    The encoder is first trained with exact attention for ``pretrain_steps`` batches (the first
    ``pretrain_steps·batch_size`` series); then, for each rule, a copy continues for ``steps``
    batches (the next series, the same for every rule) with adaptive group attention, starting
    at N = n/10, while every batch and layer is compared with exact attention. Returns
    ``{"pretrain_accuracy", "logs": {rule: DataFrame}, "accuracy": {rule: test accuracy}}``; each
    log row is one (batch, layer) with ``max_log_ratio``, ``rel_out_error``, ``bound``,
    ``n_groups``, ``N_over_n`` and ``within_target`` (max log ratio ≤ ln ε).
    """
    import copy

    import pandas as pd

    n_pre, n_post = pretrain_steps * batch_size, steps * batch_size
    if n_pre + n_post > len(train_tokens):
        raise ValueError(f"need {n_pre + n_post} training series, got {len(train_tokens)}")
    n_tokens, n_layers = train_tokens.shape[1], 2
    torch.manual_seed(seed)
    model = TimeSeriesEncoder(train_tokens.shape[-1], n_tokens, len(MOTIFS), n_layers=n_layers, attention="exact",
                              generator=torch.Generator().manual_seed(seed))
    if pretrain_steps:
        train(model, train_tokens[:n_pre], train_labels[:n_pre], epochs=1, batch_size=batch_size, lr=lr,
              generator=torch.Generator().manual_seed(seed))
    result = {"pretrain_accuracy": accuracy(model, test_tokens, test_labels), "logs": {}, "accuracy": {}}
    tokens, labels = train_tokens[n_pre:n_pre + n_post], train_labels[n_pre:n_pre + n_post]
    for rule in rules:
        scheduler = AdaptiveGroupScheduler(n_tokens, n_layers, epsilon=epsilon, rule=rule, n_min=n_min)
        adaptive = copy.deepcopy(model).set_attention("adaptive", scheduler=scheduler)
        adaptive.generator = torch.Generator().manual_seed(seed + 1)
        adaptive.monitor, adaptive.monitor_sequences, adaptive.log = True, monitor_sequences, []
        train(adaptive, tokens, labels, epochs=1, batch_size=batch_size, lr=lr,
              generator=torch.Generator().manual_seed(seed + 1))
        adaptive.monitor = False
        log = pd.DataFrame(adaptive.log)
        log["batch"] = np.repeat(np.arange(len(log) // n_layers), n_layers)
        log["within_target"] = log["max_log_ratio"] <= math.log(epsilon)
        log["N_over_n"] = log["n_groups"] / log["n_tokens"]
        result["logs"][rule] = log
        result["accuracy"][rule] = accuracy(adaptive, test_tokens, test_labels)
    return result


# ------------------------------------------------------------------ attention-only timing


def attention_time_benchmark(lengths, *, n_groups: int, heads: int = 2, d: int = 32, repeats: int = 7,
                             warmup: int = 2, threads: int | None = 1, seed: int = 0) -> list[dict]:
    """Median times of exact and group attention (grouping included) on random float32 inputs."""
    rows = []
    for n in lengths:
        generator = torch.Generator().manual_seed(seed + n)
        q, k, v = (torch.randn(1, heads, n, d, generator=generator) for _ in range(3))
        group_gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            result = timing.compare({
                "exact": lambda q=q, k=k, v=v: at.softmax_attention(q, k, v),
                "group": lambda q=q, k=k, v=v, g=group_gen: at.group_attention(q, k, v, n_groups=n_groups, generator=g),
            }, repeats=repeats, warmup=warmup, threads=threads)
        rows.append({"n": n, "exact_ms": 1e3 * result.timings["exact"].median,
                     "group_ms": 1e3 * result.timings["group"].median,
                     "ratio": result.ratio("exact", "group"), "ratio_iqr": result.ratio_iqr("exact", "group"),
                     "flop_ratio": at.attention_flops("exact", n, n, d, d)
                     / at.attention_flops("group", n, n, d, d, n_groups=n_groups)})
    return rows
