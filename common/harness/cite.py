"""``make cite PAPER=x``: BibTeX for the paper, and a citation line plus a BibTeX ``@software`` entry for
our artifact (the metrics, claims and provenance of one profile's run).

The artifact is cited by commit, path and sha256. A URL is added only when the checkout's ``origin``
remote is a public web address (``https://host/owner/repo`` as is, ``git@host:owner/repo`` and
``ssh://`` converted to https, credentials dropped); a local path, a private host or no remote at all
give no URL rather than one that points nowhere.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from . import provenance, spec
from .io import read_json, sha256_file

ARTIFACT_FILES = ("metrics.json", "claims.json", "provenance.json")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.~-]+$")
_PRIVATE_SUFFIXES = (".local", ".localhost", ".internal", ".lan", ".home", ".corp", ".intranet")


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


def _public_host(host: str | None) -> bool:
    if not host or "." not in host or host.endswith(_PRIVATE_SUFFIXES):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(re.fullmatch(r"[a-z0-9.-]+", host)) and not host.startswith(("-", "."))
    return False  # an IP address is no citable repository address


def public_url(remote: str) -> str | None:
    """The https (or http) web address of a git remote, or None when it is not a public one."""
    remote = (remote or "").strip()
    scp = re.fullmatch(r"(?:[^@/:\s]+@)?([^@/:\s]+):([^\s]+)", remote)
    if "://" not in remote and scp:  # git@host:owner/repo.git
        scheme, host, port, path = "https", scp.group(1).lower(), None, scp.group(2)
    else:
        try:
            parts = urlsplit(remote)
            port = parts.port
        except ValueError:
            return None
        if parts.scheme not in ("http", "https", "ssh", "git", "git+ssh"):
            return None
        scheme = parts.scheme if parts.scheme in ("http", "https") else "https"
        host, path = parts.hostname, parts.path
        port = port if parts.scheme in ("http", "https") else None
        if parts.query or parts.fragment:
            return None
    if not _public_host(host):
        return None
    segments = [s for s in path.strip("/").split("/") if s]
    if segments and segments[-1].endswith(".git"):
        segments[-1] = segments[-1][: -len(".git")]
    if len(segments) < 2 or not all(_SEGMENT.match(s) and s not in (".", "..") for s in segments):
        return None
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}/{'/'.join(segments)}"


def repository_url(root: Path | None = None) -> str | None:
    """:func:`public_url` of the checkout's ``origin`` remote (None without one)."""
    try:
        done = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root or spec.REPO_ROOT, capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return public_url(done.stdout) if done.returncode == 0 else None


def artifact_digest(folder: Path) -> str:
    """One sha256 over the artifact's metrics, claims and provenance files."""
    import hashlib

    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        digest.update(f"{name}:{sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def citation_meta() -> dict:
    """Title, authors and version from the hand-written head of CITATION.cff."""
    head = (spec.REPO_ROOT / "CITATION.cff").read_text().split("# references are generated")[0]
    meta = yaml.safe_load(head) or {}
    authors = [a.get("name") or " ".join(filter(None, (a.get("given-names"), a.get("family-names"))))
               for a in meta.get("authors") or [] if isinstance(a, dict)]
    return {"title": meta.get("title", "approx-replications"), "authors": [a for a in authors if a] or
            ["The approx-replications contributors"], "version": str(meta.get("version", ""))}


def _artifact(paper: spec.PaperSpec, profile: str, results_root: Path | None) -> dict | None:
    folder = Path(results_root or spec.REPO_ROOT / "results") / paper.slug / profile
    if not (folder / "metrics.json").is_file():
        return None
    try:
        finished = str(read_json(folder / "provenance.json").get("finished") or "")
    except (OSError, ValueError):
        finished = ""
    return {
        "folder": folder,
        "path": (folder.relative_to(spec.REPO_ROOT) if folder.is_relative_to(spec.REPO_ROOT) else folder).as_posix(),
        "commit": provenance.git_state()["commit"] or "uncommitted",
        "sha256": artifact_digest(folder),
        "year": finished[:4] if re.match(r"\d{4}", finished) else None,
        "url": repository_url(),
    }


def _missing(paper: spec.PaperSpec, profile: str) -> str:
    option = "" if profile == "ci" else f" PROFILE={profile}"
    return f"(no {profile} results for {paper.slug} yet: run `make run PAPER={paper.slug}{option}`)"


def artifact_line(paper: spec.PaperSpec, profile: str = "ci", results_root: Path | None = None) -> str:
    art = _artifact(paper, profile, results_root)
    if art is None:
        return _missing(paper, profile)
    where = f"{art['url']}, commit {art['commit']}" if art["url"] else f"commit {art['commit']}"
    return (f"{citation_meta()['title']}: replication of {paper.title} ({paper.year}). "
            f"{where}, path {art['path']}/, sha256 {art['sha256']}")


def artifact_bibtex(paper: spec.PaperSpec, profile: str = "ci", results_root: Path | None = None) -> str | None:
    """A BibTeX ``@software`` entry for the artifact (None when the profile has no results)."""
    art = _artifact(paper, profile, results_root)
    if art is None:
        return None
    meta = citation_meta()
    fields = {
        "title": f"{{{meta['title']}: replication of {paper.title} ({profile} profile)}}",
        # each name braced: BibTeX must not read "The approx-replications contributors" as first/last names
        "author": " and ".join(f"{{{name}}}" for name in meta["authors"]),
        "year": art["year"],
        "version": f"{meta['version']}, commit {art['commit']}" if meta["version"] else f"commit {art['commit']}",
        "url": art["url"],
        "note": f"Path {art['path']}/ at commit {art['commit']}; sha256 {art['sha256']} "
                f"(over {', '.join(ARTIFACT_FILES)})",
    }
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items() if v)
    return f"@software{{approxreplications{paper.slug.replace('_', '')}{profile},\n{body}\n}}"


def cite(slug: str) -> str:
    paper = spec.load(slug)
    lines = ["% The paper", bibtex(paper), "", "% Our replication artifact"]
    for profile in spec.PROFILES:
        lines.append(f"% [{profile}] " + artifact_line(paper, profile))
        entry = artifact_bibtex(paper, profile)
        if entry:
            lines.append(entry)
    return "\n".join(lines)
