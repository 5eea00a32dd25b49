"""common.mlp_gan: the 8×8 digits MLP GAN with a mapping network (shapes, the R1 loss, seeded training, the zoo)."""

import json
import shutil

import pytest
import torch

from common import mlp_gan, zoo


def _data(n=48, seed=0):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_range_and_the_mapping_network():
    torch.manual_seed(0)
    g = mlp_gan.MappingGenerator(z_dim=8, mapping_layers=3, hidden=16)
    z = torch.randn(5, 8)
    x = g(z)
    assert x.shape == (5, 64) and x.abs().max() <= 1
    assert g.z_dim == g.w_dim == 8 and g.mapping(z).shape == (5, 8)
    assert torch.equal(g.synthesis(g.mapping(z)), x)
    assert len([m for m in g.mapping if isinstance(m, torch.nn.Linear)]) == 3
    assert g.config == {"z_dim": 8, "mapping_layers": 3, "hidden": 16, "out_dim": 64}
    d = mlp_gan.MLPDiscriminator(hidden=16)
    assert d(x).shape == (5,) and d(x.reshape(5, 1, 8, 8)).shape == (5,)
    with pytest.raises(ValueError):
        mlp_gan.MappingGenerator(z_dim=0)
    with pytest.raises(ValueError):
        mlp_gan.MappingGenerator(mapping_layers=0)


def test_checkpoint_names():
    assert [mlp_gan.checkpoint_name(s) for s in mlp_gan.SEEDS] == ["digits_gan_seed0", "digits_gan_seed1", "digits_gan_seed2"]
    for bad in (-1, 1.0, True, "0"):
        with pytest.raises(ValueError):
            mlp_gan.checkpoint_name(bad)


def test_training_is_deterministic_under_a_seed():
    x = _data()
    g1, h1 = mlp_gan.train_digits_gan(3, steps=3, batch_size=8, z_dim=8, hidden=16, data=x)
    torch.rand(7)  # the global RNG state before training must not matter
    g2, h2 = mlp_gan.train_digits_gan(3, steps=3, batch_size=8, z_dim=8, hidden=16, data=x)
    assert set(h1) == {"d_loss", "g_loss", "r1"} and all(len(v) == 3 for v in h1.values())
    assert h1 == h2 and all(r >= 0 for r in h1["r1"])
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values(), strict=True))
    assert not g1.training and not any(p.requires_grad for p in g1.parameters())
    g3, _ = mlp_gan.train_digits_gan(4, steps=3, batch_size=8, z_dim=8, hidden=16, data=x)
    assert not torch.equal(g1.mapping[0].weight, g3.mapping[0].weight)
    for bad in ({"steps": 0}, {"batch_size": 1}, {"r1_gamma": -1.0}):
        with pytest.raises(ValueError):
            mlp_gan.train_digits_gan(0, **{"steps": 1, "data": x, **bad})


def test_first_discriminator_loss_is_the_non_saturating_loss_plus_r1():
    """Before any update, L_D(γ) = softplus terms + γ/2 · R1 with the same initialisation and draws."""
    x = _data(seed=1)
    kw = {"steps": 1, "batch_size": 8, "z_dim": 8, "hidden": 16, "data": x}
    _, h0 = mlp_gan.train_digits_gan(5, r1_gamma=0.0, **kw)
    _, h10 = mlp_gan.train_digits_gan(5, r1_gamma=10.0, **kw)
    assert h0["r1"] == h10["r1"] and h0["g_loss"] != h10["g_loss"]  # same R1 at step 0; D's step differs
    assert h10["d_loss"][0] - h0["d_loss"][0] == pytest.approx(5.0 * h10["r1"][0], rel=1e-5)

    # the same first step by hand: torch.manual_seed draws G then D, the generator the batch then z
    from common.harness.seeding import seeded_training

    rng = seeded_training(5)
    gen, disc = mlp_gan.MappingGenerator(z_dim=8, hidden=16), mlp_gan.MLPDiscriminator(hidden=16)
    xb = x[torch.randint(len(x), (8,), generator=rng)].requires_grad_(True)
    z = torch.randn(8, 8, generator=rng)
    d_real = disc(xb)
    grad, = torch.autograd.grad(d_real.sum(), xb)
    r1 = float(grad.square().sum(dim=1).mean())
    nonsat = torch.nn.functional.softplus(-d_real).mean() + torch.nn.functional.softplus(disc(gen(z))).mean()
    assert h10["r1"][0] == pytest.approx(r1, rel=1e-6)
    assert h10["d_loss"][0] == pytest.approx(float(nonsat.detach()) + 5.0 * r1, rel=1e-6)


