"""common/device.py: CUDA when present, CPU otherwise, overridable, never a silent fallback."""

import pytest
import torch

from common import device as dev
from common.harness import recording


def test_pick_device_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert dev.pick_device().type == expected
    assert dev.pick_device("cpu").type == "cpu"
    monkeypatch.setenv(dev.DEVICE_ENV, "cpu")
    assert dev.pick_device().type == "cpu"
    assert "cpu" in recording._devices


def test_pick_device_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown device"):
        dev.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            dev.pick_device("cuda")
