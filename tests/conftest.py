"""Fixtures shared by the harness tests."""

import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "papers"


@pytest.fixture
def toy(tmp_path):
    """A private copy of the toy paper (tests/fixtures/papers/toy) under tmp_path/papers; returns that root."""
    root = tmp_path / "papers"
    shutil.copytree(FIXTURES / "toy", root / "toy")
    return root


@pytest.fixture
def edit_toy():
    """``edit_toy(root, "sleep_s = 0.0", "sleep_s = 60.0")`` changes a default of the toy notebook's parameters."""
    def edit(root: Path, old: str, new: str, paper: str = "toy") -> None:
        path = root / paper / "notebooks" / "01_toy.ipynb"
        notebook = json.loads(path.read_text())
        sources = ["".join(cell["source"]) for cell in notebook["cells"]]
        assert any(old in text for text in sources), f"{old!r} not in {path}"
        for cell, text in zip(notebook["cells"], sources, strict=True):
            cell["source"] = text.replace(old, new).splitlines(keepends=True)
        path.write_text(json.dumps(notebook, indent=1) + "\n")
    return edit

