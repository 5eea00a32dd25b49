"""A re-bless must not break the machines that blessed before with the same code: earlier values are checked,
breaks refused, stale values (older code or inputs) dropped and listed, passing values carried."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.harness import __main__ as cli_main
from common.harness import goldens, runner
from common.harness.bless import bless
from common.harness.io import dumps, read_json

REPO = Path(__file__).resolve().parents[1]


def blessed_on(cpu, values, *, sse=None, volatile=None, commit=None, code="code-A", inputs="input-A", capability=None):
    """Goldens as bless builds them: ``values`` = the canonical seed's then another seed's value of ``nb: m``
    (the seed spread sets atol = 3 x stdev), plus an integer ``nb: n`` and, optionally, an sse kernel variant.
    Blessed with code hash ``code`` and input hash ``inputs`` (the same by default: failures are breaks)."""
    runs = [{"nb": {"m": v, "n": 10}} for v in values]
    variants = {"sse": {"nb": {"m": values[0] if sse is None else sse, "n": 10}}}
    provenance = {"cpu": cpu, "device": f"CPU (2 cores): {cpu}", "commit": commit or f"{cpu}-commit",
                  "code_hash": code, "input_hash": inputs, "created": "2026-12-04T00:00:00+00:00"}
    if capability:
        provenance["cpu_capability"] = capability
    return goldens.build(runs, volatile or {}, provenance, variants=variants)


def atol(golden, name="m"):
    return golden["notebooks"]["nb"][name]["atol"]


# --- the check at bless time ------------------------------------------------------------------------

def test_refuses_when_an_earlier_value_fails_and_names_it():
    old = blessed_on("Intel Xeon", [1.0, 1.01], sse=1.004)
    new = blessed_on("AMD EPYC", [1.2, 1.21])  # atol about 0.021: Intel's 1.0 and 1.004 fall outside
    with pytest.raises(goldens.BreaksEarlierBlessingsError) as caught:
        goldens.supersede(old, new)
    failures = caught.value.failures
    assert [(f.notebook, f.metric, f.machine, f.kernel) for f in failures] == [
        ("nb", "m", "Intel Xeon", "canonical"), ("nb", "m", "Intel Xeon", "sse")]
    assert [f.value for f in failures] == [1.0, 1.004]
    message = str(caught.value)
    # notebook, metric, old machine, old value, new value ± tolerance
    assert "nb: m = 1, golden 1.2 ± 0.0" in message and "blessed on Intel Xeon, canonical kernels" in message
    assert "2 of the 3 value(s)" in message  # m's canonical and sse values, n's canonical (its sse equals it)
    assert "2 value(s) from another CPU, same code and inputs" in message and "from this CPU" not in message
    assert "nb: m = 1.004, golden 1.2" in message  # every broken value listed, not only counted


def test_passes_when_every_earlier_value_passes_and_carries_them():
    old = blessed_on("Intel Xeon", [1.0, 1.01], sse=1.002)
    new = blessed_on("AMD EPYC", [1.001, 1.011])
    out = goldens.supersede(old, new)
    assert out["notebooks"] == new["notebooks"]  # the entries themselves are untouched
    assert out["provenance"]["previous_check"] == {"machines": ["Intel Xeon"], "values": 3, "failed": 0}
    assert "allow_breaking_previous" not in out["provenance"]
    # compact: the canonical value alone when every kernel gave it, else only the differing variants
    assert out["previous"] == [{"machine": "Intel Xeon", "commit": "Intel Xeon-commit", "code_hash": "code-A",
                                "input_hash": "input-A", "created": "2026-12-04T00:00:00+00:00",
                                "notebooks": {"nb": {"m": {"value": 1.0, "hardware": {"sse": 1.002}}, "n": 10}}}]
    assert goldens.check_file(out) == ([], 3)
    assert goldens.compare(out, {"nb": {"m": 1.005, "n": 10}}, {}) == []  # the new key changes no comparison


def test_override_records_the_reason_and_drops_the_broken_values():
    old = blessed_on("Intel Xeon", [1.0, 1.01])
    new = blessed_on("AMD EPYC", [1.2, 1.21])
    out = goldens.supersede(old, new, allow_breaking_previous="m now averages over 200 draws (notebook 01)")
    allowed = out["provenance"]["allow_breaking_previous"]
    assert allowed["reason"] == "m now averages over 200 draws (notebook 01)"
    assert allowed["broken"] == ["nb: m (Intel Xeon, commit Intel Xeon: canonical)"]
    assert out["provenance"]["previous_check"]["failed"] == 1
    # m's Intel values are not carried (they would fail goldens-check forever); n's still pass and are
    assert out["previous"][0]["notebooks"] == {"nb": {"n": 10}}
    assert goldens.check_file(out) == ([], 1)
    with pytest.raises(ValueError, match="reason"):
        goldens.supersede(old, new, allow_breaking_previous="  ")
    # an override that nothing needed records nothing
    calm = goldens.supersede(old, blessed_on("AMD EPYC", [1.0, 1.01]), allow_breaking_previous="just in case")
    assert "allow_breaking_previous" not in calm["provenance"]


def test_a_kernel_variant_alone_can_fail():
    old = blessed_on("Intel Xeon", [1.0, 1.001], sse=1.3)  # Intel's sse kernels moved m a lot
    new = blessed_on("AMD EPYC", [1.0, 1.001])              # AMD's did not: atol about 0.002
    with pytest.raises(goldens.BreaksEarlierBlessingsError) as caught:
        goldens.supersede(old, new)
    assert [(f.kernel, f.value) for f in caught.value.failures] == [("sse", 1.3)]


def test_old_files_without_the_new_keys_still_load_compare_and_supersede():
    old = blessed_on("Intel Xeon", [1.0, 1.01])
    del old["provenance"]["cpu"]  # files blessed before `cpu` was recorded: the device label names it
    old["provenance"]["device"] = "CPU (2 cores): Intel(R) Xeon(R) Processor"
    assert "previous" not in old
    assert goldens.machine(old["provenance"]) == "Intel(R) Xeon(R) Processor"
    assert goldens.machine({"device": "NVIDIA H200"}) == "NVIDIA H200" and goldens.machine({}) == "unknown machine"
    assert goldens.check_file(old) == ([], 0)
    assert goldens.compare(old, {"nb": {"m": 1.0, "n": 10}}, {}) == []
    out = goldens.supersede(old, blessed_on("AMD EPYC", [1.0, 1.01]))
    assert [b["machine"] for b in out["previous"]] == ["Intel(R) Xeon(R) Processor"]
    assert goldens.supersede(None, old) is old  # a first bless: nothing to check or carry


def test_every_earlier_machine_is_checked_over_three_blessings():
    a = blessed_on("Intel Xeon", [1.0, 1.01])
    b = goldens.supersede(a, blessed_on("AMD EPYC", [1.02, 1.04]))       # atol ~0.042 accepts Intel's 1.0
    assert [x["machine"] for x in b["previous"]] == ["Intel Xeon"]
    c_new = blessed_on("ARM Neoverse", [1.03, 1.04])                       # atol ~0.021: AMD's 1.02 passes,
    with pytest.raises(goldens.BreaksEarlierBlessingsError) as caught:    # Intel's 1.0 (kept by b) does not
        goldens.supersede(b, c_new)
    assert {f.machine for f in caught.value.failures} == {"Intel Xeon"}
    c = goldens.supersede(b, blessed_on("ARM Neoverse", [1.02, 1.05]))   # atol ~0.064: both pass
    assert [x["machine"] for x in c["previous"]] == ["Intel Xeon", "AMD EPYC"]
    assert c["provenance"]["previous_check"]["machines"] == ["AMD EPYC", "Intel Xeon"]
    assert goldens.check_file(c) == ([], 4)
    # the machine of a file's own blessing supersedes its older entry: Intel re-blessing keeps AMD and ARM only
    d = goldens.supersede(c, blessed_on("Intel Xeon", [1.02, 1.05]))
    assert [x["machine"] for x in d["previous"]] == ["AMD EPYC", "ARM Neoverse"]
    # a re-bless that changes nothing leaves `previous` byte for byte as it was: a small diff
    e = goldens.supersede(d, blessed_on("Intel Xeon", [1.02, 1.05]))
    assert dumps(e["previous"]) == dumps(d["previous"])


def test_the_same_cpu_is_checked_and_refused_too():
    old = blessed_on("AMD EPYC", [1.0, 1.001])
    new = blessed_on("AMD EPYC", [1.1, 1.101])
    with pytest.raises(goldens.BreaksEarlierBlessingsError, match=r"from this CPU \(AMD EPYC\), same code and "
                                                                  r"inputs \(the computation is not deterministic\)"):
        goldens.supersede(old, new)
    out = goldens.supersede(old, new, allow_breaking_previous="m's definition changed")
    assert "previous" not in out  # the same CPU's older values are superseded, not carried


def test_volatile_and_removed_metrics_are_skipped():
    old = blessed_on("Intel Xeon", [1.0, 1.01])
    old["notebooks"]["gone"] = {"x": {"value": 5.0, "atol": 0.0}}
    new = blessed_on("AMD EPYC", [1.0, 1.01], volatile={"nb": ["m"]})  # m is a wall time now: no entry
    new["notebooks"]["nb"]["m"] = {"value": 9.0, "atol": 0.0}           # even if an entry lingered,
    out = goldens.supersede(old, new)                                   # volatile means not compared
    assert out["provenance"]["previous_check"]["values"] == 1           # only n
    assert out["provenance"]["previous_check"]["skipped_gone"] == 1     # gone: x (m is volatile, not gone)
    assert goldens.review(old, new).note_lines() == [
        "1 earlier value(s) skipped: their notebook or metric no longer exists"]
    assert out["previous"][0]["notebooks"] == {"nb": {"n": 10}}
    stored = {**out, "previous": [{"machine": "X", "notebooks": {"nb": {"m": 1.0}, "gone": {"x": 1.0}}}]}
    assert goldens.check_file(stored) == ([], 0)


def test_arrays_booleans_and_log_scale_values_are_checked_like_runs():
    def make(cpu, err, arr, flag):
        return goldens.build([{"nb": {"err": err, "arr": arr, "ok": flag}},
                              {"nb": {"err": err, "arr": [a + 0.01 for a in arr], "ok": flag}}],
                             {}, {"cpu": cpu, "code_hash": "c", "input_hash": "i"}, variants={"sse": {"nb": {"err": err * 1.1, "arr": arr, "ok": flag}}},
                             log_factors={"nb": {"err": 3.0}})
    old = make("Intel Xeon", 2e-6, [1.0, 2.0], True)
    out = goldens.supersede(old, make("AMD EPYC", 3e-6, [1.0, 2.005], True))
    assert out["previous"][0]["notebooks"]["nb"]["arr"] == [1.0, 2.0]
    with pytest.raises(goldens.BreaksEarlierBlessingsError) as caught:
        goldens.supersede(old, make("AMD EPYC", 2e-5, [1.0, 2.5], False))
    assert {f.metric for f in caught.value.failures} == {"err", "arr", "ok"}


# --- stale values: blessed with other code or inputs -----------------------------------------------------

def test_values_of_older_code_that_fail_are_stale_listed_and_dropped_not_refused():
    old = blessed_on("Intel Xeon", [1.0, 1.01], code="code-OLD")  # n = 10 passes, m = 1.0 fails
    new = blessed_on("AMD EPYC", [1.2, 1.21], code="code-NEW")
    found = goldens.review(old, new)
    assert found.breaks == [] and [(f.metric, f.kernel, f.value) for f in found.stale] == [("m", "canonical", 1.0)]
    out = goldens.supersede(old, new)  # no reason needed
    assert "allow_breaking_previous" not in out["provenance"]
    assert out["provenance"]["previous_check"] == {"machines": ["Intel Xeon"], "values": 2, "failed": 0,
                                                   "stale": {"dropped": 1, "code_hashes": {"code-OLD": 1}}}
    # the stale value is dropped; the passing one is carried with the hashes it was blessed with
    (carried,) = out["previous"]
    assert carried["notebooks"] == {"nb": {"n": 10}} and carried["code_hash"] == "code-OLD"
    assert goldens.check_file(out) == ([], 1)
    # each dropped value is printed: notebook, metric, machine, old value, new golden ± tolerance
    (header, line) = found.note_lines()
    assert header.startswith("1 earlier value(s) blessed with other code or inputs fail the new goldens: stale")
    assert line.startswith("  nb: m = 1, golden 1.2 ± ") and "blessed on Intel Xeon, canonical kernels" in line
    assert "code code-OLD" in line


def test_other_inputs_are_stale_too_and_passing_old_code_values_are_carried():
    old = blessed_on("Intel Xeon", [1.0, 1.01], inputs="input-OLD")
    out = goldens.supersede(old, blessed_on("AMD EPYC", [1.2, 1.21]))
    assert out["provenance"]["previous_check"]["stale"] == {"dropped": 1, "code_hashes": {"code-A": 1}}
    # a value that passes is carried whatever its code: a third bless with new code still checks it
    b = goldens.supersede(blessed_on("Intel Xeon", [1.0, 1.01], code="code-OLD"),
                          blessed_on("AMD EPYC", [1.0, 1.01], code="code-NEW"))
    assert b["previous"][0]["code_hash"] == "code-OLD" and b["previous"][0]["notebooks"]["nb"]["m"] == 1.0
    # a blessing whose hashes are unknown (stored before they were recorded) is stale when it fails
    unknown = blessed_on("Intel Xeon", [1.0, 1.01], code=None, inputs=None)
    assert goldens.supersede(unknown, blessed_on("AMD EPYC", [1.2, 1.21]))["provenance"]["previous_check"][
        "stale"]["dropped"] == 1


def test_a_refusal_lists_only_the_same_code_breaks_by_cpu():
    intel_old_code = blessed_on("Intel Xeon", [1.0, 1.01], code="code-OLD")
    amd = goldens.supersede(intel_old_code, blessed_on("AMD EPYC", [1.0, 1.01]))  # passes: Intel carried
    amd["previous"][0]["code_hash"] = "code-OLD"
    new = blessed_on("AMD EPYC", [1.2, 1.21], sse=1.2)  # AMD's own 1.0 fails (same code: nondeterminism)
    with pytest.raises(goldens.BreaksEarlierBlessingsError) as caught:
        goldens.supersede(amd, new)
    assert [(f.machine, f.value) for f in caught.value.failures] == [("AMD EPYC", 1.0)]
    assert [(f.machine, f.value) for f in caught.value.stale] == [("Intel Xeon", 1.0)]
    message = str(caught.value)
    assert "1 value(s) from this CPU (AMD EPYC), same code and inputs" in message
    assert "from another CPU" not in message and "Intel" not in message  # the stale value is no refusal


def test_break_lines_list_every_value_other_cpus_then_this_cpu():
    other = blessed_on("Intel Xeon", [1.0, 1.01], sse=1.004)
    same = blessed_on("AMD EPYC", [1.0, 1.01])
    both = goldens.supersede(other, same)
    both["previous"][0]["notebooks"]["nb"]["m"] = {"value": 1.0, "hardware": {"sse": 1.004}}
    found = goldens.review(both, blessed_on("AMD EPYC", [1.2, 1.21], sse=1.2))
    lines = found.break_lines()
    assert lines[0] == "2 value(s) from another CPU, same code and inputs (this machine's kernels do not bound that one's):"
    assert "m = 1, golden 1.2" in lines[1] and "Intel Xeon, canonical" in lines[1]
    assert "m = 1.004, golden 1.2" in lines[2] and "Intel Xeon, sse" in lines[2]
    assert lines[3].startswith("1 value(s) from this CPU (AMD EPYC)") and "AMD EPYC, canonical" in lines[4]
    assert len(lines) == 5
    out = goldens.supersede(both, blessed_on("AMD EPYC", [1.2, 1.21], sse=1.2), "test", found)
    assert out["provenance"]["allow_breaking_previous"]["broken"] == [
        "nb: m (Intel Xeon, commit Intel Xeon: canonical, sse)", "nb: m (AMD EPYC, this CPU, commit AMD EPYC-c: canonical)"]


# --- the machine key: CPU and torch's CPU capability --------------------------------------------------

def test_machine_key_adds_torchs_cpu_capability_and_falls_back_to_the_cpu():
    avx512 = blessed_on("Intel Xeon", [1.0, 1.01], capability="AVX512")
    assert goldens.machine_key(avx512["provenance"]) == ("Intel Xeon", "AVX512")
    assert goldens.blessing(avx512)["cpu_capability"] == "AVX512"
    assert "cpu_capability" not in goldens.blessing(blessed_on("Intel Xeon", [1.0, 1.01]))  # old file: CPU alone
    assert goldens.machine_label(("Intel Xeon", "AVX512")) == "Intel Xeon (torch AVX512)"
    assert goldens.machine_label(("Intel Xeon", None)) == "Intel Xeon"
    assert goldens.same_machine(("Intel Xeon", None), ("Intel Xeon", "AVX2"))  # unknown: the CPU decides
    assert not goldens.same_machine(("Intel Xeon", "AVX512"), ("Intel Xeon", "AVX2"))
    assert not goldens.same_machine(("Intel Xeon", None), ("AMD EPYC", None))
    # the same CPU string with another capability is another machine: carried, and a failure there is "another CPU"
    out = goldens.supersede(avx512, blessed_on("Intel Xeon", [1.0, 1.01], capability="AVX2"))
    assert [(b["machine"], b["cpu_capability"]) for b in out["previous"]] == [("Intel Xeon", "AVX512")]
    with pytest.raises(goldens.BreaksEarlierBlessingsError, match=r"from another CPU") as caught:
        goldens.supersede(avx512, blessed_on("Intel Xeon", [1.2, 1.21], capability="AVX2"))
    assert "blessed on Intel Xeon (torch AVX512)" in str(caught.value)
    # an old blessing without a capability is the same machine as a new one on its CPU: superseded, not carried
    old = blessed_on("Intel Xeon", [1.0, 1.01])
    assert "previous" not in goldens.supersede(old, blessed_on("Intel Xeon", [1.0, 1.01], capability="AVX2"))
    with pytest.raises(goldens.BreaksEarlierBlessingsError, match=r"from this CPU \(Intel Xeon \(torch AVX2\)\)"):
        goldens.supersede(old, blessed_on("Intel Xeon", [1.2, 1.21], capability="AVX2"))


# --- bless and the command line -----------------------------------------------------------------------

def test_bless_refuses_and_leaves_the_goldens_unchanged(toy, tmp_path):
    results = tmp_path / "results"
    target = bless("toy", n_seeds=2, papers_root=toy, results_root=results, progress=False, variants={})
    data = read_json(target)
    assert data["provenance"]["cpu"] and "previous" not in data
    assert data["provenance"]["cpu_capability"]  # torch's, from the notebooks or the harness's own torch
    # pretend another CPU blessed these goldens and got a mean far outside the tolerance
    entry = data["notebooks"]["01_toy"]["toy.mean"]
    data["provenance"]["cpu"] = "Some Other CPU"
    entry["value"] += 10 * entry["atol"] + 1.0
    target.write_text(dumps(data))
    before = target.read_bytes()
    with pytest.raises(goldens.BreaksEarlierBlessingsError, match="toy.mean"):
        bless("toy", n_seeds=2, papers_root=toy, results_root=results, progress=False, variants={})
    assert target.read_bytes() == before
    # the canonical run that replaced the results was checked against no goldens: it is not current
    assert read_json(results / "toy" / "ci" / "provenance.json")["goldens_hash"] is None
    # with a reason: written, the reason and the broken metric recorded, the other CPU's passing values carried
    bless("toy", n_seeds=2, papers_root=toy, results_root=results, progress=False, variants={},
          allow_breaking_previous="test: the other CPU's mean was made up")
    new = read_json(target)
    assert new["provenance"]["allow_breaking_previous"]["reason"] == "test: the other CPU's mean was made up"
    assert [line.split(" (")[0] for line in new["provenance"]["allow_breaking_previous"]["broken"]] == [
        "01_toy: toy.mean"]
    (carried,) = new["previous"]
    assert carried["machine"] == "Some Other CPU" and "toy.mean" not in carried["notebooks"]["01_toy"]
    assert "toy.std" in carried["notebooks"]["01_toy"] and goldens.check_file(new)[0] == []
    assert read_json(results / "toy" / "ci" / "provenance.json")["goldens_hash"] == goldens.file_hash(target)


def _bless_toy(toy, results, **kwargs):
    return bless("toy", n_seeds=2, papers_root=toy, results_root=results, progress=False, variants={}, **kwargs)


@pytest.mark.parametrize("failure", ["sub-run", "hardware", "interrupt"])
def test_bless_never_leaves_an_unchecked_run_current(toy, tmp_path, monkeypatch, failure):
    results = tmp_path / "results"
    target = _bless_toy(toy, results)
    current = results / "toy" / "ci" / "provenance.json"
    assert read_json(current)["goldens_hash"] == goldens.file_hash(target)
    before = target.read_bytes()
    if failure == "sub-run":  # a seed-offset run fails after the canonical run replaced the results
        real = runner.run_paper

        def run_paper(*args, **kwargs):
            report = real(*args, **kwargs)
            if kwargs.get("destination") is not None:
                report.errors.append("made to fail by the test")
            return report
        monkeypatch.setattr(runner, "run_paper", run_paper)
        expected = RuntimeError
    else:
        def build(*args, **kwargs):
            raise (goldens.HardwareDependenceError("NaN on one kernel only") if failure == "hardware"
                   else KeyboardInterrupt())
        monkeypatch.setattr(goldens, "build", build)
        expected = goldens.HardwareDependenceError if failure == "hardware" else KeyboardInterrupt
    with pytest.raises(expected):
        _bless_toy(toy, results)
    assert target.read_bytes() == before
    prov = read_json(current)
    assert prov["goldens_hash"] is None and prov["code_hash"]  # the new canonical run, marked unchecked


def test_bless_prints_stale_and_skipped_values(toy, tmp_path, capsys):
    results = tmp_path / "results"
    target = _bless_toy(toy, results)
    data = read_json(target)
    entry = data["notebooks"]["01_toy"]["toy.mean"]
    data["provenance"].update({"cpu": "Some Other CPU", "code_hash": "0123456789abcdef-older-code"})
    entry["value"] += 10 * entry["atol"] + 1.0
    data["notebooks"]["01_toy"]["toy.removed"] = {"value": 1.0, "atol": 0.0}
    target.write_text(dumps(data))
    capsys.readouterr()
    _bless_toy(toy, results)  # older code: stale, not refused
    out = capsys.readouterr().out
    assert "1 earlier value(s) blessed with other code or inputs fail the new goldens: stale" in out
    assert "01_toy: toy.mean = " in out and "blessed on Some Other CPU" in out and "code 0123456789" in out
    assert "1 earlier value(s) skipped: their notebook or metric no longer exists" in out
    new = read_json(target)
    assert new["provenance"]["previous_check"]["stale"] == {
        "dropped": 1, "code_hashes": {"0123456789abcdef-older-code": 1}}
    assert "toy.mean" not in new["previous"][0]["notebooks"]["01_toy"]


def test_cli_bless_refusal_names_the_override(monkeypatch, capsys):
    seen = {}

    def refuse(slug, seeds, allow_breaking_previous=None):
        seen["reason"] = allow_breaking_previous
        raise goldens.BreaksEarlierBlessingsError("the new goldens reject 1 of the 3 value(s) ...", [])

    monkeypatch.setattr("common.harness.bless.bless", refuse)
    assert cli_main.main(["bless", "svarm", "--allow-breaking-previous", "why"]) == 1
    assert seen["reason"] == "why"
    err = capsys.readouterr().err
    assert "reject 1 of the 3" in err and "expected/ci.json is unchanged" in err
    assert '--allow-breaking-previous "<reason>"' in err
    assert cli_main.main(["bless", "svarm", "--allow-breaking-previous", " "]) == 2  # before anything runs
    assert "needs a reason" in capsys.readouterr().err


def goldens_check(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "common.harness", "goldens-check", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=60)


def test_goldens_check_command(toy):
    golden = toy / "toy" / "expected" / "ci.json"
    golden.parent.mkdir(exist_ok=True)
    data = goldens.supersede(blessed_on("Intel Xeon", [1.0, 1.01]), blessed_on("AMD EPYC", [1.0, 1.01]))
    golden.write_text(dumps(data))
    ok = goldens_check("toy", "--papers-root", str(toy))
    assert ok.returncode == 0 and "toy: ok, 2 value(s) from Intel Xeon" in ok.stdout
    data["notebooks"]["nb"]["m"]["value"] = 1.5  # a hand edit (or a merge) that breaks Intel
    golden.write_text(dumps(data))
    bad = goldens_check("--all", "--papers-root", str(toy))
    assert bad.returncode == 1 and "nb: m = 1, golden 1.5" in bad.stdout and "FAILED: toy" in bad.stdout
    assert goldens_check("--papers-root", str(toy)).returncode == 2
    assert goldens_check("nosuch", "--papers-root", str(toy)).returncode == 2


def test_golden_files_stay_readable_json():
    out = goldens.supersede(blessed_on("Intel Xeon", [1.0, 1.01]), blessed_on("AMD EPYC", [1.0, 1.01]))
    assert json.loads(dumps(out)) == out
