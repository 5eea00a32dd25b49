"""The scoreboard: ``results/index.json``, ``results/README.md`` and generated sections.

Everything here is computed from committed artifacts (``results/<slug>/<profile>/``)
and ``paper.yaml`` files, without executing anything. Generated sections of other
files sit between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers;
``tests/test_generated.py`` fails when one is out of date.

Staleness (results whose code hash no longer matches the code) is shown in
``results/`` only; the README tables show the claims' verdicts, so that editing
``common/`` does not make every README out of date at once.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from . import claims as claims_mod
from . import provenance, spec
from .io import atomic_write_bytes, dumps, read_json

CATALOG = spec.PAPERS_ROOT / "catalog.yaml"
VERDICT_BADGE = {"Re": "✅ Re", "partial": "🟡 partial", "not-Re": "❌ not-Re", "inconclusive": "❔ inconclusive",
                 "pending": "⏳ pending", "stale": "♻️ stale"}


def catalog() -> list[dict]:
    return yaml.safe_load(CATALOG.read_text())["papers"]


def _profile_entry(paper: spec.PaperSpec, profile: str, results_root: Path, with_staleness: bool) -> dict:
    folder = results_root / paper.slug / profile
    applicable = paper.claims_for(profile)
    pending = [claims_mod.ClaimResult(c.id, "pending", None, c.paper_value, {}, weight=c.weight, kind=c.kind)
               for c in applicable]
    entry = {"verdict": "pending", "score": None, "claims": _claim_entries(pending),
             "counts": claims_mod.counts(pending), "duration_s": None,
             "device": None, "commit": None, "stale": False, "finished": None}
    if not (folder / "claims.json").is_file() or not (folder / "provenance.json").is_file():
        return entry
    stored = read_json(folder / "claims.json")
    prov = read_json(folder / "provenance.json")
    results = []
    for claim in applicable:
        raw = stored["claims"].get(claim.id)
        if raw is None:
            results.append(claims_mod.ClaimResult(claim.id, "pending", None, claim.paper_value, {},
                                                  weight=claim.weight, kind=claim.kind))
        else:
            # kind and weight come from paper.yaml (they describe the claim, not the run)
            raw = {**raw, "paper_value": claim.paper_value, "weight": claim.weight, "kind": claim.kind}
            results.append(claims_mod.ClaimResult(**raw))
    verdict = claims_mod.verdict(results)
    stale = False
    if with_staleness:
        stale = provenance.stale_reason(prov, paper) is not None
    entry.update({
        "verdict": "stale" if stale else verdict,
        "claims_verdict": verdict,
        "score": claims_mod.score(results),
        "claims": _claim_entries(results),
        "counts": claims_mod.counts(results),
        "duration_s": prov.get("duration_s"),
        "device": prov.get("device_label"),
        "commit": (prov.get("git") or {}).get("commit"),
        "dirty": (prov.get("git") or {}).get("dirty"),
        "stale": stale,
        "finished": prov.get("finished"),
    })
    return entry


def _claim_entries(results) -> dict:
    return {r.id: {"kind": r.kind, "status": r.status, "value": r.value, "paper_value": r.paper_value}
            for r in results}


def build_index(results_root: Path | None = None, papers_root: Path | None = None, with_staleness: bool = True) -> dict:
    results_root = Path(results_root or spec.REPO_ROOT / "results")
    implemented = set(spec.list_papers(papers_root))
    papers = {}
    for item in catalog():
        slug = item["slug"]
        entry = {"title": item["short_title"], "short_title": item["short_title"], "grade": item["grade"],
                 "group": item["group"], "implemented": slug in implemented}
        if slug in implemented:
            paper = spec.load(slug, papers_root)
            entry["title"] = paper.title
            entry["profiles"] = {p: _profile_entry(paper, p, results_root, with_staleness) for p in spec.PROFILES}
        else:
            entry["profiles"] = {p: {"verdict": "pending", "score": None, "claims": {},
                                     "counts": claims_mod.counts([]), "duration_s": None,
                                     "device": None, "commit": None, "stale": False} for p in spec.PROFILES}
        papers[slug] = entry
    return {"papers": papers}


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _score(entry: dict) -> str:
    return "" if entry["score"] is None else f" {entry['score']:.2f}"


def _count_text(counts: dict) -> str:
    """``4/6 paper claims, 1 inconclusive; sanity 3/3; peer 1/1``: reproduced / decided, by kind."""
    parts = []
    for kind in spec.CLAIM_KINDS:
        c = counts[kind]
        total = sum(c.values())
        if not total:
            continue
        decided = total - c["inconclusive"] - c["pending"]
        text = f"{c['reproduced']}/{decided} {kind}" if kind != "paper" else f"{c['reproduced']}/{decided} paper claims"
        if c["inconclusive"]:
            text += f", {c['inconclusive']} inconclusive"
        parts.append(text)
    return "; ".join(parts)


def papers_table(index: dict, *, link_prefix: str = "papers/", stale_aware: bool = False) -> str:
    lines = ["| paper | grade | group | ci | full |", "|---|---|---|---|---|"]
    # implemented papers first (alphabetical), then the rest in catalog order
    ordered = sorted(index["papers"].items(), key=lambda item: (not item[1]["implemented"],
                                                                 item[0] if item[1]["implemented"] else ""))
    for slug, entry in ordered:
        name = f"[`{slug}`]({link_prefix}{slug}/)" if entry["implemented"] else f"`{slug}`"
        cells = []
        for profile in spec.PROFILES:
            p = entry["profiles"][profile]
            verdict = p["verdict"] if stale_aware else p.get("claims_verdict", p["verdict"])
            counts = ""
            if entry["implemented"] and p["claims"] and verdict != "pending":
                counts = " (" + _count_text(p["counts"]) + ")"
            cells.append(VERDICT_BADGE[verdict] + (_score(p) if entry["implemented"] else "") + counts)
        lines.append(f"| {name} {_fmt(entry['title'])} | {_fmt(entry['grade'])} | {entry['group']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def claims_table(paper: spec.PaperSpec, entry: dict) -> str:
    lines = ["| claim | kind | statement | source | paper | ours (ci) | ci | ours (full) | full |",
             "|---|---|---|---|---|---|---|---|---|"]
    for claim in paper.claims:
        cells = []
        for profile in spec.PROFILES:
            result = entry["profiles"][profile]["claims"].get(claim.id)
            if result is None:
                cells += ["", "—"]
            else:
                cells += [_fmt(result["value"]), result["status"]]
        label = claim.expected_label()
        marker = f" (expected: {label})" if label else ""
        lines.append(f"| `{claim.id}` | {claim.kind} | {_fmt(claim.statement)}{marker} | {_fmt(claim.source)} | "
                     f"{_fmt(claim.paper_value)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_readme(index: dict, papers_root: Path | None = None) -> str:
    done = [s for s, e in index["papers"].items() if e["implemented"]]
    reproduced = sum(1 for s in done if index["papers"][s]["profiles"]["ci"]["verdict"] == "Re")
    parts = [
        "# Scoreboard",
        "",
        "Generated by `make scoreboard` from the artifacts in this folder; do not edit by hand.",
        f"{len(done)} of {len(index['papers'])} papers implemented; {reproduced} fully reproduced at the ci profile.",
        "Verdicts come from the paper's own claims (kind `paper`) only: Re = every decidable paper claim "
        "reproduced, partial, not-Re = none, inconclusive = no paper claim could be decided by the experiment, "
        "pending = not run, stale = the code changed since the run (re-run with `make run PAPER=<slug>`). "
        "The number is the weighted fraction of decidable paper claims reproduced. `sanity` claims (true by "
        "construction or by a theorem) and `peer` claims (agreement with a peer library) are checked and "
        "counted separately; an `inconclusive` claim is one the experiment could not decide (see its "
        "`decisive` condition) and weighs nothing.",
        "",
        papers_table(index, link_prefix="../papers/", stale_aware=True),
    ]
    parts += ["", *resources_section(done, papers_root)]
    for slug in done:
        paper = spec.load(slug, papers_root)
        entry = index["papers"][slug]
        parts += ["", f"## {slug}: {paper.title}", ""]
        for profile in spec.PROFILES:
            p = entry["profiles"][profile]
            if p.get("finished"):
                parts.append(f"- {profile}: {VERDICT_BADGE[p['verdict']]}, {p['duration_s']} s on {p['device']}, "
                             f"commit `{(p['commit'] or 'none')[:10]}`{' (dirty)' if p.get('dirty') else ''}, "
                             f"finished {p['finished']}; artifacts in [`{slug}/{profile}/`]({slug}/{profile}/)")
            else:
                parts.append(f"- {profile}: ⏳ pending (never run)")
        parts += ["", claims_table(paper, entry)]
    return "\n".join(parts) + "\n"


#: the CPU queue of the full profiles: what runs on the 2-core machine (``make all PROFILE=full``)
CPU_QUEUE_MINUTES = 20


def resources_section(slugs: list[str], papers_root: Path | None = None) -> list[str]:
    """Markdown lines: the full profiles beyond the CPU queue (``resources.full`` in paper.yaml declares a GPU,
    or more than ``CPU_QUEUE_MINUTES`` on a CPU), with what they need."""
    rows = []
    for slug in slugs:
        needs = (spec.load(slug, papers_root).resources or {}).get("full") or {}
        if needs.get("gpus") or needs.get("minutes", 0) > CPU_QUEUE_MINUTES:
            rows.append(f"| {slug} | {needs.get('gpus', 0)} | {needs.get('cpus', '')} | {needs.get('memory_gb', '')} "
                        f"| {needs.get('minutes', '')} |")
    lines = ["## Full profiles that need a GPU or a long run", ""]
    if not rows:
        return lines + ["No paper declares a GPU or more than "
                        f"{CPU_QUEUE_MINUTES} minutes for its full profile (`resources: {{full: {{gpus: 1, ...}}}}` "
                        "in paper.yaml); every full profile runs on a CPU (`make all PROFILE=full`, see CONTRIBUTING.md)."]
    return lines + [f"These full profiles do not fit the {CPU_QUEUE_MINUTES}-minute CPU queue. Run them with "
                    "`make all PROFILE=full BACKEND=ray RAY_ADDRESS=<head>:6379` on a cluster "
                    "(a CPU-only run is allowed and labelled with its device); minutes are the declared "
                    "estimate on the declared device (GPU when GPUs > 0).", "",
                    "| paper | GPUs | CPUs | memory (GB) | minutes |", "|---|---|---|---|---|", *rows]


def replace_section(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"markers <!-- {name}:begin --> / <!-- {name}:end --> not found")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text)


def citation_references(papers_root: Path | None = None) -> str:
    lines = []
    for slug in spec.list_papers(papers_root):
        paper = spec.load(slug, papers_root)
        lines += [
            "  - type: article" if not paper.venue.lower().startswith(("neurips", "icml", "iclr", "aaai")) else
            "  - type: conference-paper",
            f"    title: {_yaml_str(paper.title)}",
            "    authors:",
            *[f"      - name: {_yaml_str(a)}" for a in paper.authors],
            f"    year: {paper.year}",
            f"    collection-title: {_yaml_str(paper.venue)}",
        ]
        if paper.doi:
            lines.append(f"    doi: {_yaml_str(paper.doi)}")
        if paper.arxiv:
            lines.append(f"    url: {_yaml_str('https://arxiv.org/abs/' + paper.arxiv)}")
        lines.append(f"    notes: {_yaml_str('Replicated in papers/' + slug)}")
    return "\n".join(lines)


def _yaml_str(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def generated_files(papers_root: Path | None = None, results_root: Path | None = None) -> dict[Path, str]:
    """The new text of every file with generated content (README sections, CITATION.cff, paper READMEs)."""
    root = spec.REPO_ROOT
    index = build_index(results_root, papers_root, with_staleness=False)
    out = {}
    readme = root / "README.md"
    out[readme] = replace_section(readme.read_text(), "papers", papers_table(index))
    citation = root / "CITATION.cff"
    text = citation.read_text()
    marker = "# references are generated by `make scoreboard`; do not edit below this line\n"
    head = text.split(marker)[0]
    out[citation] = head + marker + "references:\n" + citation_references(papers_root) + "\n"
    for slug in spec.list_papers(papers_root):
        paper = spec.load(slug, papers_root)
        path = paper.root / "README.md"
        if path.is_file():
            out[path] = replace_section(path.read_text(), "claims", claims_table(paper, index["papers"][slug]))
    return out


def write(results_root: Path | None = None, papers_root: Path | None = None) -> list[Path]:
    """Regenerate the scoreboard and every generated section; returns the files written."""
    results_root = Path(results_root or spec.REPO_ROOT / "results")
    index = build_index(results_root, papers_root)
    written = []
    for path, content in {
        results_root / "index.json": dumps(index),
        results_root / "README.md": results_readme(index, papers_root),
        **generated_files(papers_root, results_root),
    }.items():
        if not path.is_file() or path.read_text() != content:
            atomic_write_bytes(path, content.encode())
            written.append(path)
    return written
