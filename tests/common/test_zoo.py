"""The zoo's checkpoint registry: round trip, manifest fields, and refusal of a tampered file."""

import json

import pytest
import torch

from common import zoo


def test_round_trip_and_manifest(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    zoo.save_checkpoint("toy", tensors, {"config": {"width": 3}}, directory=tmp_path)
    loaded, manifest = zoo.load_checkpoint("toy", directory=tmp_path)
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    assert manifest["config"] == {"width": 3}
    assert manifest["sha256"] == zoo.sha256_file(tmp_path / "toy.safetensors")
    assert zoo.available(tmp_path) == ["toy"]


def test_tampered_file_is_refused(tmp_path):
    zoo.save_checkpoint("toy", {"w": torch.ones(4)}, {}, directory=tmp_path)
    path = tmp_path / "toy.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError, match="modified or replaced"):
        zoo.load_checkpoint("toy", directory=tmp_path)


def test_unknown_name_and_bad_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint 'nope'"):
        zoo.load_checkpoint("nope", directory=tmp_path)
    with pytest.raises(ValueError):
        zoo.load_checkpoint("../etc", directory=tmp_path)


def test_committed_checkpoints_match_their_manifests():
    for name in zoo.available():
        manifest = json.loads((zoo.CHECKPOINT_DIR / f"{name}.json").read_text())
        assert zoo.sha256_file(zoo.CHECKPOINT_DIR / f"{name}.safetensors") == manifest["sha256"], name


def test_zoo_notebooks_are_stripped_and_parameterised():
    for path in sorted(zoo.NOTEBOOK_DIR.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert "papermill" not in nb.get("metadata", {}), path.name
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), f"{path.name}: strip it"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs one cell tagged 'parameters'"


def test_every_checkpoint_names_its_notebook():
    for name in zoo.available():
        manifest = zoo.load_manifest(name)
        assert (zoo.NOTEBOOK_DIR / manifest["notebook"]).is_file(), f"{name}: manifest must name its training notebook"


def test_seeded_training_helper_and_reproducible_training():
    from common.diffusion.train import TrainConfig, train_digits_eps
    from common.harness.seeding import seeded_training

    threads = torch.get_num_threads()
    g = seeded_training(3, threads=threads)
    first_init, first_draw = torch.rand(2), torch.rand(2, generator=g)
    g = seeded_training(3)
    assert torch.equal(torch.rand(2), first_init) and torch.equal(torch.rand(2, generator=g), first_draw)
    assert torch.get_num_threads() == threads
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            seeded_training(bad)
    with pytest.raises(ValueError):
        seeded_training(0, threads=0)

    cfg = TrainConfig(width=16, n_blocks=1, cond_dim=8, steps=3, batch_size=8, warmup_steps=1)
    a = train_digits_eps(cfg, progress=False)
    torch.rand(5)  # the global RNG state before training must not matter
    b = train_digits_eps(cfg, progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(x, y) for x, y in zip(a.ema.state_dict().values(), b.ema.state_dict().values(), strict=True))
