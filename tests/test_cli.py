"""The command line and the Makefile, tried as a new user would: interrupts, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def slow_toy(toy, edit_toy):
    """The toy paper (tests/conftest.py) whose notebook sleeps long enough to be interrupted."""
    edit_toy(toy, "sleep_s = 0.0", "sleep_s = 60.0")
    return toy


@pytest.mark.parametrize("disposition", [signal.SIG_DFL, signal.SIG_IGN], ids=["terminal", "nohup"])
def test_interrupt_is_quiet_and_exits_130(slow_toy, tmp_path, disposition):
    """Ctrl-C (or `kill -INT`) mid-notebook: exit 130, one line, no kernel traceback; also when the run was
    started with SIGINT ignored, as `nohup make run ... &` does."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "common.harness", "run", "toy", "--papers-root", str(slow_toy),
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


# --- bad input to the Makefile and the CLI --------------------------------------------------------

@pytest.fixture
def fake_venv(tmp_path):
    """A VENV whose python only logs its arguments, with an up-to-date stamp: `make` targets run nothing real."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> '{log}'; done\necho --- >> '{log}'\n")
    python.chmod(0o755)
    (venv / ".installed").touch()
    return venv, log


def make(fake_venv, *args):
    venv, log = fake_venv
    log.unlink(missing_ok=True)
    result = subprocess.run(["make", "--no-print-directory", *args, f"VENV={venv}"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    calls = log.read_text().split("---\n")[:-1] if log.exists() else []
    return result, [c.splitlines() for c in calls]


@pytest.mark.parametrize("args, message", [
    (["run", "PAPER=svarm;touch {x}"], "is not a paper slug"),
    (["run", "PAPER=svarm' ; touch {x} ; '"], "is not a paper slug"),
    (["cite", "PAPER=$(shell touch {x})"], "is not a paper slug"),
    (["bless", "PAPER=svarm`touch {x}`"], "is not a paper slug"),
    (["run", "PAPER=Svarm"], "is not a paper slug"),
    (["run", "PAPER=not_a_paper"], "is not in papers/catalog.yaml"),
    (["run"], "give a paper"),
    (["run", "PAPER=svarm", "PROFILE=ci;touch {x}"], "is not a profile"),
    (["zoo", "MODEL=*"], "is not a zoo notebook"),
    (["all", "JOBS=two"], "is not a positive integer"),
    (["all", "JOBS=2;touch {x}"], "is not a positive integer"),
    (["all", "PAPERS=svarm not_a_paper"], "not in papers/catalog.yaml"),
    (["all", "BACKEND=slurm"], "is not a backend"),
    (["zoo", "MODEL=train_digits_eps;touch {x}"], "is not a zoo notebook"),
])
def test_make_rejects_bad_input_before_anything_runs(fake_venv, tmp_path, args, message):
    marker = tmp_path / "ran"
    result, calls = make(fake_venv, *[a.format(x=marker) for a in args])
    assert result.returncode != 0
    assert message in result.stderr
    assert calls == [] and not marker.exists()


def test_make_passes_values_quoted(fake_venv, tmp_path):
    marker = tmp_path / "ran"
    params = f"seed=3 note='a b';touch {marker} \"$HOME\" `id` $(shell touch {marker})"
    result, calls = make(fake_venv, "run", "PAPER=svarm", "PROFILE=full", f"PARAMS={params}")
    assert result.returncode == 0, result.stderr
    assert calls == [["-m", "common.harness", "run", "svarm", "--profile", "full", "--params", params]]
    assert not marker.exists()
    result, calls = make(fake_venv, "zoo", "MODEL=train_digits_eps", "PARAMS=steps=2 name='x y'")
    assert calls == [["-m", "common.zoo", "train", "train_digits_eps", "--params", "steps=2 name='x y'"]]
    result, calls = make(fake_venv, "all")
    assert calls == [["-m", "common.harness", "all", "--profile", "ci", "--papers", "", "--jobs", "1", "--backend", "local"]]
    result, calls = make(fake_venv, "all", "JOBS=2", "FORCE=1", "PAPERS=svarm umap", "BACKEND=ray",
                         f"RAY_ADDRESS=head:6379;touch {marker}")
    assert calls == [["-m", "common.harness", "all", "--profile", "ci", "--papers", "svarm umap", "--jobs", "2",
                      "--backend", "ray", "--force", "--ray-address", f"head:6379;touch {marker}"]]
    assert not marker.exists()


def test_make_bless_passes_the_override_quoted(fake_venv, tmp_path):
    marker = tmp_path / "ran"
    result, calls = make(fake_venv, "bless", "PAPER=svarm")
    assert result.returncode == 0, result.stderr
    assert calls == [["-m", "common.harness", "bless", "svarm"]]
    reason = f"AMD's sse kernels differ; it's fine;touch {marker} \"$HOME\" `id` $(shell touch {marker})"
    result, calls = make(fake_venv, "bless", "PAPER=svarm", f"ALLOW_BREAKING={reason}")
    assert result.returncode == 0, result.stderr
    assert calls == [["-m", "common.harness", "bless", "svarm", "--allow-breaking-previous", reason]]
    assert not marker.exists()
    result, calls = make(fake_venv, "run", "PAPER=svarm", "ALLOW_BREAKING=why")  # a reason for bless alone
    assert result.returncode != 0 and "ALLOW_BREAKING is a reason for make bless" in result.stderr and calls == []


@pytest.mark.parametrize("command", ["run", "bless", "cite"])
@pytest.mark.parametrize("slug, message", [("svarm;id", "is not a paper slug"), ("not_a_paper", "not in papers/catalog.yaml")])
def test_cli_rejects_a_slug_that_is_not_a_catalog_identifier(command, slug, message):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "common.harness", command, slug], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr


def test_ci_kernel_pass_is_among_the_blessed_variants():
    """`make test-kernels` (CI's second pass) checks the goldens under exactly one of the kernel variants that
    `make bless` emulates: a pairing bless never ran could fail CI on goldens that bless believed portable."""
    from common.harness.goldens import KERNEL_VARIANTS

    line = next(raw for raw in (REPO / "Makefile").read_text().splitlines() if raw.startswith("KERNELS_ENV"))
    pairs = dict(item.split("=", 1) for item in line.split(":=", 1)[1].split())
    assert pairs == KERNEL_VARIANTS["test_kernels"], (pairs, KERNEL_VARIANTS["test_kernels"])
