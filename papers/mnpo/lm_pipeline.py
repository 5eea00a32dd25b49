r"""MNPO part 2: iterative preference optimisation of the tiny language model with an oracle preference.

The paper's pipeline (Sec. 4; official ``mnpo_scripts``: generate, rank, train, repeat) on the committed
``tinylm_ci`` and TinyGrammar, where the preference oracle is exact:

**Prompts.** ``<bos> keywords : k1 k2 k3 =>``: the three lemmas (subject, verb, object) of a grammar
sentence, shuffled (:meth:`common.tinylm.TinyGrammar.keywords`); the model continues with a sentence.
A response is the continuation up to and including its first stop token (``.`` or a special token), at
most ``max_new_tokens`` tokens.

**Heterogeneous judges** (the research note's oracle), each a deterministic ranking of two responses by a
score of their first sentence ``s``:

- *coverage*: the fraction of the prompt's keywords whose lemma appears in ``s``
  (:func:`common.tinylm.grammar.keyword_coverage`);
- *formality*: ``n_f / (n_f + n_i)`` over register-marked words (:func:`common.tinylm.grammar.formality`),
  −1 for a sentence that does not parse;
- *brevity*: ``−len(s)``, −∞ for a response that never ends a sentence.

A judge prefers the higher score (a tie is a coin flip, ``1/2``). The oracle preference is the judges'
equal mixture,

    P(y ≻ y' | x) = (1/3) Σ_j ( 1[s_j(y) > s_j(y')] + ½ 1[s_j(y) = s_j(y')] ),                  (P)

which *can* be non-transitive (three judges with conflicting orders: the Condorcet paradox). On the SFT
model's own responses it is measured to be practically transitive (:func:`nontransitive_fraction`; notebook 02
records ``lm.setting.cycle_fraction``), like the scalar reward model (ArmoRM) that ranks the official pipeline's
responses, so this pipeline tests the paper's win-rate ranking, not the non-transitivity mechanism (part 1 does).

**One iteration** ``t`` (the official pipeline, ``run_iter{1,2,3}.sh``): on the iteration's own prompt split
(official: the prompts are split into ``T`` disjoint parts, one per iteration), for every prompt draw ``n_samples`` responses
from the current iterate ``π_t``; for every pair of them ask **one randomly drawn judge** (a noisy label
of (P)); the response with the most wins is ``y_w``, the one with the fewest ``y_l`` (ties broken at
random; prompts whose best and worst tie are dropped). Then train ``π_{t+1}`` from ``π_t`` on these pairs
with the method's loss over sequence log-probabilities (:mod:`common.preference`):

- iterative DPO, eq. (1): reference = ``π_t``, strength ``β``;
- INPO, eq. (4): regression towards the mirror step against ``π_t``, regularised to the SFT ``π_ref``;
- MNPO, eq. (6): the same against the ``n_history`` most recent iterates with uniform ``λ`` (official
  ``max_history_t: 2``: the trainer averages ``π_t`` and ``π_{t−1}`` uniformly).

**Evaluation**: the oracle win rate (P) of the final policy against the SFT reference on held-out prompts,
``E_x E_{y ~ π, y' ~ π_ref} P(y ≻ y' | x)``, estimated with ``n_eval_samples`` independent responses of
each per prompt and all their cross pairs, overall and per judge (the per-judge win rate replaces the mixture
by one judge).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from common.preference import dpo_loss, inpo_loss, mnpo_loss
from common.tinylm import VOCAB, TinyGrammar, load_tinylm
from common.tinylm.grammar import SPECIALS, formality, is_grammatical, keyword_coverage
from common.tinylm.model import TinyGPT

LM_METHODS = ("dpo", "inpo", "mnpo")
JUDGES = ("coverage", "formality", "brevity")
RHO = 1.0 / 3.0          # official MNPO `ratio` (= ητ), shared by INPO and MNPO
_STOP_IDS = sorted({VOCAB.index["."]} | {VOCAB.index[s] for s in SPECIALS})


# --------------------------------------------------------------------------------------------------
# Prompts and the oracle
# --------------------------------------------------------------------------------------------------
@dataclass
class Prompts:
    """Keyword prompts: token ids ``[n, P]`` (all of one length) and the keyword lemmas of each."""

    ids: torch.Tensor
    keywords: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keywords)

    def subset(self, index) -> Prompts:
        index = list(index)
        return Prompts(self.ids[index], [self.keywords[i] for i in index])


def make_prompts(n_prompts: int, random_state: int = 0) -> Prompts:
    """``n_prompts`` prompts ``<bos> keywords : k1 k2 k3 =>`` from TinyGrammar sentences (seeded)."""
    if n_prompts <= 0:
        raise ValueError(f"n_prompts must be positive, got {n_prompts}")
    grammar = TinyGrammar(random_state)
    words, keywords = [], []
    while len(keywords) < n_prompts:
        w = grammar.keywords()
        keys = w[2:w.index("=>")]
        if len(keys) != 3:      # subject, verb and object with three distinct lemmas
            continue
        words.append(["<bos>", "keywords", ":"] + keys + ["=>"])
        keywords.append(keys)
    return Prompts(torch.tensor([VOCAB.encode(w) for w in words], dtype=torch.long), keywords)


def response_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` True for the tokens of each response up to and including its first stop token."""
    stop = torch.isin(tokens, torch.tensor(_STOP_IDS))
    return (torch.cumsum(stop.int(), 1) - stop.int()) == 0


