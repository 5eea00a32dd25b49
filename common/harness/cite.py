"""``make cite PAPER=x``: BibTeX for the paper and a citation line for our artifact."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from . import provenance, spec
from .io import sha256_file

ARTIFACT_FILES = ("metrics.json", "claims.json", "provenance.json")


def bibtex(paper: spec.PaperSpec) -> str:
    first = re.sub(r"[^a-z]", "", paper.authors[0].split()[-1].lower())
    key = f"{first}{paper.year}{paper.slug.replace('_', '')}"
    conference = paper.venue.split()[0].lower() in {"neurips", "icml", "iclr", "aaai", "cvpr", "iccv", "eccv", "aistats", "uai", "colt", "kdd", "acl", "emnlp", "siggraph"}
    fields = {"title": f"{{{paper.title}}}", "author": " and ".join(paper.authors), "year": str(paper.year),
              ("booktitle" if conference else "journal"): paper.venue}
    if paper.doi:
        fields["doi"] = paper.doi
    if paper.arxiv:
        fields.update({"eprint": paper.arxiv, "archivePrefix": "arXiv"})
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items())
    return f"@{'inproceedings' if conference else 'article'}{{{key},\n{body}\n}}"


def artifact_digest(folder: Path) -> str:
    """One sha256 over the artifact's metrics, claims and provenance files."""
    import hashlib

    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        digest.update(f"{name}:{sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def artifact_line(paper: spec.PaperSpec, profile: str = "ci", results_root: Path | None = None) -> str:
    folder = Path(results_root or spec.REPO_ROOT / "results") / paper.slug / profile
    meta = yaml.safe_load((spec.REPO_ROOT / "CITATION.cff").read_text().split("# references are generated")[0])
    repo = meta.get("repository-code", "this repository")
    if not (folder / "metrics.json").is_file():
        option = "" if profile == "ci" else f" PROFILE={profile}"
        return f"(no {profile} results for {paper.slug} yet: run `make run PAPER={paper.slug}{option}`)"
    commit = provenance.git_state()["commit"] or "uncommitted"
    relative = folder.relative_to(spec.REPO_ROOT) if folder.is_relative_to(spec.REPO_ROOT) else folder
    return (f"{meta.get('title', 'approx-replications')}: replication of {paper.title} ({paper.year}). "
            f"{repo}, commit {commit}, path {relative.as_posix()}/, sha256 {artifact_digest(folder)}")


def cite(slug: str) -> str:
    paper = spec.load(slug)
    lines = ["% The paper", bibtex(paper), "", "% Our replication artifact"]
    for profile in spec.PROFILES:
        lines.append(f"[{profile}] " + artifact_line(paper, profile))
    return "\n".join(lines)
