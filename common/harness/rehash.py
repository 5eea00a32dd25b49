"""Carry results across a change that does not alter what any run computes (``python -m common.harness rehash``).

A result is current when its stored code hash equals :func:`provenance.code_hash` of the tree. Some changes
alter that hash without altering a single computed number: a new definition of the hash itself, a faster
dependency scan in the harness, a docstring in a module every paper imports. Re-running every paper's full
profile for those would cost hours of GPU time and prove nothing new. ``rehash`` stamps the new hash on the
results that qualify, and only on those. Both ``base`` and ``HEAD`` are judged in clean temporary checkouts
(``git worktree``), each by its own harness, so untracked files, hidden edits and symbolic links are seen as a
run would see them:

1. the working tree has no changes, untracked files included, ``base`` is an ancestor of ``HEAD``, and the
   working tree hashes every paper as the checkout of ``HEAD`` does;
2. at ``base`` the result was current (``base``'s harness computes the code hash its ``provenance.json``
   stores, and its recorded zoo checkpoints, if any, are ``base``'s), and nothing under
   ``results/<slug>/<profile>/`` changed since ``base`` (no run, no edit);
3. the files that changed are found by comparing, byte for byte, every file either harness hashes for the
   paper (:func:`provenance.hashed_files` at ``base`` and at ``HEAD``; a file present on one side only
   counts), plus the paper's pins in ``requirements-extras.lock``; each must be in ``allowed``, the files the
   person running this declares do not change any computed value, and the hash must not have changed without
   one of them changing;
4. each declared file is *checked*: a Python module must have the same syntax tree at ``base`` and at ``HEAD``
   once docstrings are dropped (parsed from its bytes, so a coding cookie counts; comments and layout never
   reach the tree), and a notebook the same code cells and tags compared the same way, with the cell tagged
   ``parameters`` identical character for character (papermill reads it line by line); markdown, outputs and
   other metadata are free. A docstring-only change counts as checked only if no file the result hashes reads
   docstrings or source (``__doc__`` other than an argparse ``description``, ``getdoc``, ``getsource``,
   ``pydoc``). A declared file that fails, or that cannot be checked (YAML, a lock, data, a file added or
   deleted), refuses the results that depend on it unless ``force`` is given: then the stamp lists it under
   ``forced``, as a declaration a person vouched for and the machine could not verify.

A result that qualifies keeps its metrics, claims, notebooks and ``git`` record; its ``code_hash`` and
``input_hash`` become the current ones, ``checkpoints`` (when it had none) becomes every zoo checkpoint of
``base`` if it imports ``common.zoo`` (before checkpoint-granular hashing a run depended on all of them),
``checkpoint_manifests`` (when it had none) the sha256 of those checkpoints' manifests at ``base``, and
``rehashed`` gains an entry naming ``base``, the old hash, the changed files, those whose check passed
(``verified``) and those carried by ``force`` (``forced``), and the reason. Known gaps: code that reads its
own source file (``open(__file__)``), line numbers or type comments is not detected. A forced declaration
is checked by nothing but ``make test``, which compares re-run ci notebooks with the committed metrics only on
the CPU and kernels that made them and never re-runs a full profile.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

from . import provenance, runner, spec
from .io import atomic_write_json, read_json

RESULTS_ROOT = spec.REPO_ROOT / "results"
EXTRAS = "requirements-extras.lock"


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd or spec.REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


# --- the check of one declared file ------------------------------------------------------------------------

_DOC_READERS = {"__doc__", "getdoc", "getsource", "getsourcelines", "pydoc"}


def _reads_docs(tree: ast.AST) -> bool:
    """Whether code reads docstrings or source at run time (``__doc__``, ``getattr(x, "__doc__")``,
    ``inspect.getdoc`` / ``getsource``, ``pydoc``), other than an argparse-style ``description=__doc__...``."""
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "description":
            exempt.update(id(n) for n in ast.walk(node.value))
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Name) and node.id in _DOC_READERS:
            return True
        if isinstance(node, ast.Attribute) and node.attr in _DOC_READERS:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in _DOC_READERS for n in modules + [a.name for a in node.names]):
                return True
        if isinstance(node, (ast.Call, ast.Subscript)):  # getattr(x, "__doc__"), vars(x)["__doc__"]
            parts = node.args if isinstance(node, ast.Call) else [node.slice]
            if any(isinstance(a, ast.Constant) and a.value == "__doc__" for a in parts):
                return True
    return False


def _python_fingerprint(source: bytes | str) -> str | None:
    """The syntax tree of ``source`` without docstrings, or ``None`` if it does not parse or reads docstrings
    (:func:`_reads_docs`).

    Parsed from bytes where given, so a coding cookie is honoured. A docstring is the first statement of a
    module, class or function when it is a string constant; comments and layout never reach the tree.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    if _reads_docs(tree):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _notebook_fingerprint(text: bytes | str) -> str | None:
    """The code cells of a notebook (tags included) compared as :func:`_python_fingerprint`, the ``parameters``
    cell by its exact text; markdown, outputs and other metadata are free. A cell that does not parse as
    Python (IPython magics) is compared by its exact source."""
    try:
        cells = json.loads(text)["cells"]
    except (ValueError, KeyError, TypeError):
        return None
    code = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        tags = sorted(cell.get("metadata", {}).get("tags", []))
        exact = "parameters" in tags
        code.append([tags, source if exact else (_python_fingerprint(source) or source)])
    return json.dumps(code)


