"""Exact sequence-level oracles on TinyGrammar text, rejection sampling, and exact constrained distributions.

Controllable-generation papers (NADO, and any method that steers a language model ``p`` towards a boolean
constraint ``C``) are judged against the *constrained distribution*

    p(x | C) = p(x) C(x) / Z,        Z = P_{x ~ p}(C(x) = 1),

and against the token-level decomposition of the oracle (NADO's ``R^C``)

    R^C(x_<=t) = P_{x' ~ p}(C(x') = 1 | x'_<=t) = sum_{x_{t+1}} p(x_{t+1} | x_<=t) R^C(x_<=t+1),

whose recursion ends at complete sequences, ``R^C(x) = C(x)``. Because the TinyGrammar corpus is generated
by a known grammar, the oracles here are exact (a parser, a keyword check, the register rule):

* :func:`first_sentence`, :func:`keyword_oracle`, :func:`formality_oracle`, :func:`parse_valid`: deterministic
  oracles on a generated continuation (words or ids);
* :func:`rejection_sample`: the gold standard for sampling ``p(. | C)`` (draw from ``p``, keep what ``C``
  accepts), with the number of draws it cost;
* :func:`enumerate_sequences`, :func:`exact_constrained_distribution`, :func:`exact_oracle_values`: for
  an autoregressive model small enough to enumerate (``V**T`` sequences), the exact ``p(. | C)``, ``Z``
  and ``R^C`` of every prefix; :func:`kl_divergence` between two such distributions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from common.tinylm.grammar import SPECIALS, VOCAB, is_formal, is_grammatical, lemma

__all__ = ["first_sentence", "keyword_oracle", "formality_oracle", "parse_valid", "rejection_sample",
           "enumerate_sequences", "exact_constrained_distribution", "exact_oracle_values", "kl_divergence"]


def _words(tokens) -> list[str]:
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    tokens = list(tokens)
    if tokens and isinstance(tokens[0], (int, np.integer)):
        return VOCAB.decode(tokens)
    return [str(w) for w in tokens]


def first_sentence(tokens, prefix: Sequence[str] = ()) -> list[str]:
    """``prefix`` + the continuation ``tokens`` up to and including the first ``.``.

    Stops early at ``<eos>`` (or any special token), so an unfinished sentence is returned unfinished (and
    fails the parser). ``tokens`` are words or vocabulary ids.
    """
    out = [w for w in prefix if w not in SPECIALS]
    for w in _words(tokens):
        if w in SPECIALS:
            break
        out.append(w)
        if w == ".":
            break
    return out


def keyword_oracle(keywords: Sequence[str]) -> Callable[[Sequence[str]], bool]:
    """The lexical constraint (CommonGen analogue): every keyword lemma appears, inflection-insensitive.

    Returns ``C(sentence) -> bool`` over a word list (use :func:`first_sentence` to cut a continuation).
    """
    keys = [str(k) for k in keywords]
    if not keys:
        raise ValueError("keyword_oracle needs at least one keyword")
    unknown = [k for k in keys if k not in VOCAB.index]
    if unknown:
        raise ValueError(f"keywords {unknown} are not TinyGrammar words")

    def oracle(sentence: Sequence[str]) -> bool:
        lemmas = {lemma(w) for w in sentence}
        return all(k in lemmas for k in keys)

    return oracle


def formality_oracle(threshold: float = 0.8) -> Callable[[Sequence[str]], bool]:
    """The register constraint (formality analogue): the sentence parses, has a formal word, and at least
    ``threshold`` of its register-marked words are formal (:func:`common.tinylm.grammar.is_formal`)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")

    def oracle(sentence: Sequence[str]) -> bool:
        return bool(is_formal(list(sentence), threshold))

    return oracle


def parse_valid(sentence: Sequence[str]) -> bool:
    """Whether a sentence (words) parses as a TinyGrammar narrative sentence (phrase structure, agreement,
    selectional restrictions; register not checked)."""
    return bool(is_grammatical(list(sentence)))


