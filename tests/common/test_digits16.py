"""The 16×16 digits package: data, the UNet's model protocol, seeded training, the checkpoint (sha256), DDIM."""

import shutil

import pytest
import torch

from common.diffusion import NULL_LABEL, ddim, ddim_timesteps, load_digits_split
from common.digits16 import (
    CHECKPOINT,
    DIM16,
    EpsUNet16,
    Train16Config,
    load_digits16_eps,
    load_digits16_split,
    off_subspace_fraction,
    to_digits8,
    to_images16,
    train_digits16_eps,
    training_manifest,
    unet_config,
)
from common.zoo import ChecksumError, save_checkpoint

TINY = {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4}


def test_data_is_the_8x8_split_upsampled_in_range():
    split8, split16 = load_digits_split(), load_digits16_split()
    assert split16.x_train.shape == (1500, DIM16) and split16.x_heldout.shape == (297, DIM16)
    assert split16.x_train.dtype == torch.float32
    assert torch.equal(split16.y_train, split8.y_train) and torch.equal(split16.y_heldout, split8.y_heldout)
    assert split16.x_train.min() == -1.0 and split16.x_train.max() <= 1.0  # convex combinations: range kept
    assert torch.allclose(to_digits8(split16.x_heldout), split8.x_heldout, atol=1e-5)  # exact left inverse
    assert off_subspace_fraction(split16.x_train) < 1e-10 < off_subspace_fraction(torch.randn(8, DIM16))
    images = to_images16(split16.x_train[:3])
    assert images.shape == (3, 16, 16) and images.min() >= 0 and images.max() <= 1


def test_eps_shapes_dtypes_and_null_label():
    torch.manual_seed(0)
    net = EpsUNet16(unet_config(**TINY)).eval()
    x = torch.randn(5, DIM16)
    with torch.no_grad():
        out = net.eps(x, 0.3, torch.arange(5))
        assert out.shape == (5, DIM16) and out.dtype == torch.float32
        assert torch.equal(net.eps(x, 0.3), net.eps(x, 0.3, torch.full((5,), NULL_LABEL)))  # None = null label
        assert not torch.allclose(net.eps(x, 0.3, torch.zeros(5, dtype=torch.long)), net.eps(x, 0.3))
        assert torch.allclose(net.eps(x, torch.full((5,), 0.3, dtype=torch.float64)), net.eps(x, 0.3))
        assert net.eps(x.double(), 0.3).dtype == torch.float64  # the protocol: answer in x's dtype
    with pytest.raises(ValueError):
        net.eps(torch.randn(2, 64), 0.3)
    with pytest.raises(ValueError):
        unet_config(width=3)
    with pytest.raises(ValueError):
        EpsUNet16({**unet_config(**TINY), "num_class_embeds": 10})


def test_training_is_seeded_and_deterministic():
    cfg = Train16Config(block_out_channels=(8, 16), steps=3, batch_size=8, warmup_steps=1, seed=5)
    a = train_digits16_eps(cfg, progress=False)
    torch.rand(7)  # the global RNG state before training must not matter
    b = train_digits16_eps(cfg, progress=False)
    assert a.losses == b.losses and len(a.losses) == 3 and a.cpu_seconds > 0
    assert all(torch.equal(p, q) for p, q in zip(a.ema.state_dict().values(), b.ema.state_dict().values(), strict=True))
    c = train_digits16_eps(Train16Config(block_out_channels=(8, 16), steps=3, batch_size=8, warmup_steps=1, seed=6), progress=False)
    assert c.losses != a.losses


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 3-step tiny model saved as the zoo notebook saves it (no 16×16 checkpoint is committed yet)."""
    directory = tmp_path_factory.mktemp("zoo")
    result = train_digits16_eps(Train16Config(block_out_channels=(8, 16), steps=3, batch_size=8, warmup_steps=1,
                                              seed=0), progress=False)
    state = {k: v.detach().float().contiguous() for k, v in result.ema.state_dict().items()}
    save_checkpoint(CHECKPOINT, state, training_manifest(result), directory=directory)
    return directory


def test_loader_refuses_a_tampered_checkpoint(tiny_checkpoint, tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_checkpoint / f"{CHECKPOINT}{suffix}", tmp_path)
    load_digits16_eps(directory=tmp_path)  # the intact copy loads
    path = tmp_path / f"{CHECKPOINT}.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # flip one bit of a weight
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        load_digits16_eps(directory=tmp_path)


def test_a_saved_model_loads_frozen_and_runs_ddim(tiny_checkpoint):
    model = load_digits16_eps(directory=tiny_checkpoint)
    assert model.manifest["n_parameters"] == model.net.n_parameters()
    assert not any(p.requires_grad for p in model.net.parameters()) and not model.net.training
    x_T = torch.randn(4, DIM16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ddim(model, x_T, ddim_timesteps(3, "leading"), torch.arange(4))
    assert out.shape == (4, DIM16) and torch.isfinite(out).all() and model.nfe == 3
    model64 = load_digits16_eps(dtype=torch.float64, directory=tiny_checkpoint)
    with torch.no_grad():
        assert model64.eps(x_T.double(), 0.5, torch.arange(4)).dtype == torch.float64


def test_the_zoo_notebook_is_stripped_and_parameterised():
    import json

    from common.zoo import NOTEBOOK_DIR

    nb = json.loads((NOTEBOOK_DIR / "train_digits16_eps.ipynb").read_text())
    assert "papermill" not in nb["metadata"] and all(c.get("id") for c in nb["cells"])
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in code)
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1
