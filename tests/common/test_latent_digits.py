"""common.latent_digits: the digits VAE and its latent diffusion model (shapes, ELBO, seeded training, the zoo)."""

import json
import shutil

import pytest
import torch

from common import latent_digits as ld
from common import zoo
from common.diffusion.model import EpsMLP


def _data(n=40, seed=0):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_vae_shapes_and_scaled_latents():
    torch.manual_seed(0)
    vae = ld.MLPVAE()
    x = _data(5)
    mu, logvar = vae.posterior(x)
    assert mu.shape == logvar.shape == (5, ld.LATENT_DIM)
    vae.scale.fill_(2.0)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (5, ld.LATENT_DIM) and torch.allclose(z, mu / 2.0)
        assert vae.decode(z).shape == (5, 64)
        assert torch.allclose(vae.decode(z), vae.decoder(mu), atol=1e-6)
        assert vae.encode(x.double()).dtype == torch.float64  # dtype in, dtype out
    assert set(vae.state_dict()) >= {"scale", "encoder.0.weight", "decoder.4.bias"}


def test_negative_elbo_finite_and_matches_its_terms():
    torch.manual_seed(1)
    vae = ld.MLPVAE()
    x = _data(6, seed=1)
    nelbo = ld.negative_elbo(vae, x, torch.Generator().manual_seed(2))
    assert nelbo.shape == (6,) and torch.isfinite(nelbo).all()
    # the same draw by hand: reconstruction / (2 σ_x²) + KL(N(μ, σ²) || N(0, I)) >= reconstruction term
    mu, logvar = vae.posterior(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(2))
    rec = ((vae.decoder(mu + torch.exp(0.5 * logvar) * eps) - x) ** 2).sum(-1) / (2 * ld.X_SIGMA**2)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
    assert torch.allclose(nelbo, rec + kl) and (kl >= 0).all()


def test_training_is_deterministic_under_a_seed():
    x = _data(64, seed=3)
    a, la = ld.train_vae(x, seed=5, steps=4, batch_size=16)
    torch.rand(7)  # the global RNG state before training must not matter
    b, lb = ld.train_vae(x, seed=5, steps=4, batch_size=16)
    assert la == lb and all(torch.isfinite(torch.tensor(la)))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert float(a.scale) > 0 and not any(p.requires_grad for p in a.parameters())
    c, _ = ld.train_vae(x, seed=6, steps=4, batch_size=16)
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)

    with torch.no_grad():
        z = a.encode(x)
    n1, l1 = ld.train_ldm(z, seed=5, steps=4, batch_size=16, width=16, n_blocks=1)
    n2, l2 = ld.train_ldm(z, seed=5, steps=4, batch_size=16, width=16, n_blocks=1)
    assert isinstance(n1, EpsMLP) and l1 == l2
    assert all(torch.equal(p, q) for p, q in zip(n1.state_dict().values(), n2.state_dict().values(), strict=True))
    assert n1(z[:3], torch.full((3,), 0.5), None).shape == (3, ld.LATENT_DIM)
    assert ld.eps_loss(n1, z, seed=0, n_draws=2) == ld.eps_loss(n1, z, seed=0, n_draws=2)


def test_save_load_round_trip_and_tampered_checkpoint_refused(tmp_path):
    x = _data(32, seed=4)
    vae, _ = ld.train_vae(x, seed=0, steps=2, batch_size=8)
    with torch.no_grad():
        z = vae.encode(x)
    net, _ = ld.train_ldm(z, seed=0, steps=2, batch_size=8, width=16, n_blocks=1)
    ld.save_digits_vae(vae, {"notebook": "train_digits_vae.ipynb"}, directory=tmp_path)
    ld.save_digits_ldm(net, {"notebook": "train_digits_vae.ipynb"}, directory=tmp_path)
    vae2, model2 = ld.load_digits_vae(directory=tmp_path), ld.load_digits_ldm(directory=tmp_path)
    assert vae2.manifest["config"] == vae.config and model2.manifest["config"] == net.config
    with torch.no_grad():
        assert torch.equal(vae2.decode(vae2.encode(x)), vae.decode(vae.encode(x)))
        t = torch.full((4,), 0.3, dtype=torch.float64)
        assert torch.equal(model2.eps(z[:4], t), net(z[:4], t, None))

    path = tmp_path / f"{ld.VAE_NAME}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError):
        ld.load_digits_vae(directory=tmp_path)


def test_loaders_return_the_committed_models(tmp_path):
    """The loaders read the zoo's committed files (sha256-verified), and refuse a tampered copy of them."""
    for name in (ld.VAE_NAME, ld.LDM_NAME):
        manifest = json.loads((zoo.CHECKPOINT_DIR / f"{name}.json").read_text())
        assert manifest["notebook"] == "train_digits_vae.ipynb" and manifest["training"]["seed"] == 0
    vae, model = ld.load_digits_vae(), ld.load_digits_ldm()
    tensors_vae, _ = zoo.load_checkpoint(ld.VAE_NAME)
    tensors_ldm, _ = zoo.load_checkpoint(ld.LDM_NAME)
    assert vae.config == {"dim": 64, "latent_dim": 8, "hidden": 256}
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in tensors_vae.items())
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in tensors_ldm.items())
    assert float(vae.scale) == pytest.approx(vae.manifest["latent_scale"])
    assert model.net.config["dim"] == ld.LATENT_DIM and not any(p.requires_grad for p in model.net.parameters())

    for name in (ld.VAE_NAME, ld.LDM_NAME):
        for suffix in (".safetensors", ".json"):
            shutil.copy(zoo.CHECKPOINT_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    path = tmp_path / f"{ld.LDM_NAME}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError, match="modified or replaced"):
        ld.load_digits_ldm(directory=tmp_path)
