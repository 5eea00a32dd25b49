"""Where the current notebook run writes its artifacts.

The runner executes each notebook with the environment variables below set; the
kernel inherits them. Outside the runner (a notebook opened in JupyterLab) none is
set, so `record` and `figure` display their results but write nothing to disk.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_DIR_ENV = "REPRO_RUN_DIR"
PAPER_ENV = "REPRO_PAPER"
PROFILE_ENV = "REPRO_PROFILE"
NOTEBOOK_ENV = "REPRO_NOTEBOOK"
PAPERS_ROOT_ENV = "REPRO_PAPERS_ROOT"


def run_dir() -> Path | None:
    """The folder of this notebook's run, or None in an interactive session."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def current_paper() -> str | None:
    return os.environ.get(PAPER_ENV)


def current_profile() -> str:
    return os.environ.get(PROFILE_ENV, "ci")


def current_notebook() -> str | None:
    return os.environ.get(NOTEBOOK_ENV)


def papers_root() -> Path | None:
    """Set by the runner when the paper lives outside ``papers/`` (test fixtures)."""
    value = os.environ.get(PAPERS_ROOT_ENV)
    return Path(value) if value else None
