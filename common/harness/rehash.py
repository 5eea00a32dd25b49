"""Carry results across a change that does not alter what any run computes (``python -m common.harness rehash``).

A result is current when its stored code hash equals :func:`provenance.code_hash` of the tree. Some changes
alter that hash without altering a single computed number: a new definition of the hash itself, a faster
dependency scan in the harness, a docstring in a module every paper imports. Re-running every paper's full
profile for those would cost hours of GPU time and prove nothing new. ``rehash`` stamps the new hash on the
results that qualify, and only on those:

1. the tree is clean, and ``base`` is an ancestor of ``HEAD``;
2. at ``base`` the result was current: in a checkout of ``base``, ``base``'s own harness computes the code
   hash the result's ``provenance.json`` stores (and its recorded zoo checkpoints, if any, are ``base``'s),
   and that ``provenance.json`` is the same file now as at ``base`` (no run since);
3. every file that differs between ``base`` and ``HEAD`` and lies in what the run depends on now (the
   paper's folder, the ``common/`` code it imports, the lock, ``pyproject.toml``) is in ``allowed``: the
   files the person running this declares do not change any computed value. Anything else refuses that
   result, which then stays stale until it is re-run;
4. and each declared file is *checked*: a Python module must have the same syntax tree at ``base`` and at
   ``HEAD`` once docstrings are dropped (comments and layout never reach the tree), and a notebook the same
   code cells (and cell tags) compared the same way; markdown is free. A declared file that fails the check,
   or that cannot be checked (YAML, a lock, data, a file added or deleted, a module that reads ``__doc__``),
   refuses every result that depends on it unless ``force`` is given: then the stamp lists it under
   ``forced``, as a declaration a person vouched for and the machine could not verify.

A result that qualifies keeps its metrics, claims, notebooks and ``git`` record; its ``code_hash`` and
``input_hash`` become the current ones, ``checkpoints`` (when it had none) becomes every zoo checkpoint of
``base`` if it imports ``common.zoo`` (before checkpoint-granular hashing a run depended on all of them),
``checkpoint_manifests`` (when it had none) the sha256 of those checkpoints' manifests at ``base``, and
``rehashed`` gains an entry naming ``base``, the old hash, the changed files and the reason, so the stamp is
never silent; it names the files whose check passed (``verified``) and those carried by ``force``
(``forced``). The committed ci results are still checked against a fresh run by ``make test``
(``tests/test_notebooks.py`` compares every metric on the blessing machine), which is how a wrong forced
declaration is caught at ci; nothing re-checks a forced full profile.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

from . import provenance, runner, spec
from .io import atomic_write_json, read_json

RESULTS_ROOT = spec.REPO_ROOT / "results"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=spec.REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _show(commit: str, path: str, cwd: Path | None = None) -> str | None:
    """The text of ``path`` at ``commit``, or ``None`` where the file does not exist there."""
    done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=cwd or spec.REPO_ROOT, capture_output=True,
                          check=False)
    return done.stdout.decode("utf-8", errors="replace") if done.returncode == 0 else None


def _python_fingerprint(source: str) -> str | None:
    """The syntax tree of ``source`` without docstrings, or ``None`` if it does not parse or reads ``__doc__``.

    Comments and layout never reach the tree; a docstring is the first statement of a module, class or function
    when it is a string constant. A module that reads ``__doc__`` could compute from its docstring, so it is
    not checkable.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Name) and node.id == "__doc__") or (
                isinstance(node, ast.Attribute) and node.attr == "__doc__"):
            return None
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def _notebook_fingerprint(text: str) -> str | None:
    """The code cells of a notebook (tags included) compared as :func:`_python_fingerprint`; markdown is free.

    A cell that does not parse as Python (IPython magics) is compared by its exact source.
    """
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
        if "__doc__" in source:
            return None
        code.append([tags, _python_fingerprint(source) or source])
    return json.dumps(code)


def computes_the_same(base: str, path: str, head: str = "HEAD", *, cwd: Path | None = None) -> bool:
    """Whether ``path`` provably changes no computation between ``base`` and ``head`` (see the module docstring)."""
    before, after = _show(base, path, cwd), _show(head, path, cwd)
    if before is None or after is None:
        return False  # added or deleted: nothing to compare with
    fingerprint = {".py": _python_fingerprint, ".ipynb": _notebook_fingerprint}.get(Path(path).suffix)
    if fingerprint is None:
        return False
    old, new = fingerprint(before), fingerprint(after)
    return old is not None and old == new


def _depends_on(paper: spec.PaperSpec, path: str) -> bool:
    """Whether the repository path ``path`` is part of what a run of ``paper`` depends on now."""
    common_root = spec.REPO_ROOT / "common"
    prefixes = [paper.root, provenance.LOCK_FILE, provenance.EXTRAS_LOCK, spec.REPO_ROOT / "pyproject.toml",
                *provenance.common_dependencies(paper, common_root)]
    target = spec.REPO_ROOT / path
    if any(target.is_relative_to(common_root / u) for u in provenance.UNHASHED):
        return False  # checkpoints are covered by their recorded sha256, not by the code hash
    if target.is_relative_to(paper.root):
        relative = target.relative_to(paper.root)
        if set(relative.parts[:-1]) & provenance._SKIP_DIRS or relative.name in provenance._SKIP_FILES:
            return False
    return any(target == p or target.is_relative_to(p) for p in prefixes)


_CURRENT_AT_BASE = r"""
import json, sys
from pathlib import Path
from common.harness import provenance, spec
out = {}
for slug in spec.list_papers():
    paper = spec.load(slug)
    code = provenance.code_hash(paper)
    for profile in spec.PROFILES:
        prov_file = spec.REPO_ROOT / "results" / slug / profile / "provenance.json"
        if prov_file.is_file():
            prov = json.loads(prov_file.read_text())
            ok = prov.get("code_hash") == code
            if ok and hasattr(provenance, "stale_reason"):
                ok = provenance.stale_reason(prov, paper) is None
            out[f"{slug}/{profile}"] = ok
print(json.dumps(out))
"""


