"""common.dcgan16: the 16×16 digits DCGAN with a mapping network (shapes, the R1 loss, seeded training, the zoo)."""

import json

import pytest
import torch

from common import dcgan16, zoo
from common.gan import DCGenerator


def _data(n=48, seed=0):
    return torch.rand(n, 256, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_range_and_the_mapping_network():
    torch.manual_seed(0)
    g = dcgan16.MappingDCGenerator(z_dim=8, mapping_layers=3, width=4).eval()
    z = torch.randn(5, 8)
    x = g(z)
    assert isinstance(g, DCGenerator) and x.shape == (5, 256) and x.abs().max() <= 1
    assert g.z_dim == g.w_dim == 8 and g.mapping(z).shape == (5, 8)
    assert torch.equal(g.synthesis(g.mapping(z)), x)
    # the synthesis is the DCGenerator body: tanh(net(w)) flattened, i.e. DCGenerator.forward on the same weights
    assert torch.equal(DCGenerator.forward(g, z).flatten(1), x)
    assert len([m for m in g.mapping if isinstance(m, torch.nn.Linear)]) == 3
    assert g.config == {"z_dim": 8, "mapping_layers": 3, "width": 4}
    # eval mode: an image depends only on its own latent (BatchNorm running statistics)
    assert torch.allclose(g(z[:1]), x[:1], atol=1e-6)
    with pytest.raises(ValueError):
        dcgan16.MappingDCGenerator(z_dim=0)
    with pytest.raises(ValueError):
        dcgan16.MappingDCGenerator(mapping_layers=0)
    with pytest.raises(ValueError):
        g.synthesis(torch.zeros(2, 7))


def test_checkpoint_names():
    assert [dcgan16.checkpoint_name(s) for s in dcgan16.SEEDS] == [
        "digits16_gan_seed0", "digits16_gan_seed1", "digits16_gan_seed2"]
    for bad in (-1, 1.0, True, "0"):
        with pytest.raises(ValueError):
            dcgan16.checkpoint_name(bad)


def test_training_is_deterministic_under_a_seed():
    x = _data()
    kw = {"steps": 3, "batch_size": 8, "z_dim": 8, "width": 4, "d_width": 4, "data": x}
    g1, h1 = dcgan16.train_digits16_gan(3, **kw)
    torch.rand(7)  # the global RNG state before training must not matter
    calls = []
    g2, h2 = dcgan16.train_digits16_gan(3, callback=lambda step, g: calls.append((step, g.training)), callback_every=2, **kw)
    assert calls == [(2, False)]  # called in eval mode; it does not change the run
    assert set(h1) == {"d_loss", "g_loss", "r1"} and all(len(v) == 3 for v in h1.values())
    assert h1 == h2 and all(r >= 0 for r in h1["r1"])
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values(), strict=True))
    assert not g1.training and not any(p.requires_grad for p in g1.parameters())
    g3, _ = dcgan16.train_digits16_gan(4, **kw)
    assert not torch.equal(g1.mapping[0].weight, g3.mapping[0].weight)
    for bad in ({"steps": 0}, {"batch_size": 1}, {"r1_gamma": -1.0}, {"data": torch.zeros(10, 64)}):
        with pytest.raises(ValueError):
            dcgan16.train_digits16_gan(0, **{**kw, "steps": 1, **bad})


def test_first_discriminator_loss_is_the_non_saturating_loss_plus_r1():
    """Before any update, L_D(γ) - L_D(0) = γ/2 · R1 with the same initialisation and draws."""
    x = _data(seed=1)
    kw = {"steps": 1, "batch_size": 8, "z_dim": 8, "width": 4, "d_width": 4, "data": x}
    _, h0 = dcgan16.train_digits16_gan(5, r1_gamma=0.0, **kw)
    _, h10 = dcgan16.train_digits16_gan(5, r1_gamma=10.0, **kw)
    assert h0["r1"] == h10["r1"] and h0["g_loss"] != h10["g_loss"]
    assert h10["d_loss"][0] - h0["d_loss"][0] == pytest.approx(5.0 * h10["r1"][0], rel=1e-5)


def test_save_load_round_trip_and_tampered_checkpoint_refused(tmp_path):
    g, _ = dcgan16.train_digits16_gan(0, steps=2, batch_size=8, z_dim=8, width=4, d_width=4, data=_data())
    dcgan16.save_generator(g, dcgan16.checkpoint_name(0), {"notebook": "train_digits16_gan.ipynb"}, directory=tmp_path)
    g2 = dcgan16.load_digits16_gan(0, directory=tmp_path)
    assert g2.manifest["config"] == g.config and not g2.training
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), g2.state_dict().values(), strict=True))
    assert torch.equal(g2(torch.ones(3, 8)), g(torch.ones(3, 8)))  # BatchNorm running statistics travel too

    path = tmp_path / "digits16_gan_seed0.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError):
        dcgan16.load_digits16_gan(0, directory=tmp_path)


def test_image_quality16_scores_the_8x8_preimages():
    """On upsampled real digits, the 16×16 scorer gives what the 8×8 scorer gives on the digits themselves."""
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import DigitsFeatures
    from common.digits16 import upsample8to16
    from common.mlp_gan import image_quality

    clf = DigitsFeatures.load().net
    split = load_digits_split()
    real = clf.features(split.x_train).double().numpy()
    x8 = split.x_heldout[:200]
    q16 = dcgan16.image_quality16(upsample8to16(x8), clf, real)
    q8 = image_quality(x8, clf, real)
    assert set(q16) == set(q8)
    for key in q8:
        assert q16[key] == pytest.approx(q8[key], rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize("seed", dcgan16.SEEDS)
def test_the_committed_zoo_generators_load(seed):
    name = dcgan16.checkpoint_name(seed)
    if not (zoo.CHECKPOINT_DIR / f"{name}.json").exists():
        pytest.skip(f"{name} is not committed")
    manifest = json.loads((zoo.CHECKPOINT_DIR / f"{name}.json").read_text())
    assert manifest["notebook"] == "train_digits16_gan.ipynb" and manifest["training"]["seed"] == seed
    assert manifest["size_bytes"] < 10_000_000
    g = dcgan16.load_digits16_gan(seed)
    assert g.config == manifest["config"] and not g.training and not any(p.requires_grad for p in g.parameters())
    x = g(dcgan16.latent_bank(4, g.z_dim, 0))
    assert x.shape == (4, 256) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_committed_evaluation_reproduces_from_the_loaded_model():
    """The manifest's evaluation is what image_quality16 gives on the loaded generator and its latent bank."""
    name = dcgan16.checkpoint_name(0)
    if not (zoo.CHECKPOINT_DIR / f"{name}.json").exists():
        pytest.skip(f"{name} is not committed")
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import DigitsFeatures

    g = dcgan16.load_digits16_gan(0)
    ev = g.manifest["evaluation"]
    clf = DigitsFeatures.load().net
    real = clf.features(load_digits_split().x_train).double().numpy()
    quality = dcgan16.image_quality16(g(dcgan16.latent_bank(ev["n_latents"], g.z_dim, ev["latent_seed"])), clf, real)
    # tolerances absorb another CPU's float32 kernels only (see tests/common/test_mlp_gan.py)
    for key in ("precision", "recall", "density", "coverage"):
        assert quality[key] == pytest.approx(ev[key], abs=2e-3), key
    assert quality["confidence"] == pytest.approx(ev["confidence"], rel=1e-5)
    assert quality["fd"] == pytest.approx(ev["fd"], rel=1e-4)
