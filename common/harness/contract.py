"""The paper contract as code: ``problems(slug)`` lists every violation (empty = conforms).

Documented in CONTRIBUTING.md; enforced for every paper by ``tests/test_contract.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import parameters, spec
from .io import read_json

NBVAL_MARK = "NBVAL_CHECK_OUTPUT"


def notebook_problems(path: Path) -> list[str]:
    """Stripped, kernelspec python3, one parameters cell with a seed, claims cells last."""
    name = path.name
    try:
        nb = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{name}: unreadable notebook: {exc}"]
    problems = []
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"{name}: kernelspec must be python3, not {kernel!r}")
    if "papermill" in nb.get("metadata", {}):
        problems.append(f"{name}: papermill metadata must be stripped (nbstripout)")
    cells = nb.get("cells", [])
    for index, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
            problems.append(f"{name}: cell {index} has outputs or an execution count (strip the notebook)")
        if "papermill" in cell.get("metadata", {}) or "execution" in cell.get("metadata", {}):
            problems.append(f"{name}: cell {index} carries execution metadata (strip the notebook)")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{name}: needs exactly one cell tagged 'parameters', found {len(tagged)}")
    else:
        try:
            declared = parameters.declared_parameters(path)
        except parameters.ParameterError as exc:
            problems.append(str(exc))
        else:
            if not isinstance(declared.get("seed"), int) or isinstance(declared.get("seed"), bool):
                problems.append(f"{name}: the parameters cell must define an int `seed` (goldens use the seed spread)")
    code = [c for c in cells if c.get("cell_type") == "code"]
    if not code or NBVAL_MARK not in "".join(code[-1].get("source", "")) or "claim_verdicts()" not in "".join(code[-1].get("source", "")):
        problems.append(f"{name}: the last code cell must be '# {NBVAL_MARK}' + 'claim_verdicts()'")
    if len(code) < 2 or "show_claims()" not in "".join(code[-2].get("source", "")):
        problems.append(f"{name}: the second-to-last code cell must call show_claims()")
    if not any(c.get("cell_type") == "markdown" for c in cells):
        problems.append(f"{name}: a notebook needs markdown narrative")
    return problems


def problems(slug: str, papers_root: Path | None = None) -> list[str]:
    root = spec.paper_dir(slug, papers_root)
    try:
        paper = spec.load(slug, papers_root)
    except (spec.PaperSpecError, spec.UnknownPaperError) as exc:
        return [str(exc)]
    found = []
    if not (root / "__init__.py").is_file():
        found.append(f"{slug}: missing __init__.py (papers are importable as papers.{slug})")
    modules = [p for p in root.glob("*.py") if p.name != "__init__.py"] + [p for p in root.glob("*/__init__.py")
                                                                          if p.parent.name not in ("tests", "notebooks", "expected")]
    if not modules:
        found.append(f"{slug}: no implementation module (papers/{slug}/<module>.py)")
    for module in root.glob("*.py"):
        text = module.read_text()
        if not text.lstrip().startswith(('"""', "'''", "r\"\"\"")):
            found.append(f"{slug}: {module.name} needs a module docstring explaining the method")
    tests = list((root / "tests").glob("test_*.py"))
    if not tests:
        found.append(f"{slug}: no unit tests in papers/{slug}/tests/test_*.py")
    readme = root / "README.md"
    if not readme.is_file():
        found.append(f"{slug}: missing README.md")
    elif "<!-- claims:begin -->" not in readme.read_text() or "<!-- claims:end -->" not in readme.read_text():
        found.append(f"{slug}: README.md needs the <!-- claims:begin --> / <!-- claims:end --> markers")

    declared = {}
    listed = set(paper.notebooks)
    on_disk = {p.name for p in (root / "notebooks").glob("*.ipynb")}
    for extra in sorted(on_disk - listed):
        found.append(f"{slug}: notebooks/{extra} is not listed in paper.yaml")
    for notebook in paper.notebooks:
        path = paper.notebook_path(notebook)
        if not path.is_file():
            found.append(f"{slug}: notebook {notebook} listed in paper.yaml does not exist")
            continue
        found += [f"{slug}: {p}" for p in notebook_problems(path)]
        try:
            declared[notebook] = parameters.declared_parameters(path)
        except parameters.ParameterError:
            pass

    for profile in spec.PROFILES:
        if profile == "ci":
            continue
        for notebook in declared:
            for name, value in paper.overrides(profile, notebook).items():
                if name not in declared[notebook]:
                    found.append(f"{slug}: profiles.{profile}.{paper.notebook_key(notebook)} sets unknown parameter {name!r}")
                    continue
                try:
                    parameters.check_value(notebook, name, value, declared[notebook][name])
                except parameters.ParameterError as exc:
                    found.append(f"{slug}: profiles.{profile}: {exc}")

    golden = root / "expected" / "ci.json"
    if not golden.is_file():
        found.append(f"{slug}: missing expected/ci.json (run `make bless PAPER={slug}`)")
    else:
        data = read_json(golden)
        recorded = {name for metrics in data.get("notebooks", {}).values() for name in metrics}
        recorded |= {name for names in data.get("volatile", {}).values() for name in names}
        for notebook in paper.notebooks:
            if paper.notebook_key(notebook) not in data.get("notebooks", {}):
                found.append(f"{slug}: expected/ci.json has no goldens for {notebook}")
        if "provenance" not in data:
            found.append(f"{slug}: expected/ci.json lacks provenance")
        # Notebooks record the same metric names at every profile (only the values change), so
        # the ci goldens list every metric a claim can read, full-only claims included.
        for claim in paper.claims:
            missing = [m for m in claim.metrics if m not in recorded]
            if missing:
                found.append(f"{slug}: claim {claim.id} reads metric(s) that no notebook records: {missing}")
    return found