def judge_scores(keywords: Sequence[str], tokens) -> np.ndarray:
    """The three judges' scores ``(coverage, formality, brevity)`` of one response (a sequence of token ids)."""
    words = VOCAB.decode([int(t) for t in tokens])
    sentence = []
    for w in words:
        sentence.append(w)
        if w == "." or w in SPECIALS:
            break
    ended = bool(sentence) and sentence[-1] == "."
    coverage = keyword_coverage(list(keywords), sentence) if sentence else 0.0
    form = formality(sentence) if ended and is_grammatical(sentence) else -1.0
    brevity = -float(len(sentence)) if ended else -math.inf
    return np.array([coverage, form, brevity])


def pairwise_preference(scores: np.ndarray) -> np.ndarray:
    """``[..., n, n, J]`` per-judge preferences ``1[s_j(y_a) > s_j(y_b)] + ½ 1[=]`` from scores ``[..., n, J]``."""
    a, b = scores[..., :, None, :], scores[..., None, :, :]
    return (a > b) + 0.5 * (a == b)


# --------------------------------------------------------------------------------------------------
# Sampling and scoring with the language model
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_responses(model: TinyGPT, prompt_ids: torch.Tensor, n_samples: int, max_new_tokens: int,
                     generator: torch.Generator, batch_size: int = 1024) -> torch.Tensor:
    """``[n, n_samples, max_new_tokens]`` continuations of every prompt (temperature 1, KV cache)."""
    rows = prompt_ids.repeat_interleave(n_samples, 0)
    out = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        out.append(model.generate(chunk, max_new_tokens, generator=generator)[:, chunk.shape[1]:])
    return torch.cat(out).view(len(prompt_ids), n_samples, max_new_tokens)