def test_save_load_round_trip_and_tampered_checkpoint_refused(tmp_path):
    g, _ = mlp_gan.train_digits_gan(0, steps=2, batch_size=8, z_dim=8, hidden=16, data=_data())
    mlp_gan.save_generator(g, mlp_gan.checkpoint_name(0), {"notebook": "train_digits_gan.ipynb"}, directory=tmp_path)
    g2 = mlp_gan.load_digits_gan(0, directory=tmp_path)
    assert g2.manifest["config"] == g.config and not g2.training
    assert torch.equal(g2(torch.ones(3, 8)), g(torch.ones(3, 8)))

    path = tmp_path / "digits_gan_seed0.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError):
        mlp_gan.load_digits_gan(0, directory=tmp_path)


def test_loaders_return_the_committed_models(tmp_path):
    """The loaders read the zoo's committed files (sha256-verified), and refuse a tampered copy of them."""
    for seed in mlp_gan.SEEDS:
        name = mlp_gan.checkpoint_name(seed)
        manifest = json.loads((zoo.CHECKPOINT_DIR / f"{name}.json").read_text())
        assert manifest["notebook"] == "train_digits_gan.ipynb" and manifest["training"]["seed"] == seed
        g = mlp_gan.load_digits_gan(seed)
        tensors, _ = zoo.load_checkpoint(name)
        assert g.config == {"z_dim": 32, "mapping_layers": 2, "hidden": 128, "out_dim": 64}
        assert set(tensors) == set(g.state_dict())
        assert all(torch.equal(v, g.state_dict()[k]) for k, v in tensors.items())
        assert not g.training and not any(p.requires_grad for p in g.parameters())
        x = g(mlp_gan.latent_bank(4, 32, 0))
        assert x.shape == (4, 64) and torch.isfinite(x).all()

    name = mlp_gan.checkpoint_name(1)
    for suffix in (".safetensors", ".json"):
        shutil.copy(zoo.CHECKPOINT_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    path = tmp_path / f"{name}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError, match="modified or replaced"):
        mlp_gan.load_digits_gan(1, directory=tmp_path)


def test_committed_evaluation_reproduces_from_the_loaded_model():
    """The manifest's evaluation is what image_quality gives on the loaded generator and its latent bank."""
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import DigitsFeatures

    g = mlp_gan.load_digits_gan(0)
    ev = g.manifest["evaluation"]
    clf = DigitsFeatures.load().net
    real = clf.features(load_digits_split().x_train).double().numpy()
    quality = mlp_gan.image_quality(g(mlp_gan.latent_bank(ev["n_latents"], g.z_dim, ev["latent_seed"])), clf, real)
    assert set(quality) == {"precision", "recall", "density", "coverage", "confidence", "fd"}
    # identical on the machine that trained it; the tolerances only absorb another CPU's float32 kernels (a PRDC
    # value is a count over 1000 latents: one neighbour-ball decision may flip), far below a different model's gap
    for key in ("precision", "recall", "density", "coverage"):
        assert quality[key] == pytest.approx(ev[key], abs=2e-3), key
    assert quality["confidence"] == pytest.approx(ev["confidence"], rel=1e-5)
    assert quality["fd"] == pytest.approx(ev["fd"], rel=1e-4)


def test_train_r1_gan_validates_and_calls_back_in_eval_mode():
    """The shared R1 loop (also common.dcgan16's): input checks, the callback schedule and mode, a frozen G."""
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        mlp_gan.train_digits_gan(0, steps=2, batch_size=4, data=_data().reshape(-1, 8, 8))
    torch.manual_seed(0)
    gen, disc = mlp_gan.MappingGenerator(z_dim=8, hidden=16), mlp_gan.MLPDiscriminator(hidden=16)
    rng = torch.Generator().manual_seed(0)
    for bad in ({"steps": 0}, {"batch_size": 1}, {"r1_gamma": -1.0}):
        kwargs = {"steps": 2, "batch_size": 4, "r1_gamma": 1.0, **bad}
        with pytest.raises(ValueError):
            mlp_gan.train_r1_gan(gen, disc, _data(), rng, lr=1e-3, z_dim=8, **kwargs)
    seen = []
    hist = mlp_gan.train_r1_gan(gen, disc, _data(), rng, steps=6, batch_size=4, lr=1e-3, z_dim=8, r1_gamma=1.0,
                                callback=lambda step, g: seen.append((step, g.training, torch.is_grad_enabled())),
                                callback_every=2)
    assert seen == [(2, False, False), (4, False, False), (6, False, False)]
    assert [len(hist[k]) for k in ("d_loss", "g_loss", "r1")] == [6, 6, 6]
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
