"""`make site`: the static site built from results/ (never re-running a notebook), checked as a reader sees it.

Builds the site once (module fixture), then: every catalog paper has a row on the home page; a paper page
has its claims table and a figure; no internal link is broken; and, in headless Chromium (Debian's
`chromium`; `make site-test` installs it), an equation is rendered by the locally served MathJax.
"""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from common.harness import scoreboard, spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "docs/build_site.py", "--out", str(out), "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "html"


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def links_of(page: Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text(errors="replace"))
    return parser.links


def test_home_page_has_every_paper(site):
    home = (site / "index.html").read_text()
    for entry in scoreboard.catalog():
        assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{entry['slug']}</span></code>" in home, entry["slug"]
    for slug in spec.list_papers():
        assert f'href="papers/{slug}.html"' in home, slug


def test_paper_page_has_claims_and_figures(site):
    for slug in spec.list_papers():
        page = (site / "papers" / f"{slug}.html").read_text()
        paper = spec.load(slug)
        assert "<table" in page and all(claim.id in page for claim in paper.claims), slug
        assert "BibTeX" in page or "@software" in page or "@article" in page or "@inproceedings" in page, slug
    svarm = site / "papers" / "svarm.html"
    images = [link for link in links_of(svarm) if link.endswith(".png")]
    assert images, "the svarm page shows no figure"


def test_no_broken_internal_link(site):
    broken = []
    for page in site.rglob("*.html"):
        for link in links_of(page):
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("#", "mailto:", "//")) or not parts.path:
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {link}")
    assert not broken, "\n".join(broken[:30])


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="no headless Chromium: `make site-test` installs Debian's chromium")
def test_chromium_renders_a_paper_page_with_math(site, tmp_path):
    pages = [p for p in sorted(site.glob("papers/*/ci/*.html")) if 'class="math' in p.read_text(errors="replace")]
    assert pages, "no notebook page with an equation"
    page = pages[0]
    # the flags keep Chromium off the network (this machine's is closed): no background or update traffic
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
             "--virtual-time-budget=15000", "--window-size=1200,1600"]
    dom = subprocess.run([chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180).stdout
    assert "<mjx-container" in dom, f"MathJax did not render {page.relative_to(site)}"
    assert "cdn.jsdelivr" not in dom and "mathjax@" not in dom.lower()
    shot = tmp_path / "math_page.png"
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
    home_dom = subprocess.run([chromium(), *flags, "--dump-dom", (site / "index.html").as_uri()],
                              capture_output=True, text=True, timeout=180).stdout
    rows = re.findall(r"<tr class=\"row-(?:odd|even)\">", home_dom)
    assert len(rows) >= len(scoreboard.catalog())
