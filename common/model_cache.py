"""A cache of trained weights, keyed by everything that shapes them (for full profiles that train many models).

A full profile that trains, say, 10 students for 40 minutes and then evaluates them should not retrain when only
its evaluation or its claims change. :func:`cache_key` hashes what shapes the weights: the caller's settings
(``parts``, by ``repr``), the bytes of the training data and of any initial weights (``tensors``), the whole
source of the code that trains (``files``), torch's and numpy's versions and the torch thread count (which can
change float results). A cached file is reused only under the same key, so any edit of the training code, data or
settings retrains; evaluation code never enters the key and is always re-run on the loaded weights.

Files are safetensors (weights) with JSON metadata (e.g. the training losses and curves), written to a temporary
file and renamed, so an interrupted run never leaves a truncated entry. The cache lives under an ignored folder
(``.cache/<paper>/...``) and is a convenience only: deleting it changes no result, only the time a run takes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_key(parts, files=(), tensors=()) -> str:
    """sha256 hex digest of ``repr(parts)``, the bytes of ``files`` (paths) and ``tensors``, torch's and numpy's
    versions and ``torch.get_num_threads()``."""
    h = hashlib.sha256()
    h.update(repr((parts, torch.__version__, np.__version__, torch.get_num_threads())).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_path(cache_dir, stem: str, key: str) -> Path:
    """``<cache_dir>/<stem>_<key[:16]>.safetensors``; a relative ``cache_dir`` is relative to the repository."""
    if not stem or "/" in stem:
        raise ValueError(f"stem must be a plain file-name prefix, got {stem!r}")
    root = Path(cache_dir)
    if not root.is_absolute():
        root = REPO_ROOT / root
    return root / f"{stem}_{key[:16]}.safetensors"


def save_weights(path: Path, state_dict: dict, meta: dict) -> None:
    """Write ``state_dict`` with ``meta`` (JSON-serialisable) atomically to ``path``."""
    from safetensors.torch import save_file

    from common.harness.provenance import device

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    metadata = {"meta": json.dumps(meta), "device": json.dumps(device()), "threads": str(torch.get_num_threads())}
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(path: Path) -> tuple[dict, dict]:
    """(state_dict, meta) of a file written by :func:`save_weights`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(path)), meta
