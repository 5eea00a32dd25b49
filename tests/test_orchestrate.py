"""`make all`: incremental skips, parallel workers, the Ray backend, and results that survive interrupts."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.harness import orchestrate, spec
from common.harness.bless import bless

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def blessed(toy, tmp_path):
    """The toy paper with goldens (two seeds, no kernel variants) and its canonical results."""
    bless("toy", n_seeds=2, papers_root=toy, results_root=tmp_path / "results", progress=False, variants={})
    return toy


def run_all(root, tmp_path, slugs=("toy",), **kwargs):
    kwargs.setdefault("progress", False)
    return orchestrate.run_all(list(slugs), "ci", papers_root=root, results_root=tmp_path / "results",
                               failed_root=tmp_path / "failed", **kwargs)


def metrics(tmp_path, slug="toy"):
    return (tmp_path / "results" / slug / "ci" / "metrics.json").read_bytes()


def test_up_to_date_is_skipped_and_changes_rerun(blessed, tmp_path, capsys):
    """Bless leaves current results; a second run skips them; code, goldens or FORCE make it run again."""
    assert orchestrate.freshness("toy", "ci", papers_root=blessed, results_root=tmp_path / "results").current
    rows = run_all(blessed, tmp_path)
    assert [r["status"] for r in rows] == ["up to date"]
    assert "toy [ci]: up to date, skipped" in capsys.readouterr().out

    before = metrics(tmp_path)
    (blessed / "toy" / "helper.py").write_text("X = 1\n")  # any file of the paper is part of its code hash
    state = orchestrate.freshness("toy", "ci", papers_root=blessed, results_root=tmp_path / "results")
    assert not state.current and "code changed" in state.reason
    rows = run_all(blessed, tmp_path)
    assert rows[0]["status"] == "OK" and rows[0]["counts"] == {"reproduced": 2}
    assert metrics(tmp_path) == before  # same seed, same machine: same bytes
    assert run_all(blessed, tmp_path)[0]["status"] == "up to date"
    assert run_all(blessed, tmp_path, force=True)[0]["status"] == "OK"

    golden = blessed / "toy" / "expected" / "ci.json"
    golden.write_text(golden.read_text() + "\n")
    assert "goldens changed" in orchestrate.freshness("toy", "ci", papers_root=blessed,
                                                      results_root=tmp_path / "results").reason


def test_common_module_change_reruns_only_importers(tmp_path):
    """Touching a common/ module makes stale exactly the papers whose code imports it (the code hash)."""
    common = tmp_path / "common"
    shutil.copytree(REPO / "common", common, ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    from common.harness import provenance

    papers = {slug: spec.load(slug) for slug in spec.list_papers()}
    deps = {slug: {d.relative_to(common) for d in provenance.common_dependencies(p, common)}
            for slug, p in papers.items()}
    # a module some papers import and others do not (which one changes as papers land)
    candidates = sorted({m for d in deps.values() for m in d
                         if (common / m).is_file() and 0 < sum(m in d for d in deps.values()) < len(papers)})
    assert candidates, "the test needs a common module with importers and non-importers"
    module = candidates[0]
    importers = {slug for slug in papers if module in deps[slug]}
    before = {slug: provenance.code_hash(p, common) for slug, p in papers.items()}
    (common / module).write_text((common / module).read_text() + "\n# touched\n")
    after = {slug: provenance.code_hash(p, common) for slug, p in papers.items()}
    assert {slug for slug in papers if before[slug] != after[slug]} == importers


def test_parallel_workers_match_sequential(blessed, tmp_path):
    """JOBS=2: two papers on two worker processes; metrics byte-identical to the in-process run."""
    shutil.copytree(blessed / "toy", blessed / "toy_b")
    sequential = tmp_path / "seq"
    orchestrate.run_all(["toy", "toy_b"], "ci", papers_root=blessed, results_root=sequential, force=True,
                        progress=False, failed_root=tmp_path / "failed")
    rows = run_all(blessed, tmp_path, slugs=("toy", "toy_b"), jobs=2, force=True)
    assert sorted(r["paper"] for r in rows if r["status"] == "OK") == ["toy", "toy_b"]
    for slug in ("toy", "toy_b"):
        assert metrics(tmp_path, slug) == (sequential / slug / "ci" / "metrics.json").read_bytes()
        assert not list((tmp_path / "results" / slug).glob(".ci.tmp-*"))
    table = orchestrate.summary_table(rows)
    assert "toy_b" in table and "jobs=2" in table


def test_failed_worker_keeps_previous_results(blessed, tmp_path, edit_toy):
    before = metrics(tmp_path)
    edit_toy(blessed, "fail = False", "fail = True")
    rows = run_all(blessed, tmp_path, jobs=2)
    assert rows[0]["status"] == "FAILED"
    assert metrics(tmp_path) == before
    assert (tmp_path / "failed" / "toy" / "ci" / "01_toy.ipynb").is_file()


def test_interrupted_driver_leaves_results_intact(blessed, tmp_path, edit_toy):
    before = metrics(tmp_path)
    edit_toy(blessed, "sleep_s = 0.0", "sleep_s = 60.0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "common.harness", "all", "--jobs", "2", "--papers", "toy",
                             "--papers-root", str(blessed), "--results-root", str(tmp_path / "results"),
                             "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    time.sleep(12)  # the worker has started the notebook (it sleeps 60 s)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert metrics(tmp_path) == before
    assert not list((tmp_path / "results" / "toy").glob(".ci.tmp-*"))


# --- Ray ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's raylet gives its metrics agent 15 s to start; on a loaded 2-core machine that can be too short
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
            break
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


def test_ray_matches_local_and_retries_a_killed_worker(blessed, tmp_path, ray_cluster, edit_toy):
    """The toy paper as a Ray task: same metrics as the local run; a worker killed mid-task is retried."""
    local = metrics(tmp_path)
    rows = run_all(blessed, tmp_path, backend="ray", force=True)
    assert rows[0]["status"] == "OK" and metrics(tmp_path) == local

    marker = tmp_path / "killed-once"
    # on the first attempt the notebook's kernel kills the Ray worker that runs it (its parent), then itself
    edit_toy(blessed, "time.sleep(sleep_s)", "import os, signal, pathlib\n"
             f"if not pathlib.Path({str(marker)!r}).exists():\n"
             f"    pathlib.Path({str(marker)!r}).touch(); os.kill(os.getppid(), signal.SIGKILL); os.kill(os.getpid(), signal.SIGKILL)\n"
             "time.sleep(sleep_s)")
    rows = run_all(blessed, tmp_path, backend="ray", force=True)
    assert marker.exists(), "the first attempt did not run"
    assert rows[0]["status"] == "OK", rows
    assert metrics(tmp_path) == local


def test_ray_runs_a_real_paper_like_local(tmp_path, ray_cluster):
    """One real paper (the cheapest at ci) on Ray and locally: byte-identical metrics."""
    slug = "stable_cpd"
    local = orchestrate.execute(slug, "ci")
    assert local.ok, local.summary
    rows = orchestrate.run_all([slug], "ci", backend="ray", force=True, progress=False,
                               results_root=tmp_path / "results", failed_root=tmp_path / "failed")
    assert rows[0]["status"] == "OK", rows
    orchestrate.install(local, results_root=tmp_path / "local")
    ours = json.loads((tmp_path / "results" / slug / "ci" / "metrics.json").read_text())
    theirs = json.loads((tmp_path / "local" / slug / "ci" / "metrics.json").read_text())
    volatile = {name for names in ours["volatile"].values() for name in names}
    strip = lambda m: {nb: {k: v for k, v in vals.items() if k not in volatile} for nb, vals in m["notebooks"].items()}  # noqa: E731
    assert strip(ours) == strip(theirs)


def test_dirty_counts_only_the_run_s_own_files(tmp_path):
    """provenance's ``dirty`` with a run's code paths: an edit elsewhere in the checkout does not count."""
    from common.harness import provenance

    repo = tmp_path / "repo"
    (repo / "papers" / "a").mkdir(parents=True)
    (repo / "papers" / "b").mkdir(parents=True)
    for name in ("a", "b"):
        (repo / "papers" / name / "m.py").write_text("x = 1\n")

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (repo / "papers" / "b" / "m.py").write_text("x = 2\n")
    assert provenance.git_state(repo, paths=[repo / "papers" / "a"])["dirty"] is False
    assert provenance.git_state(repo, paths=[repo / "papers" / "b"])["dirty"] is True
    assert provenance.git_state(repo)["dirty"] is True


def test_zoo_checkpoints_stale_only_the_runs_that_loaded_them(tmp_path):
    """Adding or retraining a zoo model leaves the code hash alone; a run is stale when a checkpoint *it loaded*
    was retrained or removed (provenance.json → checkpoints), so one new model does not stale every zoo user."""
    import torch

    from common import zoo
    from common.harness import provenance

    common = tmp_path / "common"
    shutil.copytree(REPO / "common", common, ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    (common / "zoo" / "checkpoints").mkdir()
    papers = {slug: spec.load(slug) for slug in spec.list_papers()}
    users = [s for s, p in papers.items() if common / "zoo" in provenance.common_dependencies(p, common)]
    assert users, "the test needs a paper that imports common.zoo"
    paper = papers[users[0]]
    zoo.save_checkpoint("a", {"w": torch.zeros(3)}, {"config": {}}, directory=common / "zoo" / "checkpoints")
    before = provenance.code_hash(paper, common)
    prov = {"code_hash": before, "checkpoints": {"a": zoo.load_manifest("a", common / "zoo" / "checkpoints")["sha256"]}}
    assert provenance.stale_reason(prov, paper, common) is None

    zoo.save_checkpoint("b", {"w": torch.ones(3)}, {"config": {}}, directory=common / "zoo" / "checkpoints")
    (common / "zoo" / "notebooks" / "train_b.ipynb").write_text("{}\n")
    assert provenance.code_hash(paper, common) == before  # a new model and its notebook: nothing stale
    assert provenance.stale_reason(prov, paper, common) is None

    manifest = common / "zoo" / "checkpoints" / "a.json"
    prov["checkpoint_manifests"] = {"a": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    assert provenance.stale_reason(prov, paper, common) is None  # the manifest as the run read it
    manifest.write_text(manifest.read_text().replace('"config": {}', '"config": {"edited": 1}'))
    assert provenance.stale_reason(prov, paper, common) == "zoo checkpoint changed: a (manifest edited)"
    zoo.save_checkpoint("a", {"w": torch.zeros(3)}, {"config": {}}, directory=common / "zoo" / "checkpoints")
    assert provenance.stale_reason(prov, paper, common) is None  # the same weights and manifest again
    zoo.save_checkpoint("a", {"w": torch.ones(3)}, {"config": {}}, directory=common / "zoo" / "checkpoints")
    assert provenance.stale_reason(prov, paper, common) == "zoo checkpoint changed: a (retrained)"
    for suffix in (".json", ".safetensors"):
        (common / "zoo" / "checkpoints" / f"a{suffix}").unlink()
    assert provenance.stale_reason(prov, paper, common) == "zoo checkpoint changed: a (removed)"
    (common / "zoo" / "__init__.py").write_text((common / "zoo" / "__init__.py").read_text() + "\n# touched\n")
    assert "code changed" in provenance.stale_reason(prov, paper, common)


def test_a_run_records_the_zoo_checkpoints_it_loaded(toy, tmp_path, edit_toy):
    from common import zoo

    edit_toy(toy, 'record("toy.wall_s", 0.1, volatile=True)',
             'record("toy.wall_s", 0.1, volatile=True)\nfrom common.zoo import load_checkpoint\n'
             'load_checkpoint("digits_classifier")')
    report = runner_run(toy, tmp_path)
    prov = json.loads((report.destination / "provenance.json").read_text())
    assert prov["checkpoints"] == {"digits_classifier": zoo.load_manifest("digits_classifier")["sha256"]}
    assert set(prov["checkpoint_manifests"]) == {"digits_classifier"}
    assert prov["notebooks"]["01_toy"]["kernel"]["checkpoints"] == prov["checkpoints"]


def runner_run(root, tmp_path):
    from common.harness import runner

    report = runner.run_paper("toy", "ci", papers_root=root, results_root=tmp_path / "results",
                              failed_root=tmp_path / "failed", progress=False, check_goldens=False)
    assert report.ok, report.summary()
    return report


def test_rehash_compares_exactly_the_files_a_hash_reads():
    """`rehash` decides what changed from `provenance.hashed_files`: these are the files that count."""
    from common.harness import provenance

    papers = {slug: spec.load(slug) for slug in spec.list_papers()}
    slug = next(s for s, p in papers.items() if "common/zoo" in {d.relative_to(REPO).as_posix()
                                                               for d in provenance_deps(p)})
    files = {p.relative_to(REPO).as_posix() for p in provenance.hashed_files(papers[slug])}
    assert "common/harness/runner.py" in files  # every run depends on the harness
    assert {"common/zoo/__init__.py", "requirements.lock", f"papers/{slug}/paper.yaml"} <= files
    assert not any(f.startswith(("common/zoo/checkpoints/", "common/zoo/notebooks/")) for f in files)
    assert f"papers/{slug}/README.md" not in files and not any(f.startswith(f"papers/{slug}/tests/") for f in files)
    other = next(s for s in papers if s != slug)
    assert f"papers/{other}/paper.yaml" not in files


def provenance_deps(paper):
    from common.harness import provenance

    return provenance.common_dependencies(paper)


def test_an_extras_pin_stales_only_the_papers_that_use_it(tmp_path, monkeypatch):
    """requirements-extras.lock enters a paper's code hash only through the pins of what the paper uses."""
    from common.harness import provenance

    lock = tmp_path / "requirements-extras.lock"
    lock.write_text((REPO / "requirements-extras.lock").read_text())
    monkeypatch.setattr(provenance, "EXTRAS_LOCK", lock)
    papers = {slug: spec.load(slug) for slug in spec.list_papers()}
    users = {slug for slug, p in papers.items() if any(line.startswith("gymnasium==")
                                                       for line in provenance.extras_pins(p))}
    assert "wasserstein_believer" in users  # its POMDPs follow gymnasium's Env API (common/pomdp.py)
    before = {slug: provenance.code_hash(p) for slug, p in papers.items()}
    lock.write_text(lock.read_text().replace("gymnasium==", "gymnasium==0.0.0+") + "\n")
    after = {slug: provenance.code_hash(p) for slug, p in papers.items()}
    assert {slug for slug in papers if before[slug] != after[slug]} == users


