"""Word frequency as a predictor of word familiarity: the evaluation protocol of TUBELEX, offline.

Nohejl et al. (2024), "Beyond Film Subtitles: Is YouTube the Best Approximation of Spoken Vocabulary?"
(arXiv 2410.03240) build word-frequency lists from YouTube subtitles (TUBELEX) and rank them against
other lists by how well **log frequency** predicts human norms. For a list ``L`` and a norm ``y`` on words
``w_1..w_n`` the score is Pearson's correlation (the paper's Section 5 / ``experiments/run.py``)::

    r(L, y) = corr( log10 f_L(w_i), y_i ),  i = 1..n                         (1)

with the frequency ``f_L(w)`` of a (possibly multi-token) item defined by

- normalisation: NFKC, lower case;
- tokenisation: ``f_L(w) = max( f_L(w as one token), min_t f_L(t) )`` over its tokens ``t``      (2)
  (an item is as frequent as its rarest token, unless the list has the whole string);
- missing words: a list without counts (wordfreq) gives ``f = 1e-9``; a list with counts is
  Laplace-smoothed, ``f(w) = (c(w) + 1) / (N + V)`` (``N`` tokens, ``V`` types)                  (3)

The English familiarity norm is the MRC Psycholinguistic Database's FAM (100..700, divided by 100), one
value per distinct lower-cased word. Two of the paper's baseline rows are computable offline: wordfreq
(r = 0.771, n = 4923, 21 missing) and SUBTLEX-US (r = 0.773). The MRC and SUBTLEX-US tables ship as two
pickles inside the ``wonderlic-nlp`` wheel; we never import that package (it does not import), and we
read its pickles with :class:`PlainUnpickler`, which refuses every class (only dicts, lists, tuples,
strings and numbers load).

The TUBELEX lists themselves (a YouTube crawl) are not on PyPI, so the paper's core claim is studied on
a labelled **toy proxy**: a Zipfian "spoken exposure" distribution, a familiarity norm that is a noisy
monotone function of log exposure, and corpora sampled either from the matching register or from a
register-shifted distribution (:func:`zipf_exposure`, :func:`shifted_register`, :func:`sample_corpus`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import pickle
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "PlainUnpickler", "load_plain_pickle", "wonderlic_pickle_path", "mrc_familiarity", "subtlex_us_counts",
    "nfkc_lower", "regex_tokenize", "item_frequency", "wordfreq_lookup", "laplace_lookup",
    "frequency_correlation", "steiger_z", "zipf_exposure", "familiarity_from_exposure", "shifted_register",
    "sample_corpus", "corpus_correlation", "WORDFREQ_MISSING",
]

WORDFREQ_MISSING = 1e-9   # the paper's FREQ_EPS: a word wordfreq lacks gets this frequency
_MRC_VARIABLES = ("FAM", "CNC", "IMG", "CMEAN", "PMEAN", "AOA")


# --------------------------------------------------------------------------------------------- data

class PlainUnpickler(pickle.Unpickler):
    """An unpickler that loads only built-in containers and scalars: every global lookup is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")


def load_plain_pickle(path) -> object:
    """Load ``path`` with :class:`PlainUnpickler` (dicts, lists, tuples, str, numbers only)."""
    with open(path, "rb") as handle:
        return PlainUnpickler(handle).load()


def wonderlic_pickle_path(name: str):
    """Path of ``psycholinguistics/<name>`` inside the installed ``wonderlic-nlp`` distribution."""
    try:
        files = importlib.metadata.files("wonderlic-nlp") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise ValueError("wonderlic-nlp is not installed (pip install --no-deps wonderlic-nlp==0.1.1)") from error
    for file in files:
        if file.name == name and file.suffix == ".pickle":
            return file.locate()
    raise ValueError(f"wonderlic-nlp ships no {name!r}")


@functools.lru_cache(maxsize=2)
def _cached_pickle(name: str):
    return load_plain_pickle(wonderlic_pickle_path(name))


def mrc_familiarity(records: Mapping | None = None) -> dict[str, float]:
    """MRC familiarity (FAM / 100) per distinct lower-cased word, as the paper's ``data/mrc_README.txt``.

    ``records`` maps ``(WORD, POS)`` to a dict of MRC fields (the ``mrc.pickle`` layout; loaded, cached, when
    None). As in the paper's extraction, an entry counts only when one of its psycholinguistic variables
    (FAM, CNC, IMG, CMEAN, PMEAN, AOA) is non-zero; the first such entry of a word gives its values, and a
    word keeps a familiarity only when that entry's FAM is non-zero.
    """
    if records is None:
        records = _cached_pickle("mrc.pickle")
    familiarity: dict[str, float] = {}
    seen: set[str] = set()
    for key, fields in records.items():
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(fields, Mapping)):
            raise ValueError(f"unexpected MRC record {key!r}: expected (word, pos) -> dict")
        word = key[0]
        if word in seen or not any(fields.get(v) for v in _MRC_VARIABLES):
            continue
        seen.add(word)
        if fields.get("FAM"):
            familiarity.setdefault(word.lower(), fields["FAM"] / 100.0)
    return familiarity


