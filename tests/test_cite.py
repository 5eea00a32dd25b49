"""`make cite`: the artifact is cited by commit and sha256, with a URL only when the git remote is public."""

import subprocess
from pathlib import Path

import pytest
import yaml

from common.harness import cite, spec

FIXTURES = Path(__file__).parent / "fixtures" / "papers"


@pytest.mark.parametrize("remote, url", [
    ("https://github.com/owner/repo.git", "https://github.com/owner/repo"),
    ("https://github.com/owner/repo", "https://github.com/owner/repo"),
    ("https://user:secret-token@gitlab.example.org/group/sub/repo.git/", "https://gitlab.example.org/group/sub/repo"),
    ("http://git.example.com:8080/owner/repo", "http://git.example.com:8080/owner/repo"),
    ("git@github.com:owner/repo.git", "https://github.com/owner/repo"),
    ("ssh://git@codeberg.org:22/owner/repo.git", "https://codeberg.org/owner/repo"),
    ("", None),
    ("/srv/git/repo.git", None),
    ("../repo", None),
    ("file:///srv/git/repo.git", None),
    ("https://localhost/owner/repo", None),
    ("https://192.168.1.5/owner/repo", None),
    ("git@10.0.0.2:owner/repo.git", None),
    ("https://git.corp.internal/owner/repo", None),
    ("https://github.com/repo-without-owner", None),
    ("https://github.com/owner/repo?token=x", None),
    ("ftp://example.com/owner/repo", None),
])
def test_public_url_of_a_remote(remote, url):
    assert cite.public_url(remote) == url


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_repository_url_reads_origin(tmp_path):
    _git(tmp_path, "init", "-q")
    assert cite.repository_url(tmp_path) is None  # no remote
    _git(tmp_path, "remote", "add", "origin", "git@github.com:someone/replications.git")
    assert cite.repository_url(tmp_path) == "https://github.com/someone/replications"
    _git(tmp_path, "remote", "set-url", "origin", "/home/someone/replications.git")
    assert cite.repository_url(tmp_path) is None


@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "results" / "toy" / "ci"
    folder.mkdir(parents=True)
    for name in cite.ARTIFACT_FILES:
        (folder / name).write_text('{"finished": "2031-05-06T00:00:00+00:00"}\n')
    return spec.load("toy", FIXTURES), tmp_path / "results"


def test_artifact_cited_by_commit_and_sha256_without_a_url(artifact, monkeypatch):
    paper, results = artifact
    monkeypatch.setattr(cite, "repository_url", lambda root=None: None)
    digest = cite.artifact_digest(results / "toy" / "ci")
    line = cite.artifact_line(paper, "ci", results)
    assert "commit " in line and f"sha256 {digest}" in line and "http" not in line
    entry = cite.artifact_bibtex(paper, "ci", results)
    assert entry.startswith("@software{approxreplicationstoyci,") and entry.endswith("\n}")
    assert "author = {{The approx-replications contributors}}" in entry
    assert "year = {2031}" in entry and "version = {0.1.0, commit " in entry and digest in entry
    assert "url =" not in entry
    assert cite.artifact_bibtex(paper, "full", results) is None
    assert "no full results" in cite.artifact_line(paper, "full", results)


def test_artifact_gets_the_url_of_a_public_remote(artifact, monkeypatch):
    paper, results = artifact
    monkeypatch.setattr(cite, "repository_url", lambda root=None: "https://github.com/someone/replications")
    assert cite.artifact_line(paper, "ci", results).count("https://github.com/someone/replications, commit ") == 1
    assert "  url = {https://github.com/someone/replications}," in cite.artifact_bibtex(paper, "ci", results)


def test_citation_cff_names_no_repository_url():
    head = (spec.REPO_ROOT / "CITATION.cff").read_text().split("# references are generated")[0]
    meta = yaml.safe_load(head)
    assert "repository-code" not in meta and "url" not in meta
    assert cite.citation_meta()["authors"] == ["The approx-replications contributors"]
