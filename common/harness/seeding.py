"""Determinism: one call seeds every random number generator a notebook may use."""

from __future__ import annotations

import os
import random
import sys

import numpy as np


def seed_everything(seed: int, *, deterministic: bool = True) -> np.random.Generator:
    """Seed ``random``, NumPy's legacy global state and torch, and return a fresh
    ``numpy.random.Generator`` seeded with ``seed`` (prefer passing it explicitly).

    torch is seeded (and, with ``deterministic``, switched to deterministic
    algorithms) when it has been imported, so call this after your imports; a notebook
    that never uses torch does not pay for importing it.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
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
