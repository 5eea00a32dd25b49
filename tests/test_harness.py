"""The harness on a toy paper: errors are clear and a failed run never loses results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common.harness import contract, goldens, parameters, recording, runner, scaffold, spec
from common.harness.bless import bless
from common.harness.io import read_json

FIXTURES = Path(__file__).parent / "fixtures" / "papers"
REPO = Path(__file__).resolve().parents[1]


def run(root, tmp_path, params=None, **kwargs):
    return runner.run_paper("toy", "ci", params, papers_root=root, results_root=tmp_path / "results",
                            runs_root=tmp_path / "runs", failed_root=tmp_path / "failed", progress=False, **kwargs)


def edit_yaml(root, mutate):
    path = root / "toy" / "paper.yaml"
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))


def cli(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "common.harness", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


# --- parameters -----------------------------------------------------------------------------------

def test_unknown_parameter_is_named():
    result = cli("run", "toy", "--papers-root", str(FIXTURES), "--results-root", "/nonexistent", "--params", "bogus=1")
    assert result.returncode == 2
    assert "bogus" in result.stderr and "seed" in result.stderr  # names it and lists what is accepted


def test_wrong_type_is_named():
    with pytest.raises(parameters.ParameterError, match=r"'n' takes an int .* got 'abc'"):
        runner.prepare("toy", "ci", {"n": "abc"}, FIXTURES)
    with pytest.raises(parameters.ParameterError, match="'fail' takes a bool"):
        runner.prepare("toy", "ci", {"fail": 1}, FIXTURES)
    _, _, effective = runner.prepare("toy", "ci", {"sleep_s": 1}, FIXTURES)  # int is fine for a float
    assert effective["01_toy.ipynb"] == {"sleep_s": 1.0}


def test_parse_assignments():
    assert parameters.parse_assignments("seed=3 n_runs=5 budgets='[1, 2]' name=abc on=true") == {
        "seed": 3, "n_runs": 5, "budgets": [1, 2], "name": "abc", "on": True}
    with pytest.raises(parameters.ParameterError, match="name=value"):
        parameters.parse_assignments(["seed"])


def test_unknown_paper_fails_clearly():
    result = cli("run", "nosuch", "--no-progress")
    assert result.returncode == 2
    assert "unknown paper 'nosuch'" in result.stderr


# --- running --------------------------------------------------------------------------------------

def test_run_writes_artifacts_and_is_deterministic(toy, tmp_path):
    first = run(toy, tmp_path, check_goldens=False)
    assert first.ok, first.summary()
    folder = tmp_path / "results" / "toy" / "ci"
    for name in ("01_toy.ipynb", "metrics.json", "claims.json", "provenance.json", "01_toy/metrics.json"):
        assert (folder / name).is_file(), name
    prov = read_json(folder / "provenance.json")
    for key in ("git", "code_hash", "input_hash", "versions", "device", "started", "finished", "notebooks"):
        assert key in prov
    assert prov["notebooks"]["01_toy"]["cell_durations_s"]
    assert prov["notebooks"]["01_toy"]["peak_rss_mb"] > 0
    assert prov["notebooks"]["01_toy"]["cpu_s"] > 0  # the kernel's CPU seconds (the load-independent budget)
    metrics = read_json(folder / "metrics.json")
    assert metrics["volatile"] == {"01_toy": ["toy.wall_s"]}
    executed = json.loads((folder / "01_toy.ipynb").read_text())
    scraps = [o for c in executed["cells"] for o in c.get("outputs", [])
              if "application/scrapbook.scrap.json+json" in o.get("data", {})]
    assert {s["data"]["application/scrapbook.scrap.json+json"]["name"] for s in scraps} >= {"toy.mean", "toy.std"}

    second = run(toy, tmp_path, check_goldens=False)
    assert second.ok
    again = read_json(folder / "metrics.json")
    assert again["notebooks"]["01_toy"]["toy.mean"] == metrics["notebooks"]["01_toy"]["toy.mean"]
    assert again["notebooks"]["01_toy"]["toy.std"] == metrics["notebooks"]["01_toy"]["toy.std"]
    assert not list((tmp_path / "results" / "toy").glob(".*")), "no temporary folders left behind"


def test_failing_cell_is_reported_and_results_kept(toy, tmp_path):
    good = run(toy, tmp_path, check_goldens=False)
    assert good.ok
    before = read_json(tmp_path / "results" / "toy" / "ci" / "provenance.json")["started"]
    # make the canonical run fail in a cell
    nb_path = toy / "toy" / "notebooks" / "01_toy.ipynb"
    nb_path.write_text(nb_path.read_text().replace("fail = False", "fail = True"))
    bad = run(toy, tmp_path, check_goldens=False)
    assert not bad.ok
    message = bad.notebooks[0].error
    assert "toy/01_toy.ipynb" in message and "cell 3" in message and "RuntimeError: asked to fail" in message
    failed_path = Path(message.split("failed notebook: ")[1].strip())
    assert failed_path.is_file()
    assert read_json(tmp_path / "results" / "toy" / "ci" / "provenance.json")["started"] == before


def test_failing_claim_fails_the_run_and_keeps_results(toy, tmp_path):
    assert run(toy, tmp_path, check_goldens=False).ok
    before = (tmp_path / "results" / "toy" / "ci" / "claims.json").read_text()
    edit_yaml(toy, lambda d: d["claims"][1].update(check="toy.std > 5"))
    report = run(toy, tmp_path, check_goldens=False)
    assert not report.ok
    assert {c.id: c.status for c in report.claims} == {"mean_small": "reproduced", "std_near_one": "failed"}
    assert "claim std_near_one: failed" in report.summary()
    assert (tmp_path / "results" / "toy" / "ci" / "claims.json").read_text() == before


def test_claim_on_unrecorded_metric_is_an_error(toy, tmp_path):
    edit_yaml(toy, lambda d: d["claims"][1].update(check="toy.never < 1"))
    report = run(toy, tmp_path, check_goldens=False)
    assert not report.ok
    failed = {c.id: c for c in report.claims}["std_near_one"]
    assert failed.status == "failed" and "never recorded: toy.never" in failed.message


def test_not_reproduced_claim_stays_visible_without_failing(toy, tmp_path):
    edit_yaml(toy, lambda d: d["claims"][1].update(
        kind="paper", check="toy.std > 5", expected_outcome="not_reproduced", explanation="the effect does not appear"))
    report = run(toy, tmp_path, check_goldens=False)
    assert report.ok, report.summary()
    assert {c.id: c.status for c in report.claims}["std_near_one"] == "not_reproduced"
    stored = read_json(tmp_path / "results" / "toy" / "ci" / "claims.json")
    assert stored["verdict"] == "partial" and stored["score"] == 0.5
    assert stored["counts"]["paper"]["reproduced"] == 1 and stored["counts"]["paper"]["not_reproduced"] == 1


def test_inconclusive_and_sanity_claims_do_not_make_the_verdict(toy, tmp_path):
    edit_yaml(toy, lambda d: d["claims"][0].update(decisive="toy.std > 5", explanation="cannot decide here"))
    report = run(toy, tmp_path, check_goldens=False)
    assert report.ok, report.summary()
    assert {c.id: c.status for c in report.claims} == {"mean_small": "inconclusive", "std_near_one": "reproduced"}
    stored = read_json(tmp_path / "results" / "toy" / "ci" / "claims.json")
    assert stored["verdict"] == "inconclusive" and stored["score"] is None
    assert stored["claims"]["std_near_one"]["kind"] == "sanity"


def test_bad_claim_expression_is_a_clear_error(toy, tmp_path):
    edit_yaml(toy, lambda d: d["claims"][0].update(check="exp(1000 + toy.mean) > 1"))
    report = run(toy, tmp_path, check_goldens=False)
    assert not report.ok
    # the notebook's show_claims() raises first, naming the paper and the claim
    assert "ExpressionError: toy: claim mean_small: overflow" in report.summary()


def test_network_is_blocked_in_notebooks(tmp_path):
    report = run(FIXTURES, tmp_path, {"try_network": True})
    assert not report.ok
    assert "network access blocked" in report.notebooks[0].error


def test_interrupted_run_keeps_previous_results(toy, tmp_path):
    assert run(toy, tmp_path, check_goldens=False).ok
    folder = tmp_path / "results" / "toy" / "ci"
    before = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    nb_path = toy / "toy" / "notebooks" / "01_toy.ipynb"
    nb_path.write_text(nb_path.read_text().replace("sleep_s = 0.0", "sleep_s = 60.0"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "common.harness", "run", "toy", "--papers-root", str(toy),
                             "--results-root", str(tmp_path / "results"), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Like Ctrl-C in a terminal: a parent that ignores SIGINT (an xdist worker, a
                            # background shell job) would otherwise hand SIG_IGN down to the child.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "results" / "toy").glob(".ci.tmp-*/01_toy/metrics.json")):
        time.sleep(0.2)  # wait until the notebook is midway (it has recorded its metrics)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "previous results are untouched" in err
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == before
    assert not list((tmp_path / "results" / "toy").glob(".ci.tmp-*")), "the staging folder is cleaned up"


# --- goldens --------------------------------------------------------------------------------------

def test_tolerance_from_seed_spread_hardware_spread_and_floor():
    t = goldens.tolerance([1.0, 1.2, 0.8])
    assert t["spread"] == pytest.approx(0.2) and t["atol"] == pytest.approx(0.6)
    # deterministic metric: the hardware spread, measured under other kernels, sets the tolerance
    t = goldens.tolerance([2.46e-6, 2.46e-6], variants=[1.93e-6, 1.90e-6])
    assert t["hardware_spread"] == pytest.approx(0.56e-6)
    assert t["atol"] == pytest.approx(goldens.HARDWARE_K * 0.56e-6)
    # no spread at all: the precision floor (float32: 64 ulps relative), integers compare exactly
    assert goldens.tolerance([5.0, 5.0], [5.0], dtype="float32")["atol"] == pytest.approx(5 * 64 * 2.0 ** -23)
    assert goldens.tolerance([5.0, 5.0])["atol"] == pytest.approx(5e-6)
    assert goldens.tolerance([10, 10], [10])["atol"] == 0.0
    with pytest.raises(goldens.HardwareDependenceError):
        goldens.tolerance([[1.0, 2.0], [1.0, 2.0]], variants=[[1.0]])


def test_log_scale_arrays_and_integers_compare():
    built = goldens.build(
        [{"nb": {"err": 2e-6, "per_seed": [1.0, 2.0], "nfe": 10}},
         {"nb": {"err": 2.1e-6, "per_seed": [1.1, 2.1], "nfe": 10}}],
        {}, {}, variants={"avx2": {"nb": {"err": 1.5e-6, "per_seed": [1.0, 2.0], "nfe": 10}}},
        log_factors={"nb": {"err": 3.0}})
    entries = built["notebooks"]["nb"]
    assert entries["err"]["compare"] == "log" and entries["err"]["hardware"] == {"avx2": 1.5e-6}
    assert entries["per_seed"]["seeds"] == [[1.0, 2.0], [1.1, 2.1]]
    assert goldens.compare_metric("err", 5.9e-6, entries["err"]) is None
    assert "log scale" in goldens.compare_metric("err", 7e-6, entries["err"])
    assert goldens.compare_metric("err", 0.0, entries["err"])
    assert goldens.compare_metric("per_seed", [1.05, 2.05], entries["per_seed"]) is None
    assert isinstance(entries["per_seed"]["atol"], list) and len(entries["per_seed"]["atol"]) == 2
    assert "shape" in goldens.compare_metric("per_seed", [1.0], entries["per_seed"])
    assert goldens.compare_metric("nfe", 11, entries["nfe"])
    # a generous declared factor is capped by what the kernels show: max(3, ratio^3)
    capped = goldens.build([{"nb": {"err": 2e-6}}], {}, {}, variants={"sse": {"nb": {"err": 2e-6}}},
                           log_factors={"nb": {"err": 100.0}})["notebooks"]["nb"]["err"]
    assert capped["factor"] == goldens.LOG_MIN and capped["declared_factor"] == 100.0
    # a declared factor that the measured kernels already exceed is refused at bless time
    with pytest.raises(goldens.HardwareDependenceError, match="log_factor"):
        goldens.build([{"nb": {"err": 2e-6}}], {}, {}, variants={"sse": {"nb": {"err": 9e-6}}},
                      log_factors={"nb": {"err": 3.0}})


def test_bless_then_compare(toy, tmp_path):
    variants = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}}
    target = bless("toy", n_seeds=2, papers_root=toy, results_root=tmp_path / "results", progress=False,
                   variants=variants)
    data = read_json(target)
    assert data["provenance"]["seeds"] == {"01_toy": [0, 1]}
    assert data["provenance"]["kernel_variants"] == variants
    entry = data["notebooks"]["01_toy"]["toy.mean"]
    assert entry["atol"] > 0 and "toy.wall_s" not in data["notebooks"]["01_toy"]
    assert len(entry["seeds"]) == 2 and set(entry["hardware"]) == {"avx2"}
    assert data["volatile"] == {"01_toy": ["toy.wall_s"]}  # no golden, but a claim may read it
    assert run(toy, tmp_path).ok
    entry["value"] += 10 * entry["atol"]
    target.write_text(json.dumps(data))
    report = run(toy, tmp_path)
    assert not report.ok
    assert any("toy.mean" in p and "golden" in p for p in report.golden_problems)


def test_kernel_environment_reaches_the_notebook_and_provenance(toy, tmp_path):
    report = run(toy, tmp_path, check_goldens=False, env={"OPENBLAS_CORETYPE": "Haswell"})
    assert report.ok
    prov = read_json(report.destination / "provenance.json")
    assert prov["numeric_env"]["OPENBLAS_CORETYPE"] == "Haswell"
    # what the kernel process itself saw (written from inside the notebook's kernel)
    assert prov["notebooks"]["01_toy"]["kernel"]["numeric_env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert "OPENBLAS_CORETYPE" not in os.environ or os.environ["OPENBLAS_CORETYPE"] != "Haswell"


# --- scaffold and contract ------------------------------------------------------------------------

def test_scaffold_conforms_and_runs(tmp_path):
    root = tmp_path / "papers"
    scaffold.scaffold("demo", root, check_catalog=False)
    problems = contract.problems("demo", root)
    assert problems == ["demo: missing expected/ci.json (run `make bless PAPER=demo`)"]
    bless("demo", n_seeds=2, papers_root=root, results_root=tmp_path / "results", progress=False)
    assert contract.problems("demo", root) == []


def test_contract_accepts_claims_on_volatile_metrics(tmp_path):
    root = tmp_path / "papers"
    scaffold.scaffold("demo", root, check_catalog=False)
    bless("demo", n_seeds=2, papers_root=root, results_root=tmp_path / "results", progress=False)
    golden = root / "demo" / "expected" / "ci.json"
    data = read_json(golden)
    data["volatile"] = {"01_main": ["mc.wall_s"]}
    golden.write_text(json.dumps(data))
    paper = root / "demo" / "paper.yaml"
    spec_data = yaml.safe_load(paper.read_text())
    spec_data["claims"].append({"id": "fast", "kind": "paper", "statement": "Fast enough.", "source": "Sec. 1",
                                "check": "mc.wall_s < 100", "profiles": ["ci"]})
    paper.write_text(yaml.safe_dump(spec_data))
    assert contract.problems("demo", root) == []
    data.pop("volatile")
    golden.write_text(json.dumps(data))
    assert any("mc.wall_s" in p for p in contract.problems("demo", root))


def test_scaffold_rejects_unknown_slug():
    with pytest.raises(spec.UnknownPaperError, match="catalog"):
        scaffold.scaffold("not_a_paper", Path("/nonexistent"))


def test_contract_catches_unstripped_notebook(toy):
    nb_path = toy / "toy" / "notebooks" / "01_toy.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"][2]["execution_count"] = 3
    nb["metadata"]["papermill"] = {}
    nb_path.write_text(json.dumps(nb))
    problems = "\n".join(contract.notebook_problems(nb_path))
    assert "cell 2 has outputs" in problems and "papermill metadata" in problems


# --- the notebook API outside a run ---------------------------------------------------------------

def test_record_validates_names_and_values(monkeypatch):
    monkeypatch.delenv("REPRO_RUN_DIR", raising=False)
    with pytest.raises(ValueError, match="dot-separated"):
        recording.record("bad name", 1.0)
    with pytest.raises(TypeError, match="a number, a bool or a 1-D sequence"):
        recording.record("ok.name", "text")
    import numpy as np

    assert recording.record("ok.name", np.float32(0.5)) == 0.5
    assert recording._dtypes["ok.name"] == "float32"
    assert recording.record("ok.seeds", np.array([1.0, 2.0])) == [1.0, 2.0]
    with pytest.raises(ValueError, match="1-D"):
        recording.record("ok.matrix", np.ones((2, 2)))
    with pytest.raises(ValueError, match="log_factor"):
        recording.record("ok.err", 1e-6, log_factor=0.5)
    assert recording.record("ok.name", 2) == 2  # re-recording is allowed interactively


# --- reviewing and citing -------------------------------------------------------------------------

def test_nbval_reexecutes_the_verdict_cell(toy, tmp_path):
    assert run(toy, tmp_path, check_goldens=False).ok
    executed = tmp_path / "results" / "toy" / "ci" / "01_toy.ipynb"
    env = {**os.environ, "REPRO_PAPER": "toy", "REPRO_PAPERS_ROOT": str(toy), "REPRO_PROFILE": "ci"}
    env.pop("REPRO_RUN_DIR", None)
    command = [sys.executable, "-m", "pytest", "-p", "no:xdist", "--nbval-lax", "--nbval-current-env",
               "-o", "testpaths=", "-q", str(executed)]
    assert subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True).returncode == 0
    # a verdict that does not reproduce is caught
    nb = json.loads(executed.read_text())
    out = nb["cells"][-1]["outputs"][0]
    out["text"] = [line.replace("reproduced", "failed") for line in out["text"]]
    executed.write_text(json.dumps(nb))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0, done.stdout


def test_bibtex_from_paper_yaml():
    from common.harness.cite import bibtex

    text = bibtex(spec.load("toy", FIXTURES))
    assert text.startswith("@article{lovelace2024toy,")
    assert "title = {{A toy paper for the harness tests}}" in text and "author = {Ada Lovelace}" in text


def test_code_hash_covers_only_the_common_modules_a_paper_imports(toy):
    from common.harness import provenance

    paper = spec.load("toy", toy)
    deps = [p.relative_to(spec.REPO_ROOT).as_posix() for p in provenance.common_dependencies(paper)]
    assert deps == ["common/__init__.py", "common/harness"]
    before = provenance.code_hash(paper)
    nb = toy / "toy" / "notebooks" / "01_toy.ipynb"
    nb.write_text(nb.read_text().replace("n = 1000", "n = 1001"))
    assert provenance.code_hash(paper) != before


def test_a_metric_name_recorded_by_two_notebooks_is_an_error():
    assert runner.duplicate_metrics({"01_a": {"x": 1, "y": 2}, "02_b": {"x": 3}}) == [
        "metric x is recorded by several notebooks (01_a, 02_b); metric names are per paper"]
    assert runner.duplicate_metrics({"01_a": {"x": 1}, "02_b": {"y": 3}}) == []


def test_kernels_import_this_checkout(toy, tmp_path, edit_toy):
    """The runner puts the repository first on the kernels' PYTHONPATH: a worktree sharing another checkout's
    .venv (whose editable install points elsewhere) still runs its own `common`."""
    root = str(spec.REPO_ROOT)
    edit_toy(toy, 'record("toy.wall_s", 0.1, volatile=True)',
             'record("toy.wall_s", 0.1, volatile=True)\nimport os, common\n'
             f'assert os.environ["PYTHONPATH"].split(os.pathsep)[1] == {root!r}, os.environ["PYTHONPATH"]\n'
             f'assert common.__file__.startswith({root!r}), common.__file__')
    report = run(toy, tmp_path, check_goldens=False)
    assert report.ok, report.summary()
