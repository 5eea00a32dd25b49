"""Every paper folder conforms to the contract in CONTRIBUTING.md."""

import pytest

from common.harness import contract, spec
from common.harness.scoreboard import catalog

PAPERS = spec.list_papers()


def test_there_is_at_least_one_paper():
    assert PAPERS, "no papers/<slug>/paper.yaml found"


@pytest.mark.parametrize("slug", PAPERS)
def test_paper_conforms(slug):
    problems = contract.problems(slug)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("slug", PAPERS)
def test_slug_is_in_the_catalog(slug):
    assert slug in {item["slug"] for item in catalog()}


def test_catalog_lists_41_unique_papers():
    slugs = [item["slug"] for item in catalog()]
    assert len(slugs) == 41 and len(set(slugs)) == 41
