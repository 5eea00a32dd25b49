"""Provenance of a run: code version, inputs, environment, device and timings."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .spec import REPO_ROOT, PaperSpec

LOCK_FILE = REPO_ROOT / "requirements.lock"
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", "expected", "tests"}
_SKIP_FILES = {"README.md"}
VERSIONED_PACKAGES = ("numpy", "scipy", "torch", "pandas", "scikit-learn", "matplotlib", "papermill", "nbclient", "ipykernel")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not (set(path.relative_to(folder).parts[:-1]) & _SKIP_DIRS) and path.name not in _SKIP_FILES:
            if path.suffix not in (".pyc",):
                yield path


def code_hash(paper: PaperSpec, common_root: Path | None = None) -> str:
    """sha256 over the paper's code and notebooks, ``common/`` and the lock file.

    Goldens (``expected/``), the paper's README and its unit tests are excluded: they
    do not change what a run computes. Results whose stored hash differs are stale.
    """
    digest = hashlib.sha256()
    common_root = common_root or REPO_ROOT / "common"
    for label, folder in (("paper", paper.root), ("common", common_root)):
        for path in _files(folder):
            digest.update(f"{label}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    if LOCK_FILE.is_file():
        digest.update(b"lock\0" + LOCK_FILE.read_bytes())
    return digest.hexdigest()


def input_hash(files_hash: str, parameters: dict) -> str:
    """The code hash combined with the effective parameters of every notebook."""
    blob = json.dumps(parameters, sort_keys=True, default=str).encode()
    return hashlib.sha256(files_hash.encode() + b"\0" + blob).hexdigest()


def git_state(root: Path = REPO_ROOT) -> dict:
    def git(*args):
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--verify", "--quiet", "HEAD") or None
    status = git("status", "--porcelain", "--", ".", ":(exclude)results", ":(exclude).cache", ":(exclude)runs")
    return {"commit": commit, "dirty": bool(status)}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def device_label(info: dict) -> str:
    return info.get("gpu") or f"CPU ({info.get('cpu_count')} cores): {info.get('cpu')}"