def rejection_sample(sampler: Callable[[int, np.random.Generator], list], oracle: Callable[[object], bool],
                     n_accept: int, *, batch_size: int = 64, max_draws: int = 100_000, rng=None):
    """Draw from ``p`` in batches and keep what ``oracle`` accepts: exact samples of ``p(. | C)``.

    ``sampler(batch_size, rng)`` returns a list of samples of ``p``; draws stop once ``n_accept`` samples
    are accepted (the extra accepted ones of the last batch are dropped) or ``max_draws`` samples were
    drawn. Returns ``(accepted, n_draws)``; ``len(accepted) / n_draws`` estimates ``Z``. Raises
    ``ValueError`` for non-positive sizes.
    """
    if n_accept <= 0 or batch_size <= 0 or max_draws <= 0:
        raise ValueError("n_accept, batch_size and max_draws must be positive")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    accepted, n_draws = [], 0
    while len(accepted) < n_accept and n_draws < max_draws:
        batch = sampler(min(batch_size, max_draws - n_draws), rng)
        for x in batch:
            n_draws += 1
            if oracle(x):
                accepted.append(x)
                if len(accepted) == n_accept:
                    return accepted, n_draws
    return accepted, n_draws


# --------------------------------------------------------------------------------------------------
# Exact distributions by enumeration (small autoregressive models)
# --------------------------------------------------------------------------------------------------
def enumerate_sequences(next_token_probs: Callable[[tuple], np.ndarray], vocab_size: int, length: int,
                        max_sequences: int = 1_000_000) -> dict[tuple, float]:
    """``{x: p(x)}`` for every sequence of ``length`` tokens of an autoregressive model.

    ``next_token_probs(prefix) -> [vocab_size]`` gives ``p(x_{t+1} | x_<=t)`` (``prefix`` a tuple of ids,
    possibly empty). Refuses (``ValueError``) when ``vocab_size ** length`` exceeds ``max_sequences``.
    """
    if vocab_size <= 0 or length <= 0:
        raise ValueError("vocab_size and length must be positive")
    if vocab_size ** length > max_sequences:
        raise ValueError(f"{vocab_size}**{length} sequences exceed max_sequences={max_sequences}; "
                         "use rejection_sample instead")
    probs: dict[tuple, float] = {(): 1.0}
    for _ in range(length):
        nxt = {}
        for prefix, pp in probs.items():
            p = np.asarray(next_token_probs(prefix), dtype=float)
            if p.shape != (vocab_size,) or np.any(p < 0) or not math.isclose(p.sum(), 1.0, rel_tol=1e-9, abs_tol=1e-9):
                raise ValueError(f"next_token_probs{prefix} must be a distribution over {vocab_size} tokens")
            for v in range(vocab_size):
                nxt[prefix + (v,)] = pp * float(p[v])
        probs = nxt
    return probs


def exact_constrained_distribution(probs: dict[tuple, float], oracle: Callable[[tuple], bool]):
    """``(p(. | C), Z)`` from an enumerated ``{x: p(x)}``: ``p(x | C) = p(x) C(x) / Z``.

    Raises ``ValueError`` when no sequence of positive probability satisfies the oracle (``Z = 0``).
    """
    z = sum(p for x, p in probs.items() if oracle(x))
    if z <= 0:
        raise ValueError("the oracle accepts no sequence of positive probability (Z = 0)")
    return {x: (p / z if oracle(x) else 0.0) for x, p in probs.items()}, z


def exact_oracle_values(probs: dict[tuple, float], oracle: Callable[[tuple], bool]) -> dict[tuple, float]:
    """``R^C(x_<=t) = P(C(x) = 1 | x_<=t)`` for every prefix (the empty one included) of an enumerated model.

    Prefixes of probability zero get ``nan``. At full length ``R^C(x) = C(x)``.
    """
    mass: dict[tuple, float] = {}
    good: dict[tuple, float] = {}
    for x, p in probs.items():
        c = float(bool(oracle(x)))
        for t in range(len(x) + 1):
            key = x[:t]
            mass[key] = mass.get(key, 0.0) + p
            good[key] = good.get(key, 0.0) + p * c
    return {k: (good[k] / mass[k] if mass[k] > 0 else float("nan")) for k in mass}


def kl_divergence(p: dict, q: dict) -> float:
    """``KL(p || q) = sum_x p(x) log(p(x) / q(x))`` over dictionaries (``inf`` if ``q`` misses mass of ``p``)."""
    total = 0.0
    for x, px in p.items():
        if px <= 0:
            continue
        qx = q.get(x, 0.0)
        if qx <= 0:
            return math.inf
        total += px * math.log(px / qx)
    return total


def all_prefixes(vocab_size: int, length: int):
    """Every prefix (tuples of ids) of length ``0 .. length - 1``, shortest first."""
    for t in range(length):
        yield from itertools.product(range(vocab_size), repeat=t)
