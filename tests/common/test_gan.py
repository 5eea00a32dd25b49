import pytest
import torch

from common.gan import DCDiscriminator, DCGenerator, generate, latent_bank, n_parameters, train_gan, up_block


@pytest.mark.parametrize("mode", ["transposed", "nearest", "bilinear"])
def test_up_block_doubles(mode):
    y = up_block(4, 2, mode)(torch.zeros(3, 4, 5, 5))
    assert y.shape == (3, 2, 10, 10)


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_generator_discriminator_shapes(size):
    g = DCGenerator(z_dim=8, image_size=size, width=4, upsample="nearest", n_final_convs=3, mapping_layers=2)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 1, size, size) and x.abs().max() <= 1
    assert DCDiscriminator(image_size=size, width=4)(x).shape == (5,)


def test_replacement_changes_only_last_stages():
    base = DCGenerator(z_dim=8, image_size=32, width=4)
    rep = DCGenerator(z_dim=8, image_size=32, width=4, upsample="nearest", n_final_convs=3)
    last = rep.net[-1]
    assert isinstance(last[0], torch.nn.Upsample) and len(last) == 4
    assert isinstance(base.net[-1][0], torch.nn.ConvTranspose2d)
    two = DCGenerator(z_dim=8, image_size=32, width=4, upsample="bilinear", n_replaced=2)
    assert isinstance(two.net[-2][0][0], torch.nn.Upsample) and isinstance(two.net[-3][0][0], torch.nn.ConvTranspose2d)


def test_latent_bank_fixed():
    assert torch.equal(latent_bank(4, 3, 7), latent_bank(4, 3, 7))
    assert not torch.equal(latent_bank(4, 3, 7), latent_bank(4, 3, 8))


def test_train_gan_seeded_and_extra_loss():
    data = torch.rand(64, 1, 8, 8) * 2 - 1

    def run(extra=None):
        torch.manual_seed(0)
        g, d = DCGenerator(z_dim=4, image_size=8, width=4), DCDiscriminator(image_size=8, width=4)
        h = train_gan(g, d, data, 3, batch_size=8, seed=1, g_extra_loss=extra)
        return h, generate(g, latent_bank(4, 4, 0))

    h1, x1 = run()
    h2, x2 = run()
    assert h1 == h2 and torch.equal(x1, x2)
    h3, _ = run(lambda xf, xr, gl: xf.mean() ** 2)
    assert h3["extra"][0] > 0
    assert len(h1["d_loss"]) == 3


def test_errors():
    with pytest.raises(ValueError):
        DCGenerator(image_size=24)
    with pytest.raises(ValueError):
        DCGenerator(upsample="bicubic")
    with pytest.raises(ValueError):
        up_block(2, 2, "nearest", kernel_size=4)
    assert n_parameters(torch.nn.Linear(2, 3)) == 9