def sequence_logprob(model: TinyGPT, prompt_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log π(y | x) = Σ_t log π(y_t | x, y_<t)`` over the response's tokens (up to its first stop), ``[B]``."""
    full = torch.cat([prompt_ids, tokens], 1)
    logits = model(full)[:, prompt_ids.shape[1] - 1:-1]
    logp = torch.log_softmax(logits, -1).gather(2, tokens[..., None])[..., 0]
    return (logp * response_mask(tokens)).sum(1)


def all_scores(prompts: Prompts, responses: torch.Tensor) -> np.ndarray:
    """``[n, m, J]`` judge scores of responses ``[n, m, T]``."""
    return np.array([[judge_scores(prompts.keywords[i], r) for r in responses[i]] for i in range(len(prompts))])


# --------------------------------------------------------------------------------------------------
# One iteration: pairs, then training
# --------------------------------------------------------------------------------------------------
def build_pairs(model: TinyGPT, prompts: Prompts, *, n_samples: int, max_new_tokens: int, seed: int) -> dict:
    """Sample ``n_samples`` responses per prompt from ``model``, label every pair by one random judge, keep
    the most-winning response as ``y_w`` and the least-winning as ``y_l`` (prompts where they tie are dropped).

    Returns ``{"prompt_ids", "y_w", "y_l", "kept", "label_wins"}``.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    responses = sample_responses(model, prompts.ids, n_samples, max_new_tokens, gen)
    prefs = pairwise_preference(all_scores(prompts, responses))          # [n, m, m, J]
    n, m = prefs.shape[:2]
    judge = rng.integers(len(JUDGES), size=(n, m, m))
    judge = np.triu(judge, 1) + np.triu(judge, 1).transpose(0, 2, 1)     # one judge per unordered pair
    label = np.take_along_axis(prefs, judge[..., None], -1)[..., 0]
    coin = rng.random((n, m, m)) < 0.5
    coin = np.triu(coin, 1) | np.triu(~coin, 1).transpose(0, 2, 1)      # a tie is one fair coin per pair
    label = np.where(label == 0.5, coin.astype(float), label)
    np.einsum("nii->ni", label)[:] = 0.0
    wins = label.sum(-1) + 1e-3 * rng.random((n, m))                     # random tie-break
    best, worst = wins.argmax(1), wins.argmin(1)
    keep = np.floor(wins.max(1)) > np.floor(wins.min(1))
    idx = np.flatnonzero(keep)
    return {"prompt_ids": prompts.ids[idx], "y_w": responses[idx, best[idx]], "y_l": responses[idx, worst[idx]],
            "kept": float(keep.mean()), "label_wins": wins}


def _frozen(model: TinyGPT) -> TinyGPT:
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@dataclass
class TrainConfig:
    """Optimisation shared by every method: Adam, ``epochs`` passes over the pairs, minibatch ``batch_size``."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4


def pair_loss(method: str, strength: float, pi_w, pi_l, ref_w, ref_l, hist_w, hist_l) -> torch.Tensor:
    """The method's per-pair loss; ``strength`` is DPO's ``β`` or INPO/MNPO's ``η``; ``hist_*[0]`` is ``π_t``."""
    if method == "dpo":
        return dpo_loss(pi_w, pi_l, hist_w[0], hist_l[0], beta=strength)
    if method == "inpo":
        return inpo_loss(pi_w, pi_l, ref_w, ref_l, hist_w[0], hist_l[0], eta=strength, rho=RHO)
    if method == "mnpo":
        return mnpo_loss(pi_w, pi_l, ref_w, ref_l, hist_w, hist_l, eta=strength, rho=RHO)
    raise ValueError(f"unknown method {method!r}; expected one of {LM_METHODS}")


def train_iteration(method: str, policy: TinyGPT, ref: TinyGPT, history: Sequence[TinyGPT], pairs: dict, *,
                    strength: float, config: TrainConfig, seed: int) -> list[float]:
    """Train ``policy`` (initialised at ``π_t = history[0]``) in place on ``pairs``; returns the epoch losses."""
    x, yw, yl = pairs["prompt_ids"], pairs["y_w"], pairs["y_l"]
    if len(x) == 0:
        raise ValueError("no preference pairs to train on (every prompt's best and worst responses tied)")
    with torch.no_grad():
        ref_w, ref_l = sequence_logprob(ref, x, yw), sequence_logprob(ref, x, yl)
        hist_w = [sequence_logprob(h, x, yw) for h in history]
        hist_l = [sequence_logprob(h, x, yl) for h in history]
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(config.epochs):
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for b in range(0, len(x), config.batch_size):
            i = order[b:b + config.batch_size]
            pi_w, pi_l = sequence_logprob(policy, x[i], yw[i]), sequence_logprob(policy, x[i], yl[i])
            loss = pair_loss(method, strength, pi_w, pi_l, ref_w[i], ref_l[i],
                             [h[i] for h in hist_w], [h[i] for h in hist_l]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(i)
        losses.append(total / len(x))
    policy.eval()
    return losses


# --------------------------------------------------------------------------------------------------
# Evaluation and the whole pipeline
# --------------------------------------------------------------------------------------------------
def win_rate_against(model: TinyGPT, opponent: TinyGPT, prompts: Prompts, *, n_samples: int, max_new_tokens: int,
                     seed: int) -> dict:
    """Per-prompt oracle win rates (P) of ``model`` against ``opponent``: ``{"mixture" [n], judge: [n]}``,
    from ``n_samples`` responses of each and all ``n_samples²`` cross pairs (exact judges, no label noise)."""
    gen = torch.Generator().manual_seed(seed)
    ours = all_scores(prompts, sample_responses(model, prompts.ids, n_samples, max_new_tokens, gen))
    theirs = all_scores(prompts, sample_responses(opponent, prompts.ids, n_samples, max_new_tokens, gen))
    a, b = ours[:, :, None, :], theirs[:, None, :, :]
    per_judge = ((a > b) + 0.5 * (a == b)).mean((1, 2))                  # [n, J]
    out = {"mixture": per_judge.mean(1)}
    out.update({j: per_judge[:, k] for k, j in enumerate(JUDGES)})
    return out


def load_reference(name: str = "tinylm_ci") -> TinyGPT:
    """The SFT reference policy: a committed zoo TinyGPT (sha256-verified)."""
    model, _, _ = load_tinylm(name)
    return _frozen(model)


def split_prompts(prompts: Prompts, T: int) -> list[Prompts]:
    """``T`` disjoint consecutive splits of equal size (the official ``split_dataset --num_splits T``)."""
    n = len(prompts) // T
    if T < 1 or n < 1:
        raise ValueError(f"cannot split {len(prompts)} prompts into T={T} non-empty parts")
    return [prompts.subset(range(t * n, (t + 1) * n)) for t in range(T)]


def run_pipeline(method: str, ref: TinyGPT, train_prompts: Sequence[Prompts], *, T: int, strength: float,
                 n_samples: int, max_new_tokens: int, seed: int, n_history: int = 2,
                 config: TrainConfig | None = None, eval_prompts: Prompts | None = None,
                 n_eval_samples: int = 4, eval_all: bool = True, progress=None) -> dict:
    """``T`` iterations of sample → rank → train from ``π_0 = π_ref``; returns the iterates and, with
    ``eval_prompts``, the win rates against ``π_ref`` after every iteration (``eval_all``) or the last only.

    Iteration ``t`` uses the prompt split ``train_prompts[t]`` (the same for every method; see
    :func:`split_prompts`) and the sampling seed
    ``seed + t`` (so at ``t = 0``, where every method's iterate is ``π_ref``, all methods train on the same
    pairs: common random numbers).
    """
    if method not in LM_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {LM_METHODS}")
    if T < 1 or n_history < 1:
        raise ValueError(f"T and n_history must be >= 1, got T={T}, n_history={n_history}")
    if isinstance(train_prompts, Prompts) or len(train_prompts) != T:
        raise ValueError("train_prompts must be a list of T prompt splits (one per iteration; see split_prompts)")
    config = config or TrainConfig()
    iterates = [ref]
    out = {"losses": [], "kept": [], "win_rate": []}
    for t in range(T):
        pairs = build_pairs(iterates[-1], train_prompts[t], n_samples=n_samples, max_new_tokens=max_new_tokens,
                            seed=seed + 1000 * t)
        policy = copy.deepcopy(iterates[-1])
        for p in policy.parameters():
            p.requires_grad_(True)
        history = iterates[::-1][: (1 if method != "mnpo" else n_history)]
        out["losses"].append(train_iteration(method, policy, ref, history, pairs, strength=strength,
                                             config=config, seed=seed + 1000 * t + 1))
        out["kept"].append(pairs["kept"])
        iterates.append(_frozen(policy))
        if eval_prompts is not None and (eval_all or t == T - 1):
            out["win_rate"].append(win_rate_against(iterates[-1], ref, eval_prompts, n_samples=n_eval_samples,
                                                    max_new_tokens=max_new_tokens, seed=seed + 1000 * t + 2))
        if progress is not None:
            progress.update(1)
    out["iterates"] = iterates
    return out


def compare_methods(ref: TinyGPT, train_prompts: Sequence[Prompts], eval_prompts: Prompts, *, strengths: dict,
                    seeds, T: int, n_samples: int, max_new_tokens: int, n_history: int = 2,
                    config: TrainConfig | None = None, n_eval_samples: int = 4, eval_all: bool = True,
                    progress=None) -> dict:
    """Every method of ``strengths`` (``{method: β or η}``) on the same prompts and seeds (common random
    numbers: seed ``s`` gives every method the same sampling and evaluation streams).

    Returns ``{method: {"win_rate": {key: [seeds, evaluations, n_eval]}, "runs": [run_pipeline outputs]}}``.
    """
    out = {}
    for method, strength in strengths.items():
        runs = [run_pipeline(method, ref, train_prompts, T=T, strength=strength, n_samples=n_samples,
                             max_new_tokens=max_new_tokens, seed=int(s), n_history=n_history, config=config,
                             eval_prompts=eval_prompts, n_eval_samples=n_eval_samples, eval_all=eval_all,
                             progress=progress) for s in seeds]
        keys = runs[0]["win_rate"][0].keys()
        out[method] = {"runs": runs,
                       "win_rate": {k: np.array([[w[k] for w in r["win_rate"]] for r in runs]) for k in keys}}
    return out


def max_parameter_difference(a: TinyGPT, b: TinyGPT) -> float:
    """``max |θ_a − θ_b|`` over all parameters (0 exactly when two training runs coincide bit for bit)."""
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def has_cycle(P: np.ndarray) -> np.ndarray:
    """Whether a preference matrix ``P [..., m, m]`` has a strict 3-cycle ``y_a ≻ y_b ≻ y_c ≻ y_a`` (majority > ½)."""
    beats = (np.asarray(P) > 0.5).astype(np.int64)
    return np.einsum("...ab,...bc,...ca->...", beats, beats, beats) > 0


def nontransitive_fraction(model: TinyGPT, prompts: Prompts, *, n_samples: int, max_new_tokens: int,
                           seed: int) -> float:
    """Fraction of prompts whose ``n_samples`` responses of ``model`` contain a 3-cycle of the mixture (P)."""
    gen = torch.Generator().manual_seed(seed)
    prefs = pairwise_preference(all_scores(prompts, sample_responses(model, prompts.ids, n_samples,
                                                                       max_new_tokens, gen)))
    return float(has_cycle(prefs.mean(-1)).mean())
