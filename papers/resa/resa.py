"""Rectified Sparse Attention (ReSA; Sun et al., arXiv 2506.04108) on the repository's tiny LM.

Long generation with a KV cache is memory-bound: every new token reads all cached keys and values.
**Block-sparse decoding** reads only a few blocks of the cache per step, chosen by a cheap score (the
ReSA/Quest rule, :func:`common.kv_decoding.block_scores`: ``s_j = sum_d max(q_d k^max_{j,d}, q_d k^min_{j,d})``
over per-block key minima and maxima, the last ``local_blocks`` blocks always kept, ``n_keep =
max(ceil(rho n_b), min(n_b, min_blocks))`` blocks in all). Its approximation error does not stay in the
token's output: the new token's keys and values at layers ``l > 0`` are computed from hidden states that
already went through approximate attention, are written to the cache, and every later step reads them.
The paper calls this *KV-cache misalignment*: errors accumulate with the generated length.

**ReSA** (Sec. 2.2) decodes block-sparsely and, every ``f`` tokens, *rectifies*: the last ``f`` tokens
are fed again in one dense forward pass (as in a chunked prefill), their keys and values overwrite the
misaligned entries (:func:`common.kv_decoding.reprefill_last`), and decoding continues sparsely from a
cache that equals the dense one. The error can then only build up within a window of ``f`` tokens;
the extra cost is one dense pass over the cache per ``f`` tokens (:func:`common.kv_decoding.kv_reads_per_step`).

Here the ``f``-th step of each window is a sparse step followed by the rectification of the last ``f``
tokens. Every next-token distribution of ReSA comes from a sparse step (the dense logits of the
re-prefill's last row are discarded), so ReSA is credited only with what the rectified *cache* changes
for the following steps, never with a dense prediction. Official defaults (``ReSA/llm/config.py``): block 16, ratio 0.1, one local block,
``min_block_num`` 16, ``f = 32``; at ``tinylm``'s context of 256 we use block 8, ratio 0.125, one local
block and at least 2 blocks (``min_block_num`` 16 would keep every block of a 256-token context dense).

**Measurements.** All methods decode the *same* token sequence (teacher forcing on a continuation that
dense decoding sampled), so they differ only in their attention: per step, ``KL(p_method || p_dense)``
of the next-token distributions, and the *write-time* KV error of each new cache entry,
``e_t = ||(K, V)_t - (K, V)*_t|| / ||(K, V)*_t||`` over all layers, against the dense cache of the same
tokens (:func:`decode_teacher_forced`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.kv_decoding import SparseDecodingAttention, decode_step, prefill, reprefill_last
from common.stats import Interval
from common.tinylm import corpus_tokens, recall_episodes
from common.tinylm.grammar import binding_words


@dataclass(frozen=True)
class DecodingMethod:
    """One decoding method: the block selector (``dense``, ``quest`` or ``oracle``) and the rectification period.

    ``rectify_every=None`` never rectifies (plain sparse decoding); ReSA is ``quest`` with ``rectify_every=f``.
    """

    name: str
    selector: str = "quest"
    rectify_every: int | None = None
    block_size: int = 8
    sparse_ratio: float = 0.125
    local_blocks: int = 1
    min_blocks: int = 2

    def __post_init__(self):
        if self.rectify_every is not None and self.rectify_every < 1:
            raise ValueError(f"rectify_every must be >= 1 or None, got {self.rectify_every}")

    def attention(self) -> SparseDecodingAttention | None:
        if self.selector == "dense":
            return None
        return SparseDecodingAttention(self.selector, self.block_size, self.sparse_ratio, self.local_blocks,
                                       self.min_blocks)


def standard_methods(f_values, **sparse) -> list[DecodingMethod]:
    """Dense, block-sparse (no rectification), oracle top-k (no rectification) and ReSA for every ``f``."""
    methods = [DecodingMethod("dense", "dense"), DecodingMethod("sparse", "quest", None, **sparse),
               DecodingMethod("oracle", "oracle", None, **sparse)]
    methods += [DecodingMethod(f"resa_f{f}", "quest", int(f), **sparse) for f in f_values]
    return methods


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def make_prompts(n: int, prompt_len: int, random_state: int) -> torch.Tensor:
    """``n`` prompts ``[n, prompt_len]``: consecutive windows of the TinyGrammar corpus stream of seed ``random_state``."""
    if n < 1 or prompt_len < 1:
        raise ValueError(f"need n >= 1 and prompt_len >= 1, got {n}, {prompt_len}")
    return corpus_tokens(n * prompt_len, random_state=random_state).view(n, prompt_len)


@torch.no_grad()
def sample_continuations(model, prompts: torch.Tensor, n_new: int, random_state: int,
                         temperature: float = 1.0) -> torch.Tensor:
    """Dense-decoding samples ``[n, n_new]`` after ``prompts`` (ancestral sampling at ``temperature``)."""
    generator = torch.Generator().manual_seed(int(random_state))
    out = model.generate(prompts, n_new, temperature=temperature, generator=generator)
    return out[:, prompts.shape[1]:]


# --------------------------------------------------------------------------------------------------
# Decoding and errors
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def dense_reference_kv(model, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every layer for ``tokens [B, T]`` from one dense forward pass (the exact cache)."""
    _, qkv = model(tokens, return_qkv=True)
    return [(k, v) for _, k, v in qkv]


