"""NADO: controllable generation with a neurally-decomposed oracle (Meng, Lu, Peng, Chang, NeurIPS 2022).

Setting. A frozen base language model ``p(x_t | x_<t)`` and a sequence-level boolean oracle ``C(x)``. The
target is the constrained distribution ``p(x | C) ∝ p(x) C(x)``. NADO decomposes the oracle into the
token-level values (the paper's Sec. 3, "R^C")

    R^C(x_<=t) = P_{x ~ p}(C(x) = 1 | x_<=t),                                                   (def. of R^C)
    R^C(x_<=t) = sum_{x_{t+1}} p(x_{t+1} | x_<=t) R^C(x_<=t+1),   R^C(x) = C(x) at the end,   (consistency)

and samples token by token from the closed-form solution of its posterior-regularised objective

    q(x_t | x_<t) = p(x_t | x_<t) R^C(x_<=t) / R^C(x_<t),                                      (closed form)

which is normalised exactly when ``R^C`` is consistent and then gives ``q(x) = p(x | C)``. With an
approximate ``R`` the official code renormalises, ``q ∝ p(x_t | x_<t) R(x_<=t)`` (``log_softmax`` of
``log p + log sigmoid(r)``); so do we. ``R`` is a small network on the frozen base model's hidden states
that outputs, at position ``t``, one logit ``r_t[v] = logit R(x_<=t, v)`` per candidate next token ``v``
(``modeling_cdgpt.CDGPT2LMHeadModel``: ``emb_proj`` + a GPT-2 + a zero-initialised ``lm_head``, so that
``q = p`` before training). It is trained on samples of ``p`` labelled by ``C``: a binary cross-entropy at
every prefix (``C(x)`` is the label of every ``x_<=t`` of ``x``), plus the consistency regulariser, a
Bernoulli KL between the amortised value ``R(x_<=t+1)`` and its one-step expectation
``sum_v p(v | x_<=t+1) R(x_<=t+1, v)``.

Baselines, all on the same base samples, prompts, steps and seeds:

* **base**: sample ``p``;
* **rejection**: sample ``p`` and keep what ``C`` accepts, exact samples of ``p(. | C)`` (the gold standard);
* **FUDGE** (Yang & Klein 2021): an independent prefix classifier ``f(x_<=t) ≈ P(C | x_<=t)`` over tokens
  (its own embeddings and GRU, no access to the base model, as the official ``fudge_related.Model``'s LSTM),
  trained with the per-prefix cross-entropy only, used as ``q ∝ p(x_t | x_<t) f(x_<=t)``;
* **fine-tuning**: a head of NADO's architecture trained by maximum likelihood on the accepted samples
  (``q ∝ p exp(g)``), i.e. fine-tuning with the same capacity;
* **NADO without the regulariser** (the paper's ablation).

A generated continuation ends at its first ``.`` or special token (or after ``max_new_tokens``): the
oracles of :mod:`common.lm_oracles` read only the first sentence, so ``R^C`` is constant after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.lm_oracles import first_sentence, formality_oracle, keyword_oracle, parse_valid
from common.tinylm import VOCAB, TinyGrammar, load_tinylm
from common.tinylm.grammar import NOUN_FORMS, SPECIALS, word_register
from common.tinylm.model import Block, TinyGPT, TinyGPTConfig

METHODS = ("base", "fudge", "finetune", "nado_noreg", "nado")
LABELS = {"base": "base p", "fudge": "FUDGE", "finetune": "fine-tune (accepted)", "nado_noreg": "NADO w/o reg.",
          "nado": "NADO", "rejection": "rejection p(.|C)"}
_STOP_IDS = {VOCAB.index["."]} | {VOCAB.index[s] for s in SPECIALS}


# --------------------------------------------------------------------------------------------------
# Tasks: prompts and oracles
# --------------------------------------------------------------------------------------------------
@dataclass
class Task:
    """A control task: prompts (word lists, all of one length) and one oracle per prompt.

    ``kind`` is ``"keywords"`` (task A: every keyword lemma in the sentence; the prompt is
    ``keywords : k1 .. kK =>``) or ``"formal"`` (task B: the sentence that starts with the neutral subject
    prompt ``det noun`` is formal by :func:`common.tinylm.grammar.is_formal`).
    """

    kind: str
    prompts: list
    keywords: list

    def oracle(self, i: int):
        return keyword_oracle(self.keywords[i]) if self.kind == "keywords" else formality_oracle(0.8)

    def sentence(self, i: int, continuation) -> list[str]:
        """The first sentence the oracle reads: the continuation for task A, prompt subject + it for task B."""
        prefix = self.prompts[i][1:] if self.kind == "formal" else ()
        return first_sentence(continuation, prefix)

    def satisfied(self, i: int, continuation) -> bool:
        return bool(self.oracle(i)(self.sentence(i, continuation)))

    def valid(self, i: int, continuation) -> bool:
        """Parse validity of the generated sentence (for task A the continuation alone)."""
        return parse_valid(self.sentence(i, continuation))


def make_task(kind: str, n_prompts: int, random_state: int = 0, n_keywords: int = 2) -> Task:
    """``n_prompts`` prompts of task A (``kind="keywords"``, the first ``n_keywords`` lemmas of a grammar
    sentence's subject/verb/object) or task B (``kind="formal"``, a neutral ``det noun`` subject)."""
    if n_prompts <= 0:
        raise ValueError(f"n_prompts must be positive, got {n_prompts}")
    grammar = TinyGrammar(random_state)
    prompts, keywords = [], []
    if kind == "keywords":
        if not 1 <= n_keywords <= 3:
            raise ValueError(f"n_keywords must be 1-3 (subject, verb, object), got {n_keywords}")
        while len(prompts) < n_prompts:
            words = grammar.keywords()
            keys = words[2:words.index("=>")]
            if len(keys) < 3:
                continue
            keys = keys[:n_keywords]
            prompts.append(["<bos>", "keywords", ":"] + keys + ["=>"])
            keywords.append(keys)
    elif kind == "formal":
        while len(prompts) < n_prompts:
            s = grammar.sentence(None, opener_p=0.0, adverb_p=0.0)
            if s[1] in NOUN_FORMS and word_register(s[1]) == "n":
                prompts.append(["<bos>", s[0], s[1]])
                keywords.append([])
    else:
        raise ValueError(f"kind must be 'keywords' or 'formal', got {kind!r}")
    return Task(kind, prompts, keywords)


# --------------------------------------------------------------------------------------------------
# The frozen base model
# --------------------------------------------------------------------------------------------------
class BaseLM:
    """The frozen ``TinyGPT``: hidden states ``h_t`` (after the final LayerNorm) and ``log p(. | x_<=t)``."""

    def __init__(self, model: TinyGPT):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.d_model = model.config.d_model
        self.vocab_size = model.config.vocab_size

    @classmethod
    def load(cls, name: str = "tinylm_ci"):
        model, _, manifest = load_tinylm(name)
        base = cls(model)
        base.checkpoint = name
        base.sha256 = manifest["sha256"]
        return base

    @torch.no_grad()
    def features(self, idx: torch.Tensor, cache=None):
        """``(h [B, T, d], logp [B, T, V])`` for tokens ``idx [B, T]`` (new tokens when ``cache`` is given)."""
        m = self.model
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + idx.shape[1])
        x = m.tok_emb(idx)
        for layer, block in enumerate(m.blocks):
            x, _ = block(x, positions, None if cache is None else (cache, layer))
        h = m.ln_f(x)
        return h, torch.log_softmax(h @ m.output_weight.T, -1)

    def logp_of(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(h @ self.model.output_weight.T, -1)


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------
class TokenHead(nn.Module):
    """NADO's head (``CDGPT2LMHeadModel``): ``emb_proj`` of the base hidden states, ``n_layers`` causal
    transformer blocks, a final LayerNorm and a **zero-initialised** output layer with one logit per
    vocabulary token. Used as ``R``-logits by NADO and as a logit offset by the fine-tuning baseline."""

    def __init__(self, d_in: int, vocab_size: int, d_model: int = 64, n_layers: int = 1, n_heads: int = 4,
                 context: int = 64):
        super().__init__()
        self.config = TinyGPTConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                    context=context)
        self.emb_proj = nn.Linear(d_in, d_model)
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, vocab_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def new_cache(self):
        from common.tinylm.model import KVCache
        return KVCache(len(self.blocks))

    def forward(self, h: torch.Tensor, cache=None) -> torch.Tensor:
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + h.shape[1])
        x = self.emb_proj(h)
        for layer, block in enumerate(self.blocks):
            x, _ = block(x, positions, None if cache is None else (cache, layer))
        return self.out(self.ln(x))


