"""A re-bless must not break the machines that blessed before: earlier values are checked and carried."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.harness import __main__ as cli_main
from common.harness import goldens
from common.harness.bless import bless
from common.harness.io import dumps, read_json

REPO = Path(__file__).resolve().parents[1]


def blessed_on(cpu, values, *, sse=None, volatile=None, commit=None):
    """Goldens as bless builds them: ``values`` = the canonical seed's then another seed's value of ``nb: m``
    (the seed spread sets atol = 3 x stdev), plus an integer ``nb: n`` and, optionally, an sse kernel variant."""
    runs = [{"nb": {"m": v, "n": 10}} for v in values]
    variants = {"sse": {"nb": {"m": values[0] if sse is None else sse, "n": 10}}}
    provenance = {"cpu": cpu, "device": f"CPU (2 cores): {cpu}", "commit": commit or f"{cpu}-commit",
                  "created": "2026-12-04T00:00:00+00:00"}
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
    assert "(this CPU" not in message  # another CPU: no "the code moved it"


def test_passes_when_every_earlier_value_passes_and_carries_them():
    old = blessed_on("Intel Xeon", [1.0, 1.01], sse=1.002)
    new = blessed_on("AMD EPYC", [1.001, 1.011])
    out = goldens.supersede(old, new)
    assert out["notebooks"] == new["notebooks"]  # the entries themselves are untouched
    assert out["provenance"]["previous_check"] == {"machines": ["Intel Xeon"], "values": 3, "failed": 0}
    assert "allow_breaking_previous" not in out["provenance"]
    # compact: the canonical value alone when every kernel gave it, else only the differing variants
    assert out["previous"] == [{"machine": "Intel Xeon", "commit": "Intel Xeon-commit",
                                "created": "2026-12-04T00:00:00+00:00",
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
    with pytest.raises(goldens.BreaksEarlierBlessingsError, match=r"this CPU: the code moved it"):
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
    assert out["previous"][0]["notebooks"] == {"nb": {"n": 10}}
    stored = {**out, "previous": [{"machine": "X", "notebooks": {"nb": {"m": 1.0}, "gone": {"x": 1.0}}}]}
    assert goldens.check_file(stored) == ([], 0)


def test_arrays_booleans_and_log_scale_values_are_checked_like_runs():
    def make(cpu, err, arr, flag):
        return goldens.build([{"nb": {"err": err, "arr": arr, "ok": flag}},
                              {"nb": {"err": err, "arr": [a + 0.01 for a in arr], "ok": flag}}],
                             {}, {"cpu": cpu}, variants={"sse": {"nb": {"err": err * 1.1, "arr": arr, "ok": flag}}},
                             log_factors={"nb": {"err": 3.0}})
    old = make("Intel Xeon", 2e-6, [1.0, 2.0], True)
    out = goldens.supersede(old, make("AMD EPYC", 3e-6, [1.0, 2.005], True))
    assert out["previous"][0]["notebooks"]["nb"]["arr"] == [1.0, 2.0]
    with pytest.raises(goldens.BreaksEarlierBlessingsError) as caught:
        goldens.supersede(old, make("AMD EPYC", 2e-5, [1.0, 2.5], False))
    assert {f.metric for f in caught.value.failures} == {"err", "arr", "ok"}


# --- bless and the command line -----------------------------------------------------------------------

def test_bless_refuses_and_leaves_the_goldens_unchanged(toy, tmp_path):
    results = tmp_path / "results"
    target = bless("toy", n_seeds=2, papers_root=toy, results_root=results, progress=False, variants={})
    data = read_json(target)
    assert data["provenance"]["cpu"] and "previous" not in data
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