def same_computation(path: str, before: bytes | None, after: bytes | None) -> bool:
    """Whether ``path``'s change from ``before`` to ``after`` (its bytes; ``None``: absent) provably computes
    the same: :func:`_python_fingerprint` for ``.py``, :func:`_notebook_fingerprint` for ``.ipynb``; anything
    else, or a file added or deleted, is not checkable."""
    if before is None or after is None:
        return False
    fingerprint = {".py": _python_fingerprint, ".ipynb": _notebook_fingerprint}.get(Path(path).suffix)
    if fingerprint is None:
        return False
    old, new = fingerprint(before), fingerprint(after)
    return old is not None and old == new


def _show(commit: str, path: str, cwd: Path | None = None) -> bytes | None:
    done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=cwd or spec.REPO_ROOT, capture_output=True,
                          check=False)
    return done.stdout if done.returncode == 0 else None


def computes_the_same(base: str, path: str, head: str = "HEAD", *, cwd: Path | None = None) -> bool:
    """:func:`same_computation` of ``path`` between two commits (as stored in git)."""
    return same_computation(path, _show(base, path, cwd), _show(head, path, cwd))


def _reads_docstrings(path: str, text: bytes) -> bool:
    """Whether a hashed source file reads docstrings or source at run time (:func:`_reads_docs`); a notebook's
    code cells are parsed one by one, and a file or cell that does not parse counts as reading them."""
    sources = [text]
    if path.endswith(".ipynb"):
        try:
            cells = json.loads(text)["cells"]
        except (ValueError, KeyError, TypeError):
            return True
        sources = ["".join(c.get("source", "")) if isinstance(c.get("source"), list) else c.get("source", "")
                   for c in cells if c.get("cell_type") == "code"]
    for source in sources:
        try:
            if _reads_docs(ast.parse(source)):
                return True
        except (SyntaxError, ValueError):
            return True
    return False


# --- snapshots of base and HEAD -------------------------------------------------------------------------------

_SNAPSHOT = r"""
import json, sys
from pathlib import Path
from common.harness import provenance, spec
root = spec.REPO_ROOT
def hashed(paper):
    if hasattr(provenance, "hashed_files"):
        return provenance.hashed_files(paper)
    common_root = root / "common"
    files = list(provenance._files(paper.root))
    for dependency in provenance.common_dependencies(paper, common_root):
        files += list(provenance._code_files(dependency, common_root))
    return sorted(set(files) | ({provenance.LOCK_FILE} if provenance.LOCK_FILE.is_file() else set()))
out = {}
for slug in spec.list_papers():
    paper = spec.load(slug)
    code = provenance.code_hash(paper)
    current = {}
    for profile in spec.PROFILES:
        prov_file = root / "results" / slug / profile / "provenance.json"
        if prov_file.is_file():
            prov = json.loads(prov_file.read_text())
            ok = prov.get("code_hash") == code
            if ok and hasattr(provenance, "stale_reason"):
                ok = provenance.stale_reason(prov, paper) is None
            current[profile] = ok
    out[slug] = {"hash": code, "current": current,
                 "files": sorted(p.relative_to(root).as_posix() for p in hashed(paper)),
                 "extras": provenance.extras_pins(paper) if hasattr(provenance, "extras_pins") else []}
print(json.dumps(out))
"""


