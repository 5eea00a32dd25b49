"""Determinism: one call seeds every random number generator a notebook may use
(:func:`seed_everything`), and one starts every seeded training loop in ``common/`` (:func:`seeded_training`)."""

from __future__ import annotations

import os
import random
import sys

import numpy as np


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def seed_everything(seed: int, *, deterministic: bool = True) -> np.random.Generator:
    """Seed ``random``, NumPy's legacy global state and torch, and return a fresh
    ``numpy.random.Generator`` seeded with ``seed`` (prefer passing it explicitly).

    torch is seeded (and, with ``deterministic``, switched to deterministic
    algorithms) when it has been imported, so call this after your imports; a notebook
    that never uses torch does not pay for importing it.
    """
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if hasattr(torch.backends, "cudnn"):
                torch.backends.cudnn.benchmark = False
    return np.random.default_rng(seed)


def seeded_training(seed: int, threads: int | None = None):
    """The start of a seeded training loop: returns a fresh ``torch.Generator`` seeded with ``seed``.

    In this order: fix torch's intra-op CPU thread count to ``threads`` (left as it is when None), seed
    torch's global RNG with ``seed`` (it draws the parameter initialisation), and make the generator that
    the loop passes explicitly to every draw (batches, noise, augmentation). With the same seed and thread
    count the weights are bit-identical run after run; the thread count matters because CPU reductions
    split differently. Used by ``common/diffusion/train.py``, ``common/diffusion/classifier.py`` and
    ``common/tinylm/train.py``.
    """
    import torch

    seed = _check_seed(seed)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
