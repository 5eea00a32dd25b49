"""`make lint` stays clean: ruff (the rules in pyproject.toml) over common/, papers/ and tests/."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = Path(sys.executable).parent / "ruff"
    exe = str(ruff) if ruff.exists() else shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (it is in the dev extras: make env)")
    out = subprocess.run([exe, "check", "--no-cache", "common", "papers", "tests"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"ruff findings (fix them, or run `make lint`):\n{out.stdout}{out.stderr}"