@contextmanager
def _checkout(commit: str):
    """A temporary ``git worktree`` of ``commit`` (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="rehash-") as scratch:
        tree = Path(scratch) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            yield tree
        finally:
            _git("worktree", "remove", "--force", str(tree))


def _snapshot(tree: Path) -> dict:
    """``{slug: {hash, current: {profile: bool}, files, extras}}`` as the harness of ``tree`` sees ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _SNAPSHOT], cwd=tree, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"could not snapshot {tree}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read(tree: Path, path: str) -> bytes | None:
    target = tree / path
    return target.read_bytes() if target.is_file() else None  # follows symbolic links, as a run does


def _zoo_checkpoints_at(base: str) -> tuple[dict[str, str], dict[str, str]]:
    """``({name: sha256 of the weights}, {name: sha256 of the manifest file})`` of the zoo at ``base``."""
    import hashlib

    names = _git("ls-tree", "--name-only", f"{base}:common/zoo/checkpoints").split("\n")
    weights, manifests = {}, {}
    for name in filter(None, names):
        if name.endswith(".json"):
            blob = _show(base, f"common/zoo/checkpoints/{name}")
            weights[name[:-5]] = json.loads(blob).get("sha256")
            manifests[name[:-5]] = hashlib.sha256(blob).hexdigest()
    return dict(sorted(weights.items())), dict(sorted(manifests.items()))


# --- rehash ---------------------------------------------------------------------------------------------------