class PrefixClassifier(nn.Module):
    """FUDGE's classifier ``f(x_<=t) = sigmoid(w . tanh(A s_{t-1} + U[x_t]) + c)`` with ``s_{t-1}`` a GRU
    state over the tokens ``x_<t`` (own embeddings; the base model is not used). The candidate token enters
    additively, so all ``V`` candidates of a step cost one outer sum. ``w`` is zero-initialised (``q = p``)."""

    def __init__(self, vocab_size: int, d_model: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.gru = nn.GRU(d_model, d_model, batch_first=True)
        self.state_proj = nn.Linear(d_model, d_model)
        self.cand = nn.Embedding(vocab_size, d_model)
        self.w = nn.Linear(d_model, 1)
        nn.init.zeros_(self.w.weight)
        nn.init.zeros_(self.w.bias)

    def candidate_logits(self, state: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` logits of ``f(x_<=t, v)`` for every candidate ``v`` from states ``[..., d]``."""
        z = torch.tanh(self.state_proj(state)[..., None, :] + self.cand.weight)
        return self.w(z)[..., 0]

    def forward(self, idx: torch.Tensor, hidden=None):
        """``(logits [B, T, V], hidden)``: position ``t`` scores every candidate for ``x_{t+1}`` given ``x_<=t``."""
        states, hidden = self.gru(self.emb(idx), hidden)
        return self.candidate_logits(states), hidden

    def next_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B, T-1]`` logits of ``f(x_<=t+1)`` for the tokens actually present (training: no outer sum)."""
        states, _ = self.gru(self.emb(idx[:, :-1]))
        z = torch.tanh(self.state_proj(states) + self.cand(idx[:, 1:]))
        return self.w(z)[..., 0]


def guide_log_weights(method: str, out: torch.Tensor) -> torch.Tensor:
    """The log factor each method multiplies ``p(x_t | x_<t)`` by: ``log sigmoid`` of an ``R``/classifier
    logit (NADO, FUDGE) or the raw offset (fine-tuning)."""
    if method in ("nado", "nado_noreg", "fudge"):
        return F.logsigmoid(out)
    if method == "finetune":
        return out
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------------------------------
# Sampling and scoring
# --------------------------------------------------------------------------------------------------
def _end_mask(gen: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` True for the tokens of each continuation up to and including its first stop token."""
    stop = torch.zeros_like(gen, dtype=torch.bool)
    for sid in _STOP_IDS:
        stop |= gen == sid
    before = torch.cumsum(stop.int(), 1) - stop.int()  # stops strictly before t
    return before == 0


@torch.no_grad()
def sample(base: BaseLM, prompt_ids: torch.Tensor, max_new_tokens: int, method: str = "base", head=None,
           generator: torch.Generator | None = None) -> dict:
    """Sample continuations of ``prompt_ids [B, P]`` from ``q ∝ p · weight`` (``method``), token by token.

    Returns ``{"tokens" [B, T], "mask" [B, T], "logp" [B, T], "logq" [B, T]}``: the continuation, the
    tokens up to its end, and the per-token log-probabilities under the base model and the sampler.
    """
    if method != "base" and head is None:
        raise ValueError(f"method {method!r} needs its trained head")
    cache = base.model.new_cache()
    h, logp = base.features(prompt_ids, cache)
    hcache, hidden = None, None
    if method in ("nado", "nado_noreg", "finetune"):
        hcache = head.new_cache()
        out = head(h, hcache)[:, -1]
    elif method == "fudge":
        out, hidden = head(prompt_ids)
        out = out[:, -1]
    logp = logp[:, -1]
    toks, lps, lqs = [], [], []
    for step in range(max_new_tokens):
        logq = logp if method == "base" else torch.log_softmax(logp + guide_log_weights(method, out), -1)
        nxt = torch.multinomial(logq.exp(), 1, generator=generator)
        toks.append(nxt[:, 0])
        lps.append(logp.gather(1, nxt)[:, 0])
        lqs.append(logq.gather(1, nxt)[:, 0])
        if step + 1 == max_new_tokens:
            break
        h, logp = base.features(nxt, cache)
        logp = logp[:, -1]
        if hcache is not None:
            out = head(h, hcache)[:, -1]
        elif method == "fudge":
            out, hidden = head(nxt, hidden)
            out = out[:, -1]
    tokens = torch.stack(toks, 1)
    return {"tokens": tokens, "mask": _end_mask(tokens), "logp": torch.stack(lps, 1), "logq": torch.stack(lqs, 1)}


def score(base: BaseLM, prompt_ids: torch.Tensor, tokens: torch.Tensor, method: str = "base", head=None,
          chunk: int = 128) -> dict:
    """Teacher-forced ``log p`` and ``log q`` per token of given continuations (``{"logp", "logq", "mask"}``),
    in chunks of ``chunk`` rows (FUDGE scores every candidate at every position)."""
    if len(tokens) > chunk:
        parts = [score(base, prompt_ids[i:i + chunk], tokens[i:i + chunk], method, head, chunk)
                 for i in range(0, len(tokens), chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    with torch.no_grad():
        full = torch.cat([prompt_ids, tokens], 1)
        h, logp_all = base.features(full)
        P = prompt_ids.shape[1]
        lp = logp_all[:, P - 1:-1]
        if method == "base":
            lq = lp
        else:
            out = head(h)[:, P - 1:-1] if method != "fudge" else head(full)[0][:, P - 1:-1]
            lq = torch.log_softmax(lp + guide_log_weights(method, out), -1)
        pick = tokens[..., None]
        return {"logp": lp.gather(2, pick)[..., 0], "logq": lq.gather(2, pick)[..., 0], "mask": _end_mask(tokens)}


def prompt_tensor(task: Task, indices) -> torch.Tensor:
    return torch.tensor([VOCAB.encode(task.prompts[i]) for i in indices], dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# Training data: samples of the base model labelled by the oracle
# --------------------------------------------------------------------------------------------------
def base_samples(base: BaseLM, task: Task, n_per_prompt: int, max_new_tokens: int, seed: int,
                 batch_size: int = 512) -> dict:
    """``n_per_prompt`` base continuations of every prompt with their oracle labels (NADO's training set)."""
    gen = torch.Generator().manual_seed(seed)
    idx = [i for i in range(len(task.prompts)) for _ in range(n_per_prompt)]
    tokens, prompts = [], []
    for b in range(0, len(idx), batch_size):
        chunk = idx[b:b + batch_size]
        p = prompt_tensor(task, chunk)
        tokens.append(sample(base, p, max_new_tokens, "base", generator=gen)["tokens"])
        prompts.append(p)
    tokens, prompts = torch.cat(tokens), torch.cat(prompts)
    labels = torch.tensor([float(task.satisfied(i, t)) for i, t in zip(idx, tokens, strict=False)])
    return {"prompts": prompts, "tokens": tokens, "labels": labels, "prompt_index": torch.tensor(idx)}


def _training_tensors(base: BaseLM, data: dict):
    full = torch.cat([data["prompts"], data["tokens"]], 1)
    h, _ = base.features(full)
    return full, h


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
def nado_losses(r: torch.Tensor, logp: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor,
                prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NADO's two terms on a batch (official ``CDGPT2LMHeadModel.forward``).

    ``r [B, L, V]`` are the head's ``R``-logits at every position of ``tokens [B, L]`` (prompt +
    continuation), ``logp [B, L, V]`` the base log-probabilities, ``labels [B]`` the oracle values.

    * cross-entropy: ``-[C log R(x_<=t) + (1 - C) log(1 - R(x_<=t))]`` at every prefix of the continuation
      up to its end, with ``R(x_<=t) = sigmoid(r_{t-1}[x_t])``;
    * regulariser (consistency): the Bernoulli KL from ``E = sum_v p(v | x_<=t) sigmoid(r_t[v])`` to
      ``R(x_<=t)``, at every prefix that does not end the continuation (both terms get gradients, as in the
      official code).

    Returns the two means (over their masks).
    """
    P = prompt_len
    gen = tokens[:, P:]
    mask = _end_mask(gen).float()                                  # [B, T]
    amort = r[:, P - 1:-1].gather(2, gen[..., None])[..., 0]       # logit R(x_<=t) for t = P .. L-1
    y = labels[:, None].expand_as(amort)
    ce = F.binary_cross_entropy_with_logits(amort, y, reduction="none")
    ce = (ce * mask).sum() / mask.sum().clamp_min(1)
    # consistency at prefixes x_<=t that continue (not the stop token, not the last position)
    expect = (logp[:, P:].exp() * torch.sigmoid(r[:, P:])).sum(-1)  # E[R(x_<=t+1)] for t = P .. L-1
    expect = expect[:, :-1].clamp(1e-6, 1 - 1e-6)
    a = amort[:, :-1]
    cont = _end_mask(gen)[:, :-1] & ~_is_stop(gen[:, :-1])
    kl = expect * (expect.log() - F.logsigmoid(a)) + (1 - expect) * ((1 - expect).log() - F.logsigmoid(-a))
    cont = cont.float()
    reg = (kl * cont).sum() / cont.sum().clamp_min(1)
    return ce, reg


def _is_stop(t: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(t, dtype=torch.bool)
    for sid in _STOP_IDS:
        out |= t == sid
    return out


def fudge_loss(next_logits: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """FUDGE's per-prefix cross-entropy ``-[C log f(x_<=t) + (1-C) log(1 - f(x_<=t))]`` (no regulariser).

    ``next_logits [B, L-1]`` are the classifier's logits of the prefixes ``x_<=1 .. x_<=L-1``
    (:meth:`PrefixClassifier.next_logits`)."""
    P = prompt_len
    gen = tokens[:, P:]
    mask = _end_mask(gen).float()
    z = next_logits[:, P - 1:]
    ce = F.binary_cross_entropy_with_logits(z, labels[:, None].expand_as(z), reduction="none")
    return (ce * mask).sum() / mask.sum().clamp_min(1)


def finetune_loss(g: torch.Tensor, logp: torch.Tensor, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Negative log-likelihood of accepted continuations under ``q ∝ p exp(g)`` (fine-tuning baseline)."""
    P = prompt_len
    gen = tokens[:, P:]
    mask = _end_mask(gen).float()
    logq = torch.log_softmax(logp[:, P - 1:-1] + g[:, P - 1:-1], -1).gather(2, gen[..., None])[..., 0]
    return -(logq * mask).sum() / mask.sum().clamp_min(1)


class _Adam:
    """Plain Adam (Kingma & Ba 2015, Algorithm 1; betas 0.9/0.999, eps 1e-8), numerically the update of
    ``torch.optim.Adam``; written out because constructing ``torch.optim`` optimisers imports
    ``torch._dynamo`` (about 4 s of CPU per process), a third of this paper's ci budget."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=False):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def train_head(method: str, base: BaseLM, data: dict, *, steps: int, batch_size: int = 32, lr: float = 3e-3,
               reg_weight: float = 1.0, d_model: int = 64, n_layers: int = 1, random_state: int = 0) -> tuple:
    """Train one method's head on the labelled base samples; returns ``(head, loss history)``.

    ``nado`` uses cross-entropy + ``reg_weight`` x regulariser, ``nado_noreg`` the cross-entropy only,
    ``fudge`` the prefix classifier's cross-entropy, ``finetune`` the NLL of the accepted samples. All use
    Adam, the same steps, batch size, learning rate and ``random_state`` (initialisation and batches).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.manual_seed(random_state)
    gen = torch.Generator().manual_seed(random_state)
    P = data["prompts"].shape[1]
    full, h = data.get("_cache") or _training_tensors(base, data)
    data["_cache"] = (full, h)
    labels = data["labels"]
    rows = torch.arange(len(labels))
    if method == "finetune":
        rows = rows[labels > 0.5]
        if len(rows) == 0:
            raise ValueError("fine-tuning needs at least one accepted sample")
    if method == "fudge":
        head = PrefixClassifier(base.vocab_size, d_model)
    elif method in ("nado", "nado_noreg", "finetune"):
        head = TokenHead(base.d_model, base.vocab_size, d_model, n_layers, context=full.shape[1] + 8)
    else:
        raise ValueError(f"unknown method {method!r}")
    opt = _Adam(list(head.parameters()), lr)
    history = []
    for _ in range(steps):
        b = rows[torch.randint(len(rows), (min(batch_size, len(rows)),), generator=gen)]
        tok, hb, yb = full[b], h[b], labels[b]
        if method == "fudge":
            loss = fudge_loss(head.next_logits(tok), tok, yb, P)
        else:
            out = head(hb)
            logp = base.logp_of(hb)
            if method == "finetune":
                loss = finetune_loss(out, logp, tok, P)
            else:
                ce, reg = nado_losses(out, logp, tok, yb, P)
                loss = ce + (reg_weight * reg if method == "nado" else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head, history


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
def distinct_n(sequences, n: int = 2) -> float:
    """Distinct-n: unique n-grams / all n-grams over the sequences (0 when there is none)."""
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def evaluate_samples(task: Task, prompt_index, out: dict) -> dict:
    """Satisfaction, parse validity, base NLL per token (mean over samples) and distinct-2 of samples."""
    sat, val, nll, seqs = [], [], [], []
    for i, tok, m, lp in zip(prompt_index, out["tokens"], out["mask"], out["logp"], strict=False):
        sat.append(task.satisfied(int(i), tok))
        val.append(task.valid(int(i), tok))
        n = int(m.sum())
        nll.append(float(-(lp * m).sum()) / max(n, 1))
        seqs.append(tok[:n].tolist())
    return {"sat": float(np.mean(sat)), "valid": float(np.mean(val)), "nll": float(np.mean(nll)),
            "distinct2": distinct_n(seqs, 2)}


def rejection_reference(base: BaseLM, task: Task, eval_idx, n_draws: int, max_new_tokens: int, seed: int) -> dict:
    """Rejection sampling from ``p``: ``n_draws`` base draws per evaluation prompt, the accepted ones are exact
    samples of ``p(. | C)``; per-prompt acceptance rates estimate ``Z``. Returns the accepted samples, their
    prompts, ``log Z`` per accepted sample and the overall acceptance rate."""
    gen = torch.Generator().manual_seed(seed)
    idx = [i for i in eval_idx for _ in range(n_draws)]
    p = prompt_tensor(task, idx)
    out = sample(base, p, max_new_tokens, "base", generator=gen)
    ok = torch.tensor([task.satisfied(i, t) for i, t in zip(idx, out["tokens"], strict=False)])
    z = {i: float(ok[k * n_draws:(k + 1) * n_draws].float().mean()) for k, i in enumerate(eval_idx)}
    keep = ok.nonzero()[:, 0]
    acc_idx = [idx[k] for k in keep.tolist()]
    return {"prompts": p[keep], "tokens": out["tokens"][keep], "prompt_index": acc_idx,
            "log_z": torch.tensor([math.log(z[i]) for i in acc_idx]), "acceptance": float(ok.float().mean()),
            "z": z, "samples": evaluate_samples(task, acc_idx, {k: v[keep] for k, v in out.items()})}


def kl_to_rejection(base: BaseLM, ref: dict, method: str, head=None) -> float:
    """``KL(p(. | C) || q) = E_{x ~ p(.|C)}[log p(x) - log Z - log q(x)]`` on the rejection samples.

    (The reverse KL(q || p(. | C)) is infinite for every sampler that leaves any mass on ``C = 0``, so the
    forward direction is the one a finite estimate exists for.)
    """
    if len(ref["tokens"]) == 0:
        raise ValueError("no accepted rejection sample to estimate the KL with")
    s = score(base, ref["prompts"], ref["tokens"], method, head)
    m = s["mask"].float()
    lp, lq = (s["logp"] * m).sum(1), (s["logq"] * m).sum(1)
    return float((lp - ref["log_z"] - lq).mean())


def run_task(base: BaseLM, task: Task, *, n_train_prompts: int, n_per_prompt: int, n_eval_prompts: int,
             n_eval_samples: int, n_rejection_draws: int, max_new_tokens: int, steps: int, n_seeds: int,
             seed: int = 0, d_model: int = 64, n_layers: int = 1, lr: float = 3e-3, reg_weight: float = 1.0,
             methods=METHODS, batch_size: int = 32, progress=None) -> dict:
    """The whole experiment of one task: train every method on the same base samples for ``n_seeds``
    training seeds, sample each on the same evaluation prompts (the same sampling seed for every method of
    a seed), evaluate, and estimate each method's KL to the rejection distribution.

    The first ``n_train_prompts`` prompts of ``task`` train, the next ``n_eval_prompts`` evaluate.
    Returns ``{"train": stats, "rejection": stats, "per_seed": {method: {metric: [per seed]}}}``.
    """
    if len(task.prompts) < n_train_prompts + n_eval_prompts:
        raise ValueError("the task has fewer prompts than n_train_prompts + n_eval_prompts")
    train_task = Task(task.kind, task.prompts[:n_train_prompts], task.keywords[:n_train_prompts])
    data = base_samples(base, train_task, n_per_prompt, max_new_tokens, seed)
    eval_idx = list(range(n_train_prompts, n_train_prompts + n_eval_prompts))
    ref = rejection_reference(base, task, eval_idx, n_rejection_draws, max_new_tokens, seed + 7919)
    idx = [i for i in eval_idx for _ in range(n_eval_samples)]
    prompts = prompt_tensor(task, idx)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    per_seed = {m: {k: [] for k in ("sat", "valid", "nll", "distinct2", "kl")} for m in methods}
    for s in range(n_seeds):
        for method in methods:
            head = None
            if method != "base":
                head, _ = train_head(method, base, data, steps=steps, batch_size=batch_size, d_model=d_model, n_layers=n_layers, lr=lr,
                                     reg_weight=reg_weight, random_state=seed + 1000 * s + 1)
            gen = torch.Generator().manual_seed(seed + 1000 * s + 17)   # common random numbers across methods
            out = sample(base, prompts, max_new_tokens, method, head, generator=gen)
            ev = evaluate_samples(task, idx, out)
            ev["kl"] = kl_to_rejection(base, ref, method, head)
            for k, v in ev.items():
                per_seed[method][k].append(v)
            if progress is not None:
                progress.update(1)
    return {"train": {"n": len(data["labels"]), "sat": float(data["labels"].mean())},
            "rejection": {"acceptance": ref["acceptance"], "n_accepted": len(ref["tokens"]), **ref["samples"]},
            "per_seed": per_seed}
