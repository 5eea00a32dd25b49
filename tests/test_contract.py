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