def subtlex_us_counts(rows: Mapping | None = None) -> dict[str, int]:
    """SUBTLEX-US raw counts (FREQcount) per lower-cased word, summed over case variants (``to_lower``)."""
    if rows is None:
        rows = _cached_pickle("subtl.pickle")
    counts: dict[str, int] = {}
    for word, fields in rows.items():
        if fields.get("FREQcount") == "FREQcount":      # the header row
            continue
        lower = word.lower()
        counts[lower] = counts.get(lower, 0) + int(fields["FREQcount"])
    return counts


# ------------------------------------------------------------------------------------ the protocol

def nfkc_lower(text: str) -> str:
    """Unicode NFKC normalisation followed by lower-casing (the paper's ``nfkc_lower``)."""
    return unicodedata.normalize("NFKC", text).lower()


_NON_WORD = re.compile(r"\W+")


def regex_tokenize(text: str) -> list[str]:
    """Split on runs of non-word characters (the simple regex tokenisation used for SUBTLEX)."""
    return [token for token in _NON_WORD.split(text) if token]


def item_frequency(item: str, lookup: Callable[[str], tuple[float, bool]],
                   tokenize: Callable[[str], list[str]]) -> tuple[float, bool]:
    """Frequency of one norm item, Eq. (2): the whole string if the list has it more often, else its rarest token.

    ``lookup(token) -> (frequency, missing)`` never returns 0 (missing words get a floor, Eq. 3).
    Returns ``(frequency, missing)``; ``missing`` is True when the chosen form was not in the list.
    """
    text = nfkc_lower(item)
    pairs = [lookup(token) for token in tokenize(text)]
    f_tok, m_tok = (min(f for f, _ in pairs), any(m for _, m in pairs)) if pairs else (0.0, False)
    f_whole, m_whole = lookup(text)
    return (f_whole, m_whole) if f_whole > f_tok else (f_tok, m_tok)


def wordfreq_lookup(frequencies: Mapping[str, float], missing: float = WORDFREQ_MISSING):
    """Lookup in a wordfreq frequency dict: a missing word gets ``missing`` (1e-9 in the paper)."""
    if not missing > 0:
        raise ValueError(f"missing frequency must be positive, got {missing!r}")

    def lookup(word: str) -> tuple[float, bool]:
        f = frequencies.get(word)
        return (missing, True) if f is None else (float(f), False)
    return lookup


def laplace_lookup(counts: Mapping[str, int]):
    """Laplace-smoothed lookup, Eq. (3): ``(c(w) + 1) / (N + V)``; a word is missing when ``c(w) = 0``."""
    if not counts:
        raise ValueError("counts must not be empty")
    denominator = float(sum(counts.values()) + len(counts))

    def lookup(word: str) -> tuple[float, bool]:
        c = counts.get(word, 0)
        return (c + 1) / denominator, c == 0
    return lookup


def frequency_correlation(norm: Mapping[str, float], lookup, tokenize) -> dict:
    """Eq. (1): Pearson r between ``log10`` item frequency and the norm, with ``n`` and ``n_missing``.

    Returns ``{"r", "n", "n_missing", "log_frequency"}`` (``log_frequency`` in the norm's item order).
    """
    if len(norm) < 3:
        raise ValueError("a correlation needs at least 3 normed items")
    items = list(norm)
    pairs = [item_frequency(item, lookup, tokenize) for item in items]
    log_f = np.log10(np.array([f for f, _ in pairs], dtype=float))
    y = np.array([norm[item] for item in items], dtype=float)
    r = float(np.corrcoef(log_f, y)[0, 1])
    return {"r": r, "n": len(items), "n_missing": int(sum(m for _, m in pairs)), "log_frequency": log_f}


