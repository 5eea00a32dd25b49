"""Generate the site's sources from what the harness wrote, then build it with Sphinx (myst-nb, no execution).

    python docs/build_site.py [--out docs/_build]      # `make site`

Pages: a home page with the scoreboard; one page per implemented paper (summary, verdicts, the claims
table with kind, status, our value, the paper's value and source, the figures, the executed notebooks in
order, the README's deviations and review, and a cite block with BibTeX for the paper and for our
artifact with commit and sha256); one page per module of ``common/`` from its docstrings; CONTRIBUTING.

Incremental: a generated file is rewritten only when its text changes, and Sphinx keeps its environment
between builds, so an unchanged paper costs nothing on the next build.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.harness import cite, scoreboard, spec  # noqa: E402


def write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def copy_if_changed(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)


def source_link(path: str, url: str | None) -> str:
    """A link to a file of the repository: on the public forge when there is one, else in the checkout."""
    if url:
        return f"[`{path}`]({url.rstrip('/')}/blob/HEAD/{path})"
    return f"`{path}`"


def readme_sections(readme: Path, wanted: tuple[str, ...]) -> str:
    """The README's level-2 sections whose titles start with one of ``wanted`` (links demoted to text)."""
    if not readme.is_file():
        return ""
    text = readme.read_text()
    parts = re.split(r"(?m)^(?=## )", text)
    kept = [p for p in parts if p.startswith("## ") and p[3:].strip().lower().startswith(wanted)]
    body = "\n".join(kept)
    body = re.sub(r"\[([^\]]+)\]\((?!https?://)[^)]+\)", r"\1", body)  # relative links point into the repo
    return re.sub(r"(?m)^(#+) ", lambda m: "#" + m.group(1) + " ", body)  # one level down


def paper_page(slug: str, entry: dict, url: str | None, src: Path) -> str:
    paper = spec.load(slug)
    lines = [f"# {slug}: {paper.title}", "",
             f"{', '.join(paper.authors)}. *{paper.venue}*, {paper.year}."]
    links = [f"[arXiv:{paper.arxiv}](https://arxiv.org/abs/{paper.arxiv})" if paper.arxiv else "",
             f"[doi:{paper.doi}](https://doi.org/{paper.doi})" if paper.doi else "",
             f"[official code]({paper.official_code})" if paper.official_code.startswith("http") else ""]
    lines += [" · ".join(filter(None, links)), "", paper.summary.strip(), "", "## Verdicts", ""]
    for profile in spec.PROFILES:
        p = entry["profiles"][profile]
        if p.get("finished"):
            verdict = scoreboard.VERDICT_BADGE[p["verdict"]]
            lines.append(f"- **{profile}**: {verdict}{scoreboard._score(p)} "
                         f"({scoreboard._count_text(p['counts'])}); {p['duration_s']} s on {p['device']}, "
                         f"finished {p['finished']}")
        else:
            lines.append(f"- **{profile}**: not run")
    lines += ["", "## Claims", "", scoreboard.claims_table(paper, entry), ""]

    figures = []
    for profile in spec.PROFILES:
        for png in sorted((REPO / "results" / slug / profile).glob("*/figures/*.png")):
            target = src / "papers" / slug / profile / png.parent.parent.name / png.name
            copy_if_changed(png, target)
            figures.append((profile, png.parent.parent.name, png.stem, target.relative_to(src / "papers")))
    if figures:
        lines += ["## Figures", ""]
        for profile, notebook, name, rel in figures:
            lines += [f"```{{figure}} {rel.as_posix()}", ":width: 640px", "", f"{name} ({notebook}, {profile} profile)",
                      "```", ""]

    notebooks = []
    for profile in spec.PROFILES:
        for nb in paper.notebooks:
            executed = REPO / "results" / slug / profile / nb
            if executed.is_file():
                target = src / "papers" / slug / profile / nb
                copy_if_changed(executed, target)
                notebooks.append(f"{slug}/{profile}/{Path(nb).stem}")
    lines += ["## Notebooks (executed, as committed)", "", "```{toctree}", ":maxdepth: 1", "", *notebooks, "```", ""]

    more = readme_sections(paper.root / "README.md", ("deviation", "review", "what did not", "not reproduced"))
    if more:
        lines += ["## From the paper's README", "", more, ""]

    lines += ["## Cite", "", "```bibtex", cite.cite(slug), "```", "",
              "## Sources", "",
              f"- paper folder: {source_link(f'papers/{slug}/', url)} "
              f"({source_link(f'papers/{slug}/paper.yaml', url)}, {source_link(f'papers/{slug}/README.md', url)})",
              *[f"- results ({p}): {source_link(f'results/{slug}/{p}/', url)}" for p in spec.PROFILES
                if (REPO / "results" / slug / p).is_dir()], ""]
    return "\n".join(lines)


def common_modules() -> list[str]:
    names = []
    for path in sorted((REPO / "common").iterdir()):
        if path.name.startswith("_") or path.name == "__pycache__":
            continue
        if path.suffix == ".py":
            names.append(f"common.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").is_file():
            names.append(f"common.{path.name}")
            names += [f"common.{path.name}.{p.stem}" for p in sorted(path.glob("*.py"))
                      if not p.name.startswith("_") and p.stem != "__main__"]
    return names


def generate(src: Path) -> list[str]:
    index = scoreboard.build_index()
    url = cite.repository_url()
    done = [s for s, e in index["papers"].items() if e["implemented"]]
    for slug in done:
        write_if_changed(src / "papers" / f"{slug}.md", paper_page(slug, index["papers"][slug], url, src))
    modules = common_modules()
    for name in modules:
        write_if_changed(src / "common" / f"{name}.md", f"# `{name}`\n\n```{{automodule}} {name}\n:members:\n```\n")
    write_if_changed(src / "common.md", "# Shared code: `common/`\n\nOne page per module, from its docstrings.\n\n"
                     "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(f"common/{m}" for m in modules) + "\n```\n")
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    write_if_changed(src / "contributing.md", re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)]+\)", r"\1", contributing))
    table = scoreboard.papers_table(index, link_prefix="papers/", stale_aware=True)
    table = re.sub(r"\]\(papers/([a-z0-9_]+)/\)", r"](papers/\1.md)", table)
    home = ["# Replications of ML papers on approximation quality", "",
            "Every paper's executed notebooks, claims and figures, as committed in `results/` (nothing is re-run "
            "to build this site). Verdicts count the paper's own claims only; see the scoreboard rules in "
            "[CONTRIBUTING](contributing.md).", "", "## Scoreboard", "", table, "",
            "```{toctree}", ":maxdepth: 1", ":caption: Papers", "", *[f"papers/{s}" for s in done], "```", "",
            "```{toctree}", ":maxdepth: 1", ":caption: Project", "", "common", "contributing", "```", ""]
    write_if_changed(src / "index.md", "\n".join(home))
    copy_if_changed(Path(__file__).with_name("conf.py"), src / "conf.py")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "_build")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    src, html = args.out / "src", args.out / "html"
    papers = generate(src)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-d", str(args.out / "doctrees"),
               str(src), str(html)] + (["-q"] if args.quiet else [])
    done = subprocess.run(command, cwd=REPO, check=False)
    if done.returncode:
        print("error: sphinx failed (see above)", file=sys.stderr)
        return done.returncode
    print(f"site: {len(papers)} papers in {time.perf_counter() - start:.0f} s; open {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
