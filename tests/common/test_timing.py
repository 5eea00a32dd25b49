import time

import pytest

from common import timing


def test_compare_rotates_order_and_reports_ratio():
    calls = []
    result = timing.compare({"slow": lambda: (calls.append("slow"), time.sleep(0.004)),
                             "fast": lambda: calls.append("fast")}, repeats=4, warmup=1)
    assert calls[:2] == ["slow", "fast"]  # warm-up
    assert calls[2:] == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]
    assert result.ratio("slow", "fast") > 5
    assert len(result.timings["slow"].seconds) == 4
    assert "median" in result.table()


def test_fixed_threads_restores_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with timing.fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        timing.compare({})
    with pytest.raises(ValueError):
        timing.compare({"a": lambda: None}, repeats=0)
