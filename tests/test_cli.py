"""The command line and the Makefile, tried as a new user would: interrupts, bad input."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "papers"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(tmp_path):
    """A private copy of the toy paper whose notebook sleeps long enough to be interrupted."""
    root = tmp_path / "papers"
    shutil.copytree(FIXTURES / "toy", root / "toy")
    nb_path = root / "toy" / "notebooks" / "01_toy.ipynb"
    nb_path.write_text(nb_path.read_text().replace("sleep_s = 0.0", "sleep_s = 60.0"))
    return root


@pytest.mark.parametrize("disposition", [signal.SIG_DFL, signal.SIG_IGN], ids=["terminal", "nohup"])
def test_interrupt_is_quiet_and_exits_130(toy, tmp_path, disposition):
    """Ctrl-C (or `kill -INT`) mid-notebook: exit 130, one line, no kernel traceback; also when the run was
    started with SIGINT ignored, as `nohup make run ... &` does."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "common.harness", "run", "toy", "--papers-root", str(toy),
                             "--results-root", str(tmp_path / "results"), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "results" / "toy").glob(".ci.tmp-*/01_toy/metrics.json")):
        time.sleep(0.2)  # the notebook is midway: its kernel is busy in a cell
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted: previous results are untouched", err
    assert "Traceback" not in err + out and "zmq" not in (err + out).lower()
