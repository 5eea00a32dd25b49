"""Tests of common.model_cache: keys change with every input that shapes weights; files round-trip."""

import pytest
import torch

from common.model_cache import REPO_ROOT, cache_key, cache_path, load_weights, save_weights


def test_key_depends_on_parts_files_tensors_and_threads(tmp_path):
    f = tmp_path / "code.py"
    f.write_text("a = 1\n")
    t = torch.arange(4.0)
    base = cache_key({"lr": 1e-3}, files=[f], tensors=[t])
    assert base == cache_key({"lr": 1e-3}, files=[f], tensors=[t.clone()])
    assert base != cache_key({"lr": 2e-3}, files=[f], tensors=[t])
    assert base != cache_key({"lr": 1e-3}, files=[f], tensors=[t + 1])
    f.write_text("a = 2\n")
    assert base != cache_key({"lr": 1e-3}, files=[f], tensors=[t])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        f.write_text("a = 1\n")
        assert base != cache_key({"lr": 1e-3}, files=[f], tensors=[t])
    finally:
        torch.set_num_threads(threads)


def test_path_and_round_trip(tmp_path):
    p = cache_path(tmp_path, "lcm_seed0", "ab" * 32)
    assert p.parent == tmp_path and p.name == "lcm_seed0_" + "ab" * 8 + ".safetensors"
    assert cache_path(".cache/x", "s", "0" * 64).parent == REPO_ROOT / ".cache/x"
    with pytest.raises(ValueError):
        cache_path(tmp_path, "a/b", "0" * 64)
    sd = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    save_weights(p, sd, {"losses": [1.0, 0.5], "curve": {"0": 3.0}})
    loaded, meta = load_weights(p)
    assert torch.equal(loaded["w"], sd["w"]) and meta == {"losses": [1.0, 0.5], "curve": {"0": 3.0}}
    assert not list(tmp_path.glob("*.tmp"))
