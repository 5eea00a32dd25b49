"""``make new PAPER=slug``: a paper folder that already satisfies the contract.

The scaffold is a working example, not a replication: its notebook estimates a mean
by Monte Carlo and checks the 1/sqrt(n) error rate. Replace the module, notebook,
claims and README with the paper's, then ``make bless PAPER=slug``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import yaml

from . import spec

MODULE = '''"""{title}

TODO: explain the method as the paper does, with its equation numbers.
"""

from __future__ import annotations

import numpy as np


def monte_carlo_mean(n_samples: int, random_state: int | None = None) -> float:
    """Placeholder estimator: the mean of ``n_samples`` draws from N(0, 1)."""
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {{n_samples}}")
    rng = np.random.default_rng(random_state)
    return float(rng.standard_normal(n_samples).mean())
'''

TEST = '''import pytest

from papers.{slug}.{slug} import monte_carlo_mean


def test_deterministic():
    assert monte_carlo_mean(100, random_state=1) == monte_carlo_mean(100, random_state=1)


def test_rejects_empty_sample():
    with pytest.raises(ValueError):
        monte_carlo_mean(0)
'''

README = """# {title}

TODO: what the paper claims, what we reproduce, what we cannot and why.

## Claims

<!-- claims:begin -->
<!-- claims:end -->

## How to run

```bash
make run PAPER={slug}                 # ci profile (about a minute on a CPU)
make run PAPER={slug} PROFILE=full    # the paper's scale
```

## Deviations from the paper

TODO.
"""


def notebook(slug: str, title: str) -> nbformat.NotebookNode:
    cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\nTODO: the method in a few paragraphs, then the experiment."),
        nbformat.v4.new_code_cell("seed = 0\nn_samples = 10_000\nn_repeats = 50", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(textwrap.dedent(f"""\
            import numpy as np
            import matplotlib.pyplot as plt

            from common.harness import claim_verdicts, figure, record, seed_everything, show_claims
            from papers.{slug}.{slug} import monte_carlo_mean

            rng = seed_everything(seed)""")),
        nbformat.v4.new_code_cell(textwrap.dedent("""\
            sizes = [n_samples // 16, n_samples // 4, n_samples]
            rmse = []
            for n in sizes:
                estimates = [monte_carlo_mean(n, random_state=rng.integers(2**32)) for _ in range(n_repeats)]
                rmse.append(float(np.sqrt(np.mean(np.square(estimates)))))
            slope = np.polyfit(np.log(sizes), np.log(rmse), 1)[0]
            record("mc.rmse_largest", rmse[-1])
            record("mc.slope", slope)

            fig, ax = plt.subplots(figsize=(4, 3))
            ax.loglog(sizes, rmse, "o-")
            ax.set(xlabel="samples", ylabel="RMSE")
            figure("rmse", fig);""")),
        nbformat.v4.new_code_cell("show_claims()"),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nclaim_verdicts()"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def catalog_slugs() -> dict:
    from .scoreboard import catalog

    return {item["slug"]: item for item in catalog()}


def scaffold(slug: str, papers_root: Path | None = None, *, check_catalog: bool = True) -> Path:
    known = catalog_slugs()
    if check_catalog and slug not in known:
        raise spec.UnknownPaperError(f"{slug!r} is not in papers/catalog.yaml; known slugs: {', '.join(sorted(known))}")
    root = spec.paper_dir(slug, papers_root)
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    title = known.get(slug, {}).get("short_title", slug)
    (root / "notebooks").mkdir(parents=True)
    if not (root.parent / "__init__.py").exists():
        (root.parent / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (root / "expected").mkdir()
    (root / "__init__.py").write_text(f'"""{title}."""\n')
    (root / f"{slug}.py").write_text(MODULE.format(title=title))
    (root / "tests" / f"test_{slug}.py").write_text(TEST.format(slug=slug))
    (root / "README.md").write_text(README.format(title=title, slug=slug))
    nbformat.write(notebook(slug, title), root / "notebooks" / "01_main.ipynb")
    paper = {
        "title": f"TODO full title of {title}",
        "authors": ["TODO Author"],
        "year": 2024,
        "venue": "TODO venue",
        "arxiv": "TODO",
        "official_code": "TODO https://github.com/...",
        "peers": [],
        "notebooks": ["01_main.ipynb"],
        "profiles": {"full": {"01_main": {"n_samples": 1_000_000, "n_repeats": 200}}},
        "claims": [{
            "id": "mc_rate",
            "kind": "sanity",
            "statement": "Placeholder: the Monte Carlo error falls as n^-1/2 (replace with the paper's claims).",
            "source": "TODO table/figure/section",
            "paper_value": -0.5,
            "value": "mc.slope",
            "check": "-0.65 < mc.slope < -0.35",
            "profiles": ["ci", "full"],
        }],
    }
    (root / "paper.yaml").write_text(yaml.safe_dump(paper, sort_keys=False, allow_unicode=True))
    return root
