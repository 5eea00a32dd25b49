"""The 16×16 study's recording: what the claims read is the paired comparison of the right arrays."""

import numpy as np
import pytest

import papers.slam.study16 as study16
from common import stats
from common.harness.recording import recorded
from papers.slam.study16 import STEPS, record_comparison, record_students, record_teacher


def _run(seed: int, offset: float) -> dict:
    rng = np.random.default_rng(seed)
    return {"cached": True, "initial_loss": 1.0 + offset, "final_loss": 0.5 + offset, "spread": 0.1,
            "curve": {0: 25.0, 200: 10.0 + offset + rng.random(), 400: 8.0 + 2 * offset + rng.random()},
            "off_subspace": 0.001, "consistency": {"lcm": 0.1, "slam": 0.2},
            "fd": {n: 10.0 / n + offset + rng.random() for n in STEPS}, "kid": {n: 0.01 for n in STEPS},
            "acc": {n: 0.9 - offset / 100 for n in STEPS}}


def test_record_comparison_reads_the_paired_arrays():
    by = {"lcm": [_run(s, 0.0) for s in range(3)], "slam": [_run(10 + s, 5.0) for s in range(3)]}
    teacher_fd = {"ddim": {n: [20.0, 21.0, 22.0] for n in STEPS}, "dpmpp": {n: [30.0, 31.0, 35.0] for n in STEPS}}
    summary = record_students("tst16", by)
    record_teacher("tst16", teacher_fd, 1.5)
    record_comparison("tst16", by, teacher_fd, train_steps=400)
    m = recorded()
    assert m["tst16.setup.cached_students"] == 6
    assert summary["slam"]["loss first/last 10 it."] == (6.0, 5.5)
    for n in STEPS:
        want = stats.paired_difference([r["fd"][n] for r in by["lcm"]], [r["fd"][n] for r in by["slam"]])
        assert m[f"tst16.fd.steps{n}.gain.mean"] == pytest.approx(want.estimate)
        assert m[f"tst16.fd.steps{n}.gain.lo"] == pytest.approx(want.lo)
        assert m[f"tst16.fd.steps{n}.gain.hi"] < 0  # SLAM is 5 worse on every seed
    assert m["tst16.fd.steps4.gain_vs_ddim.mean"] == pytest.approx(21.0 - np.mean([r["fd"][4] for r in by["slam"]]))
    assert m["tst16.fd.steps4.gain_vs_dpmpp.mean"] == pytest.approx(32.0 - np.mean([r["fd"][4] for r in by["slam"]]))
    assert m["tst16.fd.steps2.teacher_dpmpp"] == [30.0, 31.0, 35.0] and m["tst16.fd.teacher_ddim_reference"] == 1.5
    assert m["tst16.lcm.curve_first"] == [25.0] * 3 and m["tst16.slam.curve_last"] == [r["curve"][400] for r in by["slam"]]
    assert m["tst16.iters.ratio"] == [2.0] * 3  # SLAM's curve never reaches LCM's final value
    assert m["tst16.acc.steps4.gain.mean"] == pytest.approx(-0.05)
    assert "tst16.curve_gain.it200.mean" in m and "tst16.curve_gain.it0.mean" not in m


def test_record_comparison_iteration_ratio_with_a_crossing():
    lcm = [_run(s, 0.0) for s in range(2)]
    slam = [_run(10 + s, 0.0) for s in range(2)]
    for r_lcm, r_slam in zip(lcm, slam, strict=True):
        r_lcm["curve"] = {0: 25.0, 200: 12.0, 400: 9.0}
        r_slam["curve"] = {0: 25.0, 200: 8.0, 400: 7.0}  # reaches LCM's final 9.0 at iteration 200
    record_comparison("tst16x", {"lcm": lcm, "slam": slam}, {k: {n: [1.0, 1.0] for n in STEPS} for k in ("ddim", "dpmpp")},
                      train_steps=400)
    m = recorded()
    assert m["tst16x.iters.ratio"] == [0.5, 0.5]
    assert m["tst16x.curve.fd4.lcm"] == [25.0, 12.0, 9.0] and m["tst16x.curve_gain.it200.mean"] == pytest.approx(4.0)


def test_teacher_fds_noise_streams_and_reference_on_the_first_seed(monkeypatch):
    calls = []

    def fake(teacher, steps, n_samples, random_state, reference_steps=None, dim=64):
        calls.append((random_state, reference_steps, dim))
        out = {name: {n: float(random_state + n + (name == "dpmpp")) for n in steps} for name in ("ddim", "dpmpp")}
        return out | ({"reference": 0.5} if reference_steps else {})

    monkeypatch.setattr(study16, "teacher_solver_fd", fake)
    fds, ref = study16.teacher_fds(None, [5, 6, 7], 10, 25, 256)
    assert calls == [(1005, 25, 256), (1006, None, 256), (1007, None, 256)]
    assert ref == 0.5 and fds["ddim"][4] == [1009.0, 1010.0, 1011.0] and fds["dpmpp"][1] == [1007.0, 1008.0, 1009.0]


def test_distil_students_groups_by_method_in_seed_order(monkeypatch):
    monkeypatch.setattr(study16, "run_task", lambda task: {"arm": task["arm"], "seed": task["cfg"].seed,
                                                             "lr": task["cfg"].lr})
    by = study16.distil_students("digits16_eps", [7, 5], train_steps=3, batch_size=2, lr=2e-6, n_samples=4,
                                 n_curve_samples=2, eval_every=1, n_probe=2, progress=False)
    assert [r["seed"] for r in by["lcm"]] == [7, 5] and [r["seed"] for r in by["slam"]] == [7, 5]
    assert all(r["arm"] == m and r["lr"] == 2e-6 for m in by for r in by[m])
    with pytest.raises(ValueError):
        study16.distil_students("digits16_eps", [], train_steps=3, batch_size=2, lr=2e-6, n_samples=4,
                                n_curve_samples=2, eval_every=1, n_probe=2)
