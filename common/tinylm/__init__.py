"""The repository's own tiny language model (``TinyGPT``) and its procedural corpus (``TinyGrammar``).

* :mod:`common.tinylm.grammar`: the seeded, versioned corpus, its parser and exact oracles;
* :mod:`common.tinylm.model`: the model with its hooks (attention, activation, normalisation, softmax),
  explicit KV cache and ``return_qkv``;
* :mod:`common.tinylm.train`: training, evaluation and the zoo manifest.

``load_tinylm("tinylm_ci")`` returns the committed checkpoint (sha256-verified) ready for inference.
"""

from __future__ import annotations

from .grammar import (
    CORPUS_HASH,
    GRAMMAR_VERSION,
    VOCAB,
    TinyGrammar,
    Vocabulary,
    arithmetic_chains,
    check_arithmetic,
    check_recall,
    corpus_hash,
    corpus_tokens,
    formality,
    is_formal,
    is_grammatical,
    keyword_coverage,
    keyword_prompts,
    recall_episodes,
)
from .model import KVCache, TinyGPT, TinyGPTConfig, softmax_attention
from .train import perplexity

__all__ = [
    "CORPUS_HASH", "GRAMMAR_VERSION", "VOCAB", "TinyGrammar", "Vocabulary", "arithmetic_chains", "check_arithmetic",
    "check_recall", "corpus_hash", "corpus_tokens", "formality", "is_formal", "is_grammatical", "keyword_coverage",
    "keyword_prompts", "recall_episodes", "KVCache", "TinyGPT", "TinyGPTConfig", "softmax_attention", "perplexity",
    "load_tinylm",
]


def load_tinylm(name: str = "tinylm_ci", directory=None):
    """``(model, vocab, manifest)`` for a zoo checkpoint: sha256 verified, float32, eval mode.

    Raises :class:`common.zoo.ChecksumError` for a tampered file and ``ValueError`` when the checkpoint was
    trained on another grammar version than the one in this tree.
    """
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    version = manifest.get("corpus", {}).get("grammar_version")
    if version != GRAMMAR_VERSION:
        raise ValueError(f"checkpoint {name!r} was trained on grammar {version!r}, this tree has {GRAMMAR_VERSION!r}")
    model = TinyGPT(TinyGPTConfig(**manifest["config"]))
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.float().eval(), VOCAB, manifest
