"""common.latent_digits16: the 16×16 conv VAE and its latent diffusion model (shapes, ELBO, seeded training, the zoo)."""

import json
import math
import shutil

import pytest
import torch

from common import latent_digits as ld
from common import latent_digits16 as l16
from common import zoo
from common.diffusion import ddim, ddim_timesteps
from common.diffusion.model import EpsMLP

TINY = dict(latent_channels=2, hidden=(4, 8))


def _data(n=16, seed=0):
    return torch.rand(n, 256, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_scaled_latents_and_round_trip():
    torch.manual_seed(0)
    vae = l16.ConvVAE16(**TINY)
    x = _data(5)
    mu, logvar = vae.posterior(x)
    assert mu.shape == logvar.shape == (5, 32) and vae.latent_dim == 32 == l16.LATENT_DIM
    # channel-major flattening: the first c channels of the encoder's output are mu
    h = vae.encoder[:-1](x)  # [5, 2c, 4, 4] before Flatten
    assert h.shape == (5, 4, 4, 4) and torch.equal(mu, h[:, :2].reshape(5, -1))
    vae.scale.fill_(2.0)
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.allclose(z, mu / 2.0)
        rec = vae.decode(z)
        assert rec.shape == (5, 256) and torch.allclose(rec, vae.decoder(mu), atol=1e-6)
        assert vae.encode(x.double()).dtype == torch.float64  # dtype in, dtype out
    with pytest.raises(ValueError, match="256"):
        vae.encode(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(2, 8))
    with pytest.raises(ValueError):
        l16.ConvVAE16(latent_channels=0)
    # the decoder is differentiable in z (the posterior samplers back-propagate through it)
    z = torch.zeros(2, 32, requires_grad=True)
    vae.decode(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_negative_elbo_on_a_hand_example():
    """The reused loss: with a decoder that outputs 0 and a chosen posterior, ‖x‖²/(2σ_x²) + ½Σ(μ² + σ² − 1 − log σ²)."""

    class Fixed(torch.nn.Module):
        def posterior(self, x):
            mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
            logvar = torch.log(torch.tensor([[1.0, 4.0], [1.0, 1.0]]))
            return mu, logvar

        def decoder(self, z):
            return torch.zeros(z.shape[0], 3)

    x = torch.tensor([[0.2, 0.0, 0.0], [0.1, 0.1, 0.0]])
    got = ld.negative_elbo(Fixed(), x, torch.Generator().manual_seed(0), x_sigma=0.2)
    rec = torch.tensor([0.04, 0.02]) / (2 * 0.04)  # ‖x − 0‖² / (2 σ_x²), whatever z was drawn
    kl = 0.5 * torch.tensor([(1 + 1 - 1 - 0) + (0 + 4 - 1 - math.log(4.0)), (0 + 1 - 1 - 0) + (4 + 1 - 1 - 0)])
    assert torch.allclose(got, rec + kl)


def test_training_is_deterministic_and_feeds_the_ldm():
    x = _data(32, seed=3)
    a, la = l16.train_vae16(x, seed=5, steps=3, batch_size=8, **TINY)
    torch.rand(7)  # the global RNG state before training must not matter
    b, lb = l16.train_vae16(x, seed=5, steps=3, batch_size=8, **TINY)
    assert la == lb and all(torch.isfinite(torch.tensor(la)))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert float(a.scale) > 0 and not any(p.requires_grad for p in a.parameters())
    with torch.no_grad():
        z = a.encode(x)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-5)  # unit-variance latents
    net, losses = l16.train_ldm(z, seed=5, steps=3, batch_size=8, width=16, n_blocks=1)
    assert isinstance(net, EpsMLP) and net.config["dim"] == 32 and len(losses) == 3
    assert l16.reconstruction_psnr(a, x).shape == (32,)
    with pytest.raises(ValueError):
        l16.train_vae16(torch.zeros(4, 64), steps=1)


def test_save_load_round_trip_tampering_and_a_decoded_ldm_sample(tmp_path):
    x = _data(16, seed=4)
    vae, _ = l16.train_vae16(x, seed=0, steps=2, batch_size=8, **TINY)
    with torch.no_grad():
        z = vae.encode(x)
    net, _ = l16.train_ldm(z, seed=0, steps=2, batch_size=8, width=16, n_blocks=1)
    l16.save_digits16_vae(vae, {"notebook": "train_digits16_vae.ipynb"}, directory=tmp_path)
    l16.save_digits16_ldm(net, {"notebook": "train_digits16_vae.ipynb"}, directory=tmp_path)
    vae2, model2 = l16.load_digits16_vae(directory=tmp_path), l16.load_digits16_ldm(directory=tmp_path)
    assert vae2.manifest["config"] == vae.config and model2.manifest["config"] == net.config
    with torch.no_grad():
        assert torch.equal(vae2.decode(vae2.encode(x)), vae.decode(vae.encode(x)))
        out = vae2.decode(ddim(model2, torch.randn(3, 32, generator=torch.Generator().manual_seed(1)),
                               ddim_timesteps(4, "leading")))
    assert out.shape == (3, 256) and torch.isfinite(out).all()

    for name in (l16.VAE_NAME, l16.LDM_NAME):
        path = tmp_path / f"{name}.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError):
        l16.load_digits16_vae(directory=tmp_path)
    with pytest.raises(zoo.ChecksumError):
        l16.load_digits16_ldm(directory=tmp_path)


committed = pytest.mark.skipif(
    not (zoo.CHECKPOINT_DIR / f"{l16.VAE_NAME}.json").exists(), reason="digits16 checkpoints not committed"
)


@committed
def test_committed_models_load_verified_and_sample(tmp_path):
    """The loaders read the zoo's committed files (sha256-verified), decode LDM samples, and refuse a tampered copy."""
    for name in (l16.VAE_NAME, l16.LDM_NAME):
        manifest = json.loads((zoo.CHECKPOINT_DIR / f"{name}.json").read_text())
        assert manifest["notebook"] == "train_digits16_vae.ipynb" and manifest["training"]["seed"] == 0
        assert manifest["quality_gate"]["passed"] is True
    vae, model = l16.load_digits16_vae(), l16.load_digits16_ldm()
    tensors, _ = zoo.load_checkpoint(l16.VAE_NAME)
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in tensors.items())
    assert float(vae.scale) == pytest.approx(vae.manifest["latent_scale"])
    assert model.net.config["dim"] == vae.latent_dim and not any(p.requires_grad for p in model.net.parameters())
    with torch.no_grad():
        z = ddim(model, torch.randn(8, vae.latent_dim, generator=torch.Generator().manual_seed(0)),
                 ddim_timesteps(10, "leading"))
        x = vae.decode(z)
    assert x.shape == (8, 256) and torch.isfinite(x).all()

    for name in (l16.VAE_NAME, l16.LDM_NAME):
        for suffix in (".safetensors", ".json"):
            shutil.copy(zoo.CHECKPOINT_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    path = tmp_path / f"{l16.VAE_NAME}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError, match="modified or replaced"):
        l16.load_digits16_vae(directory=tmp_path)


@committed
def test_committed_vae_reproduces_its_recorded_reconstruction_quality():
    """A quality regression check (review): the committed VAE's held-out reconstruction PSNR is the manifest's
    (31.36 dB) to 0.05 dB, far above the gate's 20.79; a silently degraded or swapped model fails here."""
    from common.digits16 import load_digits16_split

    vae = l16.load_digits16_vae()
    psnr = float(l16.reconstruction_psnr(vae, load_digits16_split().x_heldout).mean())
    assert psnr == pytest.approx(vae.manifest["evaluation"]["heldout_reconstruction_psnr_db"], abs=0.05)
    assert psnr > 30.0
