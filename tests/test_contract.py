"""Every paper folder conforms to the contract in CONTRIBUTING.md."""

import pytest

from common.harness import contract, goldens, spec
from common.harness.io import read_json
from common.harness.scoreboard import catalog

PAPERS = spec.list_papers()


def test_there_is_at_least_one_paper():
    assert PAPERS, "no papers/<slug>/paper.yaml found"


@pytest.mark.parametrize("slug", PAPERS)
def test_paper_conforms(slug):
    problems = contract.problems(slug)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("slug", PAPERS)
def test_goldens_accept_the_earlier_machines_values(slug):
    """`python -m common.harness goldens-check`: the values other machines gave at earlier blessings (stored
    under `previous` in expected/ci.json) pass the current goldens. No runs: milliseconds per paper."""
    path = spec.paper_dir(slug) / "expected" / "ci.json"
    if not path.is_file():
        pytest.skip("no goldens (test_paper_conforms reports it)")
    failures, _ = goldens.check_file(read_json(path))
    assert not failures, "\n".join(map(str, failures))


@pytest.mark.parametrize("slug", PAPERS)
def test_slug_is_in_the_catalog(slug):
    assert slug in {item["slug"] for item in catalog()}


def test_catalog_lists_41_unique_papers():
    slugs = [item["slug"] for item in catalog()]
    assert len(slugs) == 41 and len(set(slugs)) == 41


NOTEBOOKS = sorted(str(p) for p in spec.REPO_ROOT.glob("papers/*/notebooks/*.ipynb")) + sorted(
    str(p) for p in spec.REPO_ROOT.glob("common/zoo/notebooks/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: "/".join(p.split("/")[-3:]))
def test_every_parameter_is_overridable(path):
    """papermill reads each assignment of a ``parameters`` cell with a regex and only warns ("Unable to parse
    line") on one it cannot read (e.g. a comment holding ``=``): that parameter silently stops being overridable
    by ``PARAMS`` and profiles. Every name the cell assigns must be one papermill reports."""
    import ast

    import nbformat
    import papermill

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    assigned = [t.id for node in ast.parse(cells[0].source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    missing = sorted(set(assigned) - set(papermill.inspect_notebook(path)))
    assert not missing, f"papermill cannot read the parameters {missing} (no '=' in a parameter's comment)"