def steiger_z(r_12: float, r_13: float, r_23: float, n: int) -> tuple[float, float]:
    """Steiger's (1980) Z for two dependent correlations sharing variable 1; returns ``(z, two-sided p)``.

    With ``r̄ = (r_12 + r_13) / 2``,
    ``ψ = r_23 (1 − 2 r̄²) − r̄² (1 − 2 r̄² − r_23²) / 2``, ``c = ψ / (1 − r̄²)²`` and
    ``Z = (atanh r_12 − atanh r_13) √(n − 3) / √(2 − 2c)`` (Steiger 1980, Eq. 14 with pooled r̄).
    """
    for name, r in (("r_12", r_12), ("r_13", r_13), ("r_23", r_23)):
        if not -1 < r < 1:
            raise ValueError(f"{name} must lie in (-1, 1), got {r!r}")
    if n <= 3:
        raise ValueError(f"n must exceed 3, got {n}")
    from scipy import stats

    rm2 = ((r_12 + r_13) / 2) ** 2
    psi = r_23 * (1 - 2 * rm2) - 0.5 * rm2 * (1 - 2 * rm2 - r_23 ** 2)
    c = psi / (1 - rm2) ** 2
    z = (math.atanh(r_12) - math.atanh(r_13)) * math.sqrt(n - 3) / math.sqrt(2 - 2 * c)
    return float(z), float(2 * stats.norm.sf(abs(z)))


# ----------------------------------------------------------------------------- the toy proxy

def zipf_exposure(n_words: int, exponent: float = 1.0) -> np.ndarray:
    """Latent spoken-language exposure: word ``k`` (rank k, 1-based) has ``p_k ∝ k^(−exponent)`` (Zipf)."""
    if n_words < 2:
        raise ValueError(f"n_words must be at least 2, got {n_words}")
    if not exponent > 0:
        raise ValueError(f"exponent must be positive, got {exponent!r}")
    p = np.arange(1, n_words + 1, dtype=float) ** (-exponent)
    return p / p.sum()


def familiarity_from_exposure(p: np.ndarray, noise_sd: float, random_state) -> np.ndarray:
    """A familiarity norm: a saturating monotone function of log10 exposure plus Gaussian rating noise.

    ``fam = 1 + 6 · sigmoid((log10 p − m) / s) + ε``, ``ε ~ N(0, noise_sd²)``, with ``m``, ``s`` the mean
    and standard deviation of ``log10 p`` (a 1..7 scale like MRC's FAM / 100).
    """
    if noise_sd < 0:
        raise ValueError(f"noise_sd must be non-negative, got {noise_sd!r}")
    rng = np.random.default_rng(random_state)
    log_p = np.log10(np.asarray(p, dtype=float))
    z = (log_p - log_p.mean()) / log_p.std()
    return 1 + 6 / (1 + np.exp(-z)) + noise_sd * rng.standard_normal(log_p.size)


def shifted_register(p: np.ndarray, shift_sd: float, random_state) -> np.ndarray:
    """A register-shifted distribution: ``log10 q_w = log10 p_w + δ_w``, ``δ_w ~ N(0, shift_sd²)``, renormalised.

    A stand-in for a corpus of another register (written text, translated film subtitles): the same
    vocabulary, each word's rate distorted by a word-specific factor.
    """
    if shift_sd < 0:
        raise ValueError(f"shift_sd must be non-negative, got {shift_sd!r}")
    rng = np.random.default_rng(random_state)
    q = np.asarray(p, dtype=float) * 10.0 ** (shift_sd * rng.standard_normal(len(p)))
    return q / q.sum()


def sample_corpus(q: np.ndarray, n_tokens: int, random_state) -> np.ndarray:
    """Word counts of a corpus of ``n_tokens`` tokens drawn i.i.d. from ``q`` (a multinomial sample)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    rng = np.random.default_rng(random_state)
    return rng.multinomial(n_tokens, np.asarray(q, dtype=float))


def corpus_correlation(counts: np.ndarray, familiarity: np.ndarray, normed: Sequence[int] | None = None) -> float:
    """Eq. (1) on a simulated corpus: Pearson r of ``log10`` Laplace-smoothed frequency (Eq. 3) with the norm.

    ``V`` in Eq. (3) is the number of observed types, as for a real list. ``normed`` indexes the words that
    have a norm (all words when None).
    """
    counts = np.asarray(counts, dtype=float)
    familiarity = np.asarray(familiarity, dtype=float)
    if counts.shape != familiarity.shape:
        raise ValueError(f"counts {counts.shape} and familiarity {familiarity.shape} differ in shape")
    index = np.arange(counts.size) if normed is None else np.asarray(normed)
    log_f = np.log10((counts + 1) / (counts.sum() + np.count_nonzero(counts)))
    return float(np.corrcoef(log_f[index], familiarity[index])[0, 1])

