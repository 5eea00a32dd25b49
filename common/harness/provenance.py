"""Provenance of a run: code version, inputs, environment, device and timings."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path

from .spec import REPO_ROOT, PaperSpec

LOCK_FILE = REPO_ROOT / "requirements.lock"
EXTRAS_LOCK = REPO_ROOT / "requirements-extras.lock"
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


# Folders of ``common/`` that hold data a run *loads* rather than code it runs: the zoo's checkpoints and the
# notebooks that trained them. They are left out of the code hash; a run records the sha256 of every checkpoint
# it loaded (``provenance.json`` → ``checkpoints``), and only a change to one of those makes it stale, so that
# adding or retraining one zoo model does not make every result that imports ``common.zoo`` stale.
UNHASHED = ("zoo/checkpoints", "zoo/notebooks")
# ``common.<name>`` anywhere (imports, dotted uses, docstrings), and ``from common import a as b, (c, d)``
_IMPORT_RE = re.compile(r"\bcommon\.([A-Za-z_][A-Za-z0-9_]*)|from\s+common\s+import\s+(\([^)]*\)|[^\n;#]*)")
_scan_cache: dict[tuple, frozenset] = {}


def _code_files(dependency: Path, common_root: Path):
    """The files of one ``common/`` dependency that count as code (not the folders in :data:`UNHASHED`)."""
    if dependency.is_file():
        yield dependency
        return
    unhashed = [common_root / u for u in UNHASHED]
    for path in _files(dependency):
        if not any(path.is_relative_to(u) for u in unhashed):
            yield path


def _imported_names(path: Path) -> frozenset:
    """The ``common.<name>`` imports in one .py/.ipynb file (memoised on the file's mtime and size)."""
    stat = path.stat()
    key = (path, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    if key not in _scan_cache:
        names = set()
        for match in _IMPORT_RE.finditer(path.read_text(errors="replace")):
            if match.group(1):
                names.add(match.group(1))
                continue
            # "a as b, c" or "(a,\n b as c)": the first word of each comma-separated item (JSON-escaped
            # newlines of a notebook's source included)
            items = match.group(2).replace("\\n", " ").strip("() \t\r\n").split(",")
            names.update(item.split()[0].strip("()\"'") for item in items if item.split())
        _scan_cache[key] = frozenset(n for n in names if n.isidentifier())
    return _scan_cache[key]


def common_dependencies(paper: PaperSpec, common_root: Path | None = None) -> list[Path]:
    """The parts of ``common/`` a paper's code and notebooks import (the harness always counts).

    Found by scanning for ``common.<name>`` in the paper's ``.py`` and ``.ipynb`` files, and then
    in those modules, so that adding an unrelated module to ``common/`` does not make every result stale.
    Only source files are scanned (never checkpoints or data), and each file once per version.
    """
    common_root = common_root or REPO_ROOT / "common"
    found: set[Path] = {common_root / "__init__.py", common_root / "harness"}
    queue = [p for p in _files(paper.root) if p.suffix in (".py", ".ipynb")]
    seen: set[Path] = set()
    while queue:
        path = queue.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for name in _imported_names(path):
            for candidate in (common_root / f"{name}.py", common_root / name):
                if candidate.exists() and candidate not in found:
                    found.add(candidate)
                    queue += [p for p in _code_files(candidate, common_root) if p.suffix in (".py", ".ipynb")]
    return sorted(found)


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _extras_pins() -> dict[str, str]:
    """``requirements-extras.lock``: normalised distribution name → its line (re-read when the file changes)."""
    if not EXTRAS_LOCK.is_file():
        return {}
    stat = EXTRAS_LOCK.stat()
    key = ("extras-lock", EXTRAS_LOCK, stat.st_mtime_ns, stat.st_size)
    if key not in _scan_cache:
        _scan_cache[key] = {_normalise(line.split("==")[0].strip()): line.strip()
                            for line in EXTRAS_LOCK.read_text().splitlines()
                            if "==" in line and not line.lstrip().startswith("#")}
    return _scan_cache[key]


@cache
def _installed_modules() -> dict[str, tuple[str, ...]]:
    """Top-level import name → normalised names of the installed distributions that provide it."""
    return {module: tuple(_normalise(d) for d in distributions)
            for module, distributions in metadata.packages_distributions().items()}


_METADATA_CALL = re.compile(r"""\b(?:files|distribution|version|metadata)\(\s*["']([A-Za-z0-9_.-]+)["']""")


def extras_pins(paper: PaperSpec, common_root: Path | None = None) -> list[str]:
    """The ``requirements-extras.lock`` lines of the distributions a paper's code uses.

    A distribution counts when its top-level module is imported (``import x`` / ``from x``), or when its
    name is passed to an ``importlib.metadata`` call such as ``files`` (data read from a wheel, as tubelex does), in
    the paper's or its ``common/`` dependencies' sources. Only these pins enter the paper's code hash, so
    a new single-paper dependency does not make every result stale.
    """
    common_root = common_root or REPO_ROOT / "common"
    sources = [p for p in _files(paper.root) if p.suffix in (".py", ".ipynb")]
    for dependency in common_dependencies(paper, common_root):
        sources += [p for p in _code_files(dependency, common_root) if p.suffix in (".py", ".ipynb")]
    pins = _extras_pins()
    used = set().union(*(_distributions_in(path, frozenset(pins)) for path in sources))
    return sorted(pins[name] for name in used)


def _distributions_in(path: Path, pinned: frozenset) -> frozenset:
    """The pinned (normalised) distributions one source file uses (memoised on the file's mtime and size)."""
    stat = path.stat()
    key = ("extras", path, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, pinned)
    if key not in _scan_cache:
        text = path.read_text(errors="replace")
        used = {_normalise(name) for name in _METADATA_CALL.findall(text)} & pinned
        for module, distributions in _installed_modules().items():
            if set(distributions) & pinned and module in text and re.search(
                    rf"\b(?:import|from)[ \t]+{re.escape(module)}\b", text):
                used |= set(distributions) & pinned
        _scan_cache[key] = frozenset(used)
    return _scan_cache[key]


def hashed_files(paper: PaperSpec, common_root: Path | None = None) -> list[Path]:
    """Every file whose bytes :func:`code_hash` reads: the paper's, its ``common/`` code, the lock.

    (``requirements-extras.lock`` enters only through :func:`extras_pins`, line by line.)
    """
    common_root = common_root or REPO_ROOT / "common"
    files = list(_files(paper.root))
    for dependency in common_dependencies(paper, common_root):
        files += list(_code_files(dependency, common_root))
    return sorted(set(files) | ({LOCK_FILE} if LOCK_FILE.is_file() else set()))


def code_hash(paper: PaperSpec, common_root: Path | None = None) -> str:
    """sha256 over the paper's code and notebooks, the parts of ``common/`` it uses, the lock file, and the
    pins of the single-paper dependencies it uses (:func:`extras_pins`).

    Goldens (``expected/``), the paper's README and its unit tests are excluded: they do not
    change what a run computes; so are the zoo's checkpoints and training notebooks (:data:`UNHASHED`),
    which a run covers by the sha256 of the checkpoints it loaded (:func:`stale_reason`).
    Results whose stored hash differs are stale.
    """
    digest = hashlib.sha256()
    common_root = common_root or REPO_ROOT / "common"
    entries = [("paper", paper.root, p) for p in _files(paper.root)]
    for dependency in common_dependencies(paper, common_root):
        entries += [("common", common_root, p) for p in _code_files(dependency, common_root)]
    for label, folder, path in sorted(entries, key=lambda e: (e[0], e[2].relative_to(e[1]).as_posix())):
        digest.update(f"{label}/{path.relative_to(folder).as_posix()}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    if LOCK_FILE.is_file():
        digest.update(b"lock\0" + LOCK_FILE.read_bytes())
    for line in extras_pins(paper, common_root):
        digest.update(b"extras\0" + line.encode() + b"\0")
    return digest.hexdigest()


def checkpoint_changes(recorded: dict, checkpoint_dir: Path | None = None, manifests: dict | None = None) -> list[str]:
    """The checkpoints in ``recorded`` (``{name: sha256}``, from a run's provenance) that changed since, and
    those in ``manifests`` (``{name: sha256 of the manifest file}``) whose manifest was edited since.

    The manifest's sha256 stands for the weights: :func:`common.zoo.load_checkpoint` refuses a file that does
    not match its manifest, so a run cannot load anything else.
    """
    checkpoint_dir = checkpoint_dir or REPO_ROOT / "common" / "zoo" / "checkpoints"
    changed = []
    for name, sha in sorted((recorded or {}).items()):
        manifest = checkpoint_dir / f"{name}.json"
        current = json.loads(manifest.read_text()).get("sha256") if manifest.is_file() else None
        if current != sha:
            changed.append(f"{name} ({'removed' if current is None else 'retrained'})")
    for name, sha in sorted((manifests or {}).items()):
        if any(c.startswith(f"{name} (") for c in changed):
            continue  # already reported as retrained or removed
        manifest = checkpoint_dir / f"{name}.json"
        if not manifest.is_file():
            changed.append(f"{name} (removed)")
        elif hashlib.sha256(manifest.read_bytes()).hexdigest() != sha:
            changed.append(f"{name} (manifest edited)")
    return changed


def stale_reason(prov: dict, paper: PaperSpec, common_root: Path | None = None) -> str | None:
    """Why results with provenance ``prov`` are not what the current tree computes, or None when they are.

    Stale when the code hash differs (the paper, the ``common/`` code it imports, the locks) or when a zoo
    checkpoint the run loaded was retrained, removed, or its manifest edited.
    """
    if prov.get("code_hash") != code_hash(paper, common_root):
        return "code changed (paper, imported common/ modules or the lock)"
    common_root = common_root or REPO_ROOT / "common"
    changed = checkpoint_changes(prov.get("checkpoints") or {}, common_root / "zoo" / "checkpoints",
                                 prov.get("checkpoint_manifests") or {})
    if changed:
        return "zoo checkpoint changed: " + ", ".join(changed)
    return None


def input_hash(files_hash: str, parameters: dict) -> str:
    """The code hash combined with the effective parameters of every notebook."""
    blob = json.dumps(parameters, sort_keys=True, default=str).encode()
    return hashlib.sha256(files_hash.encode() + b"\0" + blob).hexdigest()


def code_paths(paper: PaperSpec, common_root: Path | None = None) -> list[Path]:
    """What a run of ``paper`` depends on: its folder, the parts of ``common/`` it imports, the lock."""
    return [paper.root, *common_dependencies(paper, common_root), LOCK_FILE, EXTRAS_LOCK, REPO_ROOT / "pyproject.toml"]


def git_state(root: Path = REPO_ROOT, paths: list[Path] | None = None) -> dict:
    """The commit, and whether the working tree differs from it (``dirty``).

    With ``paths`` (a run's :func:`code_paths`), only those count: a run of one paper is not dirty because
    another paper is being edited in the same checkout. Without, the whole tree counts.
    """
    def git(*args):
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--verify", "--quiet", "HEAD") or None
    scope = [os.path.relpath(p, root) for p in paths] if paths else ["."]
    # Files the scoreboard regenerates (and results) do not change what a run computes.
    status = git(
        "status", "--porcelain", "--", *scope, ":(exclude)results", ":(exclude).cache", ":(exclude)runs",
        ":(exclude)README.md", ":(exclude)CITATION.cff", ":(glob,exclude)papers/*/README.md",
    )
    return {"commit": commit, "dirty": bool(status)}


def numeric_env() -> dict:
    """The environment variables that select numeric kernels (torch, MKL, oneDNN, OpenBLAS, threads)."""
    from .goldens import NUMERIC_ENV

    return {name: os.environ.get(name) for name in NUMERIC_ENV}


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