def test_aliased_and_parenthesised_common_imports_count():
    """`from common import regression_metrics as rm` (light_curves) and multi-line imports are dependencies."""
    from common.harness import provenance

    deps = {d.relative_to(REPO).as_posix() for d in provenance.common_dependencies(spec.load("light_curves"))}
    assert "common/regression_metrics.py" in deps


def test_a_run_records_the_manifests_it_read(toy, tmp_path, edit_toy):
    import hashlib

    from common import zoo

    edit_toy(toy, 'record("toy.wall_s", 0.1, volatile=True)',
             'record("toy.wall_s", 0.1, volatile=True)\nfrom common.zoo import load_manifest\n'
             'load_manifest("digits_classifier")')
    report = runner_run(toy, tmp_path)
    prov = json.loads((report.destination / "provenance.json").read_text())
    manifest = zoo.CHECKPOINT_DIR / "digits_classifier.json"
    assert prov["checkpoint_manifests"] == {"digits_classifier": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    assert prov["checkpoints"] == {}  # a manifest read loads no weights


def test_rehash_checks_that_a_declared_file_computes_the_same(tmp_path):
    """Docstrings and comments are free; any change to the syntax tree, or an uncheckable file, is not."""
    from common.harness import rehash

    repo = _scratch_repo(tmp_path)
    module = repo / "m.py"
    module.write_text('"""Old docstring."""\nimport math\n\n\ndef f(x):\n    """Old."""\n    return math.sqrt(x)  # c\n')
    notebook = repo / "n.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": "# old"},
                                              {"cell_type": "code", "metadata": {"tags": ["parameters"]},
                                               "source": ["seed = 0\n"]},
                                              {"cell_type": "code", "metadata": {}, "source": "y = seed  # c"}]}))
    (repo / "p.yaml").write_text("a: 1\n")
    base = _commit(repo, "base")
    module.write_text('"""New docstring, longer."""\nimport math\n\n\ndef f(x):\n    # a comment\n\n'
                      '    return math.sqrt(x)\n')
    notebook.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": "# new words"},
                                              {"cell_type": "code", "metadata": {"tags": ["parameters"]},
                                               "source": ["seed = 0\n"]},
                                              {"cell_type": "code", "metadata": {}, "source": "y = (seed)\n"}]}))
    (repo / "p.yaml").write_text("a: 1  # same value, but YAML is not checked\n")
    _commit(repo, "cosmetic")
    same = {p: rehash.computes_the_same(base, p, cwd=repo) for p in ("m.py", "n.ipynb", "p.yaml")}
    assert same == {"m.py": True, "n.ipynb": True, "p.yaml": False}

    module.write_text(module.read_text().replace("math.sqrt(x)", "math.sqrt(x) + 0.0"))
    notebook.write_text(notebook.read_text().replace('"parameters"', '"other"'))  # the tag matters to papermill
    _commit(repo, "code")
    assert not rehash.computes_the_same(base, "m.py", cwd=repo)
    assert not rehash.computes_the_same(base, "n.ipynb", cwd=repo)
    assert not rehash.computes_the_same(base, "absent.py", cwd=repo)  # added or deleted: not checkable
    assert rehash._python_fingerprint("x = __doc__") is None  # reads its docstring: not checkable
    assert rehash._python_fingerprint("import inspect\ny = inspect.getdoc(f)") is None
    assert rehash._python_fingerprint("y = getattr(f, '__doc__')") is None
    assert rehash._python_fingerprint("p = argparse.ArgumentParser(description=__doc__.splitlines()[0])")
    cookie = "# -*- coding: {} -*-\ns = 'caf\u00e9'\n"  # the same text, decoded differently at run time
    assert not rehash.same_computation("c.py", cookie.format("utf-8").encode(), cookie.format("latin-1").encode())

    def params(source):
        return json.dumps({"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                                      "source": source}]}).encode()

    assert not rehash.same_computation("n.ipynb", params("a = 1; b = 2\n"), params("a = 1\nb = 2\n"))


def _scratch_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _commit(repo, message):
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


_MAKE_CURRENT = r"""
import json
from common.harness import provenance, runner, spec
paper = spec.load("svarm")
code = provenance.code_hash(paper)
for profile in ("ci", "full"):
    path = spec.REPO_ROOT / "results" / "svarm" / profile / "provenance.json"
    prov = json.loads(path.read_text())
    _, _, effective = runner.prepare("svarm", profile, {})
    params = {paper.notebook_key(nb): p for nb, p in effective.items()}
    prov.update(code_hash=code, input_hash=provenance.input_hash(code, params), rehashed=[])
    path.write_text(json.dumps(prov))
"""


def test_rehash_end_to_end_on_a_clone(tmp_path):
    """In a clone: a docstring edit is carried across and stamped `verified`; a code edit is refused, and
    carried only with --force, stamped `forced`; the stamped result is current by `stale_reason`."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}

    def python(*args, check=True):
        done = subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True)
        assert not check or done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def rehash(*extra):  # exit status 1: some results stay stale (here every paper but svarm)
        return python("-m", "common.harness", "rehash", "--base", base, "--allow", module, "--reason", "test",
                      *extra, check=False)

    def outcome(out, result):
        return next(line.split(None, 1)[1] for line in out.splitlines() if line.startswith(result + " "))

    def stamps(profile="ci"):
        prov = json.loads((clone / "results" / "svarm" / profile / "provenance.json").read_text())
        return prov["rehashed"]

    for source in (REPO / "common" / "harness").glob("*.py"):  # test this checkout's harness, committed or not
        shutil.copy2(source, clone / "common" / "harness" / source.name)
    python("-c", _MAKE_CURRENT)  # whatever HEAD's results are, make svarm's current at the base commit
    base = _commit(clone, "base: svarm current")
    module = "papers/svarm/approximators.py"
    source = (clone / module).read_text()
    (clone / module).write_text(source.replace('"""', '"""A docstring edit. ', 1) + "\n# a comment\n")
    _commit(clone, "docstring")
    out = rehash()
    assert outcome(out, "svarm/ci") == "rehashed" and outcome(out, "svarm/full") == "rehashed"
    assert [s["verified"] for s in stamps()] == [[module]] and stamps()[0]["forced"] == []
    assert [s["verified"] for s in stamps("full")] == [[module]]
    check = ("from common.harness import provenance, spec; import json; p = spec.load('svarm'); "
             "print(provenance.stale_reason(json.loads(open('results/svarm/ci/provenance.json').read()), p))")
    assert python("-c", check).strip() == "None"

    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--", "results"], check=True)
    (clone / module).write_text(source + "\n_UNUSED = 1\n")
    _commit(clone, "code")
    out = rehash()
    assert outcome(out, "svarm/ci").startswith("declared, but changes code") and stamps() == []  # refused
    out = rehash("--force")
    assert outcome(out, "svarm/ci") == f"rehashed (forced: {module})"
    assert [s["forced"] for s in stamps()] == [[module]] and stamps()[0]["verified"] == []

    # a result edited since base is refused, even with --force; so is an untracked file in the tree
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--", "results"], check=True)
    metrics = clone / "results" / "svarm" / "ci" / "metrics.json"
    metrics.write_text(metrics.read_text().replace("{", '{"edited": 1, ', 1))
    _commit(clone, "an edited result")
    out = rehash("--force")
    assert outcome(out, "svarm/ci").startswith("its results changed since") and stamps() == []
    assert outcome(out, "svarm/full") == f"rehashed (forced: {module})"  # its folder did not change
    (clone / "papers" / "svarm" / "untracked.py").write_text("x = 1\n")
    done = subprocess.run([sys.executable, "-m", "common.harness", "rehash", "--base", base, "--allow", module,
                           "--reason", "test"], cwd=clone, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "untracked" in done.stderr + done.stdout