def entry_error(cache, reference, position: int) -> torch.Tensor:
    """Relative error ``||(K,V)_p - (K,V)*_p|| / ||(K,V)*_p||`` of cache entry ``p`` over all layers -> ``[B]``."""
    num = den = 0.0
    for layer, (k_ref, v_ref) in enumerate(reference):
        k, v = cache.get(layer)
        for a, b in ((k, k_ref), (v, v_ref)):
            diff = a[:, :, position] - b[:, :, position]
            num = num + diff.pow(2).sum(dim=(1, 2))
            den = den + b[:, :, position].pow(2).sum(dim=(1, 2))
    return (num / den).sqrt()


@torch.no_grad()
def decode_teacher_forced(model, prompt: torch.Tensor, continuation: torch.Tensor, method: DecodingMethod,
                          reference=None, track_kv: bool = True) -> dict:
    """Decode ``continuation [B, G]`` after ``prompt [B, P]`` with ``method``, feeding the given tokens.

    Step 0 is the dense prefill of the prompt (identical for all methods); step ``j = 1..G-1`` feeds
    ``continuation[:, j-1]`` at position ``P + j - 1`` with the method's attention; ReSA rectifies after
    steps ``j = f, 2f, ...`` (re-prefill of the last ``f`` tokens; the step's logits stay the sparse ones).
    Returns ``logits [B, G, V]`` (row ``j`` predicts ``continuation[:, j]``), ``write_error [B, G-1]`` (the
    error of the entry written at step ``j``, before any rectification), ``kept_fraction [G-1]`` (share of
    the cache attended, mean over layers, heads and batch) and ``n_rectifications``. With
    ``track_kv=False`` no KV error is computed (``write_error`` is empty).
    """
    if prompt.shape[0] != continuation.shape[0]:
        raise ValueError("prompt and continuation need the same batch size")
    tokens = torch.cat([prompt, continuation], dim=1)
    p_len, g_len = prompt.shape[1], continuation.shape[1]
    if reference is None and track_kv:
        reference = dense_reference_kv(model, tokens[:, :-1])
    attention = method.attention()
    logits, cache = prefill(model, prompt)
    steps, errors, kept = [logits[:, -1]], [], []
    n_rect = 0
    for j in range(1, g_len):
        calls_before = 0 if attention is None else len(attention.kept_fraction)
        step_logits = decode_step(model, cache, continuation[:, j - 1], attention)
        if track_kv:
            errors.append(entry_error(cache, reference, p_len + j - 1))
        kept.append(1.0 if attention is None else float(np.mean(attention.kept_fraction[calls_before:])))
        f = method.rectify_every
        if f is not None and j % f == 0:
            reprefill_last(model, cache, continuation[:, j - f:j])  # rewrites the cache; logits unused
            n_rect += 1
        steps.append(step_logits)
    return {"logits": torch.stack(steps, dim=1), "write_error": torch.stack(errors, dim=1) if errors else
            torch.zeros(prompt.shape[0], 0), "kept_fraction": np.asarray(kept), "n_rectifications": n_rect}


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last axis (nats), computed in float64."""
    lp = torch.log_softmax(logits_p.double(), dim=-1)
    lq = torch.log_softmax(logits_q.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def bucket_means(values: np.ndarray, n_buckets: int) -> np.ndarray:
    """Mean of ``values [n, L]`` over ``n_buckets`` equal consecutive slices of the last axis -> ``[n, n_buckets]``.

    When ``L`` is not a multiple of ``n_buckets`` the last ``L mod n_buckets`` steps are left out.
    """
    values = np.asarray(values, dtype=float)
    width = values.shape[-1] // n_buckets
    if n_buckets < 1 or width < 1:
        raise ValueError(f"cannot cut {values.shape[-1]} steps into {n_buckets} buckets")
    return values[..., : n_buckets * width].reshape(*values.shape[:-1], n_buckets, width).mean(-1)


def window_maxima(write_error: np.ndarray, f: int) -> np.ndarray:
    """Maximum write error in each complete rectification window (steps ``(w-1)f+1 .. wf``) -> ``[n, n_windows]``."""
    write_error = np.asarray(write_error, dtype=float)
    n_windows = write_error.shape[-1] // f
    if n_windows < 2:
        raise ValueError(f"need at least two windows of f={f} in {write_error.shape[-1]} steps")
    return write_error[..., : n_windows * f].reshape(*write_error.shape[:-1], n_windows, f).max(-1)


# --------------------------------------------------------------------------------------------------
# Recall task (the accuracy claims need a teacher that can recall)
# --------------------------------------------------------------------------------------------------
def recall_prompt_len(n_bindings: int = 2, fmt: str = "tg") -> int:
    """Length of the prefilled prompt of a recall episode: ``<bos>`` and the ``n_bindings`` bindings.

    11 tokens for two bindings in the grammar's format (``box B key C .``), 9 in the one-hop format (``box B C .``).
    """
    return 1 + n_bindings * len(binding_words("0", "red", fmt))


@torch.no_grad()
def recall_accuracy(model, method: DecodingMethod, n: int, distance: int, prompt_len: int | None, random_state: int,
                    n_bindings: int = 2, fmt: str = "tg") -> np.ndarray:
    """Per-episode correctness (0/1) of the recall answer when everything after ``prompt_len`` tokens is decoded.

    Episodes ``box B key C . ... <filler> ? box B key C`` (``fmt="tg"``) or ``box B C . ... ? box B C``
    (``fmt="onehop"``; :func:`common.tinylm.recall_episodes`): the first ``prompt_len`` tokens (by default, ``None``,
    the bindings: :func:`recall_prompt_len`) are prefilled densely, the filler and the query are fed step by step
    with ``method`` (teacher forcing), and the answer is the argmax at the step before it.
    """
    if prompt_len is None:
        prompt_len = recall_prompt_len(n_bindings, fmt)
    tokens, positions, answers = recall_episodes(n, distance, random_state=random_state, n_bindings=n_bindings,
                                                 fmt=fmt)
    if prompt_len >= int(positions.min()):
        raise ValueError(f"prompt_len {prompt_len} must end before the first answer position {int(positions.min())}")
    width = int(positions.max())
    out = decode_teacher_forced(model, tokens[:, :prompt_len], tokens[:, prompt_len:width + 1], method, track_kv=False)
    logits = out["logits"]  # row j predicts token prompt_len + j
    rows = torch.arange(n)
    pred = logits[rows, positions - prompt_len].argmax(-1)
    return (pred == answers).numpy().astype(float)


def accuracy_interval(correct, confidence: float = 0.95) -> Interval:
    """Accuracy ``k / n`` of 0/1 answers with its Wilson score interval (scipy's ``binomtest``).

    Unlike a t-interval over the 0/1 values it does not collapse to a point when every answer is right (32 of 32
    right: [0.89, 1]) or wrong, and it stays inside [0, 1].
    """
    from scipy.stats import binomtest

    correct = _zero_one(correct, "correct")
    k, n = int(correct.sum()), correct.size
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), n, confidence, "wilson")


def paired_accuracy_difference(a, b, confidence: float = 0.95) -> tuple[Interval, int, int]:
    """``acc(a) − acc(b)`` on the same episodes with Agresti & Min's (2005) interval for matched proportions.

    With ``n₁₀`` episodes that only ``a`` answers right and ``n₀₁`` that only ``b`` does, add 1/2 to each cell of
    the paired 2 × 2 table (``ñ = n + 2``, ``p̃₁₀ = (n₁₀ + ½)/ñ``, ``p̃₀₁ = (n₀₁ + ½)/ñ``) and take the Wald interval
    of the adjusted difference,

        (p̃₁₀ − p̃₀₁) ± z · sqrt((p̃₁₀ + p̃₀₁ − (p̃₁₀ − p̃₀₁)²) / ñ),

    clipped to [−1, 1]; it keeps a width when no episode disagrees, where a t-interval of the 0/1 differences is
    [0, 0]. The estimate is the observed difference ``(n₁₀ − n₀₁) / n``. Returns ``(interval, n₁₀, n₀₁)``.
    """
    from scipy.stats import norm

    a, b = _zero_one(a, "a"), _zero_one(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must answer the same episodes, got {a.size} and {b.size}")
    n10, n01, n = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum()), a.size
    m = n + 2
    p10, p01 = (n10 + 0.5) / m, (n01 + 0.5) / m
    half = float(norm.ppf((1 + confidence) / 2)) * np.sqrt((p10 + p01 - (p10 - p01) ** 2) / m)
    lo, hi = max(-1.0, p10 - p01 - half), min(1.0, p10 - p01 + half)
    return Interval((n10 - n01) / n, float(lo), float(hi), n, confidence, "agresti-min"), n10, n01


def _zero_one(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.size == 0 or not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a non-empty array of 0/1 answers")
    return values


def recall_chance(n_colors: int | None = None) -> float:
    """Chance accuracy of a recall answer: one colour out of the grammar's colours."""
    if n_colors is None:
        from common.tinylm.grammar import COLORS

        n_colors = len(COLORS)
    return 1.0 / n_colors


# --------------------------------------------------------------------------------------------------
# The experiment of claims 3 and 4
# --------------------------------------------------------------------------------------------------
def run_alignment_experiment(model, methods: list[DecodingMethod], seeds, n_prompts: int, prompt_len: int,
                             n_new: int, progress=None) -> dict:
    """For every seed: prompts and one dense continuation each; then every method decodes all of them.

    The prompts of all seeds form one batch (rows are independent), decoded by each method with teacher
    forcing. Returns ``{method: {"kl": [n, G], "write_error": [n, G-1], "kept_fraction": [G-1]}}`` with
    ``n = len(seeds) * n_prompts`` rows and ``"seed_of_row"`` (``[n]``). ``KL`` is to dense decoding.
    """
    if methods[0].selector != "dense" or methods[0].rectify_every is not None:
        raise ValueError("the first method must be dense decoding (the reference of the KL)")
    prompts, continuations, seed_of_row = [], [], []
    for seed in seeds:
        p = make_prompts(n_prompts, prompt_len, seed)
        prompts.append(p)
        continuations.append(sample_continuations(model, p, n_new, seed))
        seed_of_row += [seed] * n_prompts
    prompts, continuation = torch.cat(prompts), torch.cat(continuations)
    reference = dense_reference_kv(model, torch.cat([prompts, continuation], dim=1)[:, :-1])
    out, dense_logits = {}, None
    for method in (methods if progress is None else progress(methods)):
        res = decode_teacher_forced(model, prompts, continuation, method, reference)
        if dense_logits is None:
            dense_logits = res["logits"]
        out[method.name] = {"kl": kl_divergence(res["logits"], dense_logits).numpy(),
                            "write_error": res["write_error"].numpy(), "kept_fraction": res["kept_fraction"]}
    out["seed_of_row"] = np.asarray(seed_of_row)
    return out


def per_seed_means(values: np.ndarray, seed_of_row: np.ndarray) -> list[float]:
    """Mean of ``values [n]`` within each seed (in order of first appearance)."""
    seeds = list(dict.fromkeys(seed_of_row.tolist()))
    return [float(np.mean(values[seed_of_row == s])) for s in seeds]