def rehash(base: str, allowed: list[str], reason: str, *, dry_run: bool = False,
           force: bool = False) -> list[tuple[str, str, str]]:
    """Stamp the current code hash on the results that qualify (see the module docstring).

    Returns ``(slug, profile, outcome)`` rows; ``outcome`` is ``"rehashed"``, ``"already current"`` or why not.
    ``force`` accepts declared files whose check fails or that cannot be checked (they are named in the stamp).
    """
    if not reason.strip():
        raise ValueError("give the reason the allowed files do not change any computed value")
    dirty = _git("status", "--porcelain").strip()
    if dirty:
        raise RuntimeError(f"the tree has uncommitted changes or untracked files; commit or remove them:\n{dirty}")
    if subprocess.run(["git", "merge-base", "--is-ancestor", base, "HEAD"], cwd=spec.REPO_ROOT).returncode != 0:
        raise RuntimeError(f"{base} is not an ancestor of HEAD")
    base = _git("rev-parse", base).strip()
    head = _git("rev-parse", "HEAD").strip()
    allowed_set = set(allowed)
    results_changed = set(_git("diff", "-z", "--name-only", "--no-renames", base, head, "--", "results")
                          .split("\0"))
    zoo_at_base, manifests_at_base = _zoo_checkpoints_at(base)
    with ExitStack() as stack:
        base_tree, head_tree = stack.enter_context(_checkout(base)), stack.enter_context(_checkout(head))
        at_base, at_head = _snapshot(base_tree), _snapshot(head_tree)
        plans, relevant_anywhere = [], set()
        for slug in spec.list_papers():
            paper = spec.load(slug)
            here = provenance.code_hash(paper)
            if slug in at_head and at_head[slug]["hash"] != here:
                raise RuntimeError(f"{slug}: the working tree hashes differently from a checkout of HEAD "
                                   "(skip-worktree or assume-unchanged files?)")
            for profile in spec.PROFILES:
                prov_file = RESULTS_ROOT / slug / profile / "provenance.json"
                if not prov_file.is_file():
                    continue
                prov = read_json(prov_file)
                if provenance.stale_reason(prov, paper) is None:
                    plans.append((slug, profile, "already current", None))
                    continue
                if not at_base.get(slug, {}).get("current", {}).get(profile, False):
                    plans.append((slug, profile, f"not current at {base[:10]}", None))
                    continue
                folder = f"results/{slug}/{profile}/"
                if any(p.startswith(folder) for p in results_changed):
                    plans.append((slug, profile, f"its results changed since {base[:10]} (re-run or edited)", None))
                    continue
                files = set(at_base[slug]["files"]) | set(at_head.get(slug, {}).get("files", []))
                relevant = sorted(p for p in files if _read(base_tree, p) != _read(head_tree, p))
                if at_base[slug]["extras"] != at_head.get(slug, {}).get("extras"):
                    relevant.append(EXTRAS)
                relevant_anywhere.update(relevant)
                if not relevant:
                    plans.append((slug, profile, "its hash changed, but none of the files it hashes did", None))
                    continue
                undeclared = [p for p in relevant if p not in allowed_set]
                if undeclared:
                    plans.append((slug, profile, "changed and not declared: " + ", ".join(undeclared), None))
                    continue
                plans.append((slug, profile, None, (paper, prov, prov_file, relevant, files)))
        unused = sorted(allowed_set - relevant_anywhere)
        if unused:
            raise ValueError(f"declared files that no stale result hashes, or that did not change since "
                             f"{base[:10]}: {unused}")
        verified = {p: p != EXTRAS and same_computation(p, _read(base_tree, p), _read(head_tree, p))
                    for p in relevant_anywhere}
        reads_docs = {p for p in set().union(*(set(s["files"]) for s in at_head.values()))
                      if p.endswith((".py", ".ipynb")) and _reads_docstrings(p, _read(head_tree, p) or b"")}
    rows = []
    for slug, profile, outcome, plan in plans:
        if plan is None:
            rows.append((slug, profile, outcome))
            continue
        paper, prov, prov_file, relevant, files = plan
        readers = sorted(files & reads_docs)
        checked = [p for p in relevant if verified[p] and not readers]
        unchecked = [p for p in relevant if p not in checked]
        if unchecked and not force:
            why = f" (its code reads docstrings or source: {', '.join(readers)})" if readers else ""
            rows.append((slug, profile, "declared, but changes code or cannot be checked (re-run it, or --force "
                         f"after checking by hand): {', '.join(unchecked)}{why}"))
            continue
        _, _, effective = runner.prepare(slug, profile, {})
        code = provenance.code_hash(paper)
        params_key = {paper.notebook_key(nb): p for nb, p in effective.items()}
        stamp = {"base": base, "old_code_hash": prov.get("code_hash"), "changed": relevant, "verified": checked,
                 "forced": unchecked, "reason": reason.strip(), "date": provenance.now()}
        new = {**prov, "code_hash": code, "input_hash": provenance.input_hash(code, params_key)}
        if "checkpoints" not in prov:
            uses_zoo = (spec.REPO_ROOT / "common" / "zoo") in provenance.common_dependencies(paper)
            new["checkpoints"] = zoo_at_base if uses_zoo else {}
        if "checkpoint_manifests" not in prov:  # before manifests were recorded: those of base
            new["checkpoint_manifests"] = {n: manifests_at_base[n] for n in new["checkpoints"]
                                           if n in manifests_at_base}
        new["rehashed"] = [*prov.get("rehashed", []), stamp]
        still = provenance.stale_reason(new, paper)
        if still:  # e.g. a checkpoint it loaded was retrained after base: the stamp would not make it current
            rows.append((slug, profile, f"left stale: {still}"))
            continue
        if not dry_run:
            atomic_write_json(prov_file, new)
        rows.append((slug, profile, "rehashed" + (f" (forced: {', '.join(unchecked)})" if unchecked else "")))
    return rows


def main(base: str, allowed: list[str], reason: str, dry_run: bool = False, force: bool = False) -> int:
    """Print one row per result; exit status 1 when any result stays stale."""
    rows = rehash(base, allowed, reason, dry_run=dry_run, force=force)
    width = max((len(f"{s}/{p}") for s, p, _ in rows), default=10)
    for slug, profile, outcome in rows:
        print(f"{slug + '/' + profile:<{width}}  {outcome}")
    done = sum(o.startswith("rehashed") for *_, o in rows)
    refused = [r for r in rows if not (r[2].startswith("rehashed") or r[2] == "already current")]
    print(f"{'would rehash' if dry_run else 'rehashed'} {done}, already current "
          f"{sum(o == 'already current' for *_, o in rows)}, left stale {len(refused)}")
    return 1 if refused else 0


__all__ = ["computes_the_same", "same_computation", "rehash", "main"]
