"""The 16×16 study's recording: what the claims read is the paired comparison of the right arrays."""

import numpy as np
import pytest

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
    teacher_fd = {name: {n: [20.0, 21.0, 22.0] for n in STEPS} for name in ("ddim", "dpmpp")}
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
    assert m["tst16.lcm.curve_first"] == [25.0] * 3 and m["tst16.slam.curve_last"] == [r["curve"][400] for r in by["slam"]]
    assert m["tst16.iters.ratio"] == [2.0] * 3  # SLAM's curve never reaches LCM's final value
    assert m["tst16.acc.steps4.gain.mean"] == pytest.approx(-0.05)
    assert "tst16.curve_gain.it200.mean" in m and "tst16.curve_gain.it0.mean" not in m