def _current_at(base: str) -> dict[str, bool]:
    """``{"slug/profile": current}`` as ``base``'s own harness judged it, in a temporary checkout of ``base``."""
    import os
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rehash-base-") as scratch:
        tree = Path(scratch) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(tree), base)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, "-c", _CURRENT_AT_BASE], cwd=tree, env=env,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"could not judge staleness at {base[:10]}:\n{done.stderr[-2000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            _git("worktree", "remove", "--force", str(tree))


def _zoo_checkpoints_at(base: str) -> tuple[dict[str, str], dict[str, str]]:
    """``({name: sha256 of the weights}, {name: sha256 of the manifest file})`` of the zoo at ``base``."""
    import hashlib

    names = _git("ls-tree", "--name-only", f"{base}:common/zoo/checkpoints").split()
    weights, manifests = {}, {}
    for name in names:
        if name.endswith(".json"):
            done = subprocess.run(["git", "show", f"{base}:common/zoo/checkpoints/{name}"], cwd=spec.REPO_ROOT,
                                  capture_output=True, check=True)
            weights[name[:-5]] = json.loads(done.stdout).get("sha256")
            manifests[name[:-5]] = hashlib.sha256(done.stdout).hexdigest()
    return dict(sorted(weights.items())), dict(sorted(manifests.items()))


def rehash(base: str, allowed: list[str], reason: str, *, dry_run: bool = False,
           force: bool = False) -> list[tuple[str, str, str]]:
    """Stamp the current code hash on the results that qualify (see the module docstring).

    Returns ``(slug, profile, outcome)`` rows; ``outcome`` is ``"rehashed"``, ``"already current"`` or why not.
    ``force`` accepts declared files whose check fails or that cannot be checked (they are named in the stamp).
    """
    if not reason.strip():
        raise ValueError("give the reason the allowed files do not change any computed value")
    dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
    if dirty:
        raise RuntimeError(f"the tree has uncommitted changes; commit first:\n{dirty}")
    if subprocess.run(["git", "merge-base", "--is-ancestor", base, "HEAD"], cwd=spec.REPO_ROOT).returncode != 0:
        raise RuntimeError(f"{base} is not an ancestor of HEAD")
    base = _git("rev-parse", base).strip()
    # --no-renames: a file moved out of a paper counts as a change of that paper, not only of its new place
    changed = sorted(set(_git("diff", "--name-only", "--no-renames", base, "HEAD").split()))
    allowed_set = set(allowed)
    unknown = sorted(allowed_set - set(changed))
    if unknown:
        raise ValueError(f"allowed files that did not change since {base[:10]}: {unknown}")
    verified = {path: computes_the_same(base, path) for path in allowed_set}
    current_at_base = _current_at(base)
    zoo_at_base, manifests_at_base = _zoo_checkpoints_at(base)
    rows = []
    for slug in spec.list_papers():
        paper = spec.load(slug)
        for profile in spec.PROFILES:
            folder = RESULTS_ROOT / slug / profile
            prov_file = folder / "provenance.json"
            if not prov_file.is_file():
                continue
            prov = read_json(prov_file)
            if provenance.stale_reason(prov, paper) is None:
                rows.append((slug, profile, "already current"))
                continue
            if not current_at_base.get(f"{slug}/{profile}", False):
                rows.append((slug, profile, f"not current at {base[:10]}"))
                continue
            rel = prov_file.relative_to(spec.REPO_ROOT).as_posix()
            if rel in changed:
                rows.append((slug, profile, f"re-run since {base[:10]}"))
                continue
            relevant = [p for p in changed if _depends_on(paper, p)]
            undeclared = [p for p in relevant if p not in allowed_set]
            if undeclared:
                rows.append((slug, profile, "changed and not declared: " + ", ".join(undeclared)))
                continue
            unchecked = [p for p in relevant if not verified[p]]
            if unchecked and not force:
                rows.append((slug, profile, "declared, but changes code or cannot be checked (re-run it, or "
                             "--force after checking by hand): " + ", ".join(unchecked)))
                continue
            _, _, effective = runner.prepare(slug, profile, {})
            code = provenance.code_hash(paper)
            params_key = {paper.notebook_key(nb): p for nb, p in effective.items()}
            stamp = {"base": base, "old_code_hash": prov.get("code_hash"), "changed": relevant,
                     "verified": [p for p in relevant if verified[p]], "forced": unchecked,
                     "reason": reason.strip(), "date": provenance.now()}
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
            rows.append((slug, profile, "rehashed"))
    return rows


def main(base: str, allowed: list[str], reason: str, dry_run: bool = False, force: bool = False) -> int:
    for path in sorted(allowed):
        ok = computes_the_same(base, path)
        print(f"{'checked: same code' if ok else 'NOT checkable or code changed':<30}  {path}")
    rows = rehash(base, allowed, reason, dry_run=dry_run, force=force)
    width = max((len(f"{s}/{p}") for s, p, _ in rows), default=10)
    for slug, profile, outcome in rows:
        print(f"{slug + '/' + profile:<{width}}  {outcome}")
    done = sum(o == "rehashed" for *_, o in rows)
    refused = [r for r in rows if r[2] not in ("rehashed", "already current")]
    print(f"{'would rehash' if dry_run else 'rehashed'} {done}, already current "
          f"{sum(o == 'already current' for *_, o in rows)}, left stale {len(refused)}")
    return 0


__all__ = ["computes_the_same", "rehash", "main"]
