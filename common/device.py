"""Where a notebook computes: CUDA when present, else the CPU, and the choice in the run's provenance.

Every full profile runs on either; notebooks call :func:`pick_device` once and move models and tensors
there. ``REPRO_DEVICE=cpu`` (or ``cuda``) overrides the choice, e.g. to run a full profile on a GPU node's
CPU. The device is written to the notebook's ``kernel.json`` and so to ``provenance.json`` (under
``notebooks.<name>.kernel.device``); the scoreboard labels a run by the machine it ran on.
"""

from __future__ import annotations

import os

DEVICE_ENV = "REPRO_DEVICE"


def pick_device(prefer: str | None = None):
    """The ``torch.device`` to compute on: ``prefer`` or ``$REPRO_DEVICE`` if set, else CUDA when available.

    Raises ``ValueError`` for an unknown device and ``RuntimeError`` when CUDA is asked for but absent
    (never a silent fallback: a result labelled GPU must have run on one).
    """
    import torch

    from .harness import recording

    wanted = (prefer or os.environ.get(DEVICE_ENV) or "").strip().lower()
    if wanted not in ("", "cpu", "cuda"):
        raise ValueError(f"unknown device {wanted!r}: use 'cpu' or 'cuda' (or leave {DEVICE_ENV} unset)")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device")
    device = torch.device("cuda" if wanted == "cuda" or (not wanted and torch.cuda.is_available()) else "cpu")
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    recording.note_device(label)
    return device
