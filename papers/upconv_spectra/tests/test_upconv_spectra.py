import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.dead_leaves import dead_leaves
from common.gan import DCDiscriminator
from common.spectra import spectral_profile
from papers.upconv_spectra.upconv_spectra import (
    GAN_VARIANTS,
    UpsamplingAutoencoder,
    detection_accuracy,
    differentiable_spectral_term,
    gan_experiment,
    make_variant,
    official_gradient_identity,
    official_spectral_term,
    print_training_record,
    run_checkpoint,
    train_autoencoder,
)


@pytest.mark.parametrize("mode", ["transposed", "nearest", "bilinear"])
def test_autoencoders_share_encoder_and_shape(mode):
    ae = UpsamplingAutoencoder(mode, width=4)
    assert ae(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    ref = UpsamplingAutoencoder("transposed", width=4)
    assert [p.shape for p in ae.encoder.parameters()] == [p.shape for p in ref.encoder.parameters()]


def test_train_autoencoder_decreases_loss():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    losses = train_autoencoder(UpsamplingAutoencoder("nearest", 4), x, 60, batch_size=16, seed=0)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_detection_accuracy_separable_and_chance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(100, 5))
    assert detection_accuracy(a, a + 10) == 1.0
    assert 0.3 < detection_accuracy(a, rng.normal(size=(100, 5))) < 0.7
    with pytest.raises(ValueError):
        detection_accuracy(a, a[:, :4])


def test_official_term_value_and_no_gradient_of_its_own():
    torch.manual_seed(0)
    x_real = torch.rand(4, 1, 16, 16) * 2 - 1
    x_fake = (torch.rand(4, 1, 16, 16) * 2 - 1).requires_grad_()
    g_loss = (x_fake ** 2).mean()
    term = official_spectral_term(x_fake, x_real, g_loss, lam=0.5)
    bce = F.binary_cross_entropy(torch.from_numpy(spectral_profile(x_real)).float(),
                                 torch.from_numpy(spectral_profile(x_fake.detach())).float())
    assert float(term) == pytest.approx(0.5 * float(bce) * float(g_loss), rel=1e-6)
    (grad_term,) = torch.autograd.grad(term, x_fake, retain_graph=True)
    (grad_g,) = torch.autograd.grad(g_loss, x_fake)
    torch.testing.assert_close(grad_term, 0.5 * bce * grad_g)


def test_official_gradient_identity_holds():
    torch.manual_seed(0)
    g, _ = make_variant("baseline", image_size=16, z_dim=8, width=4)
    d = DCDiscriminator(image_size=16, width=4)
    measured, predicted = official_gradient_identity(g, d, torch.rand(8, 1, 16, 16) * 2 - 1, torch.randn(8, 8))
    assert measured == pytest.approx(predicted, rel=1e-8)


def test_differentiable_term_moves_the_fake_spectrum():
    torch.manual_seed(0)
    x_real = torch.rand(4, 1, 16, 16) * 2 - 1
    x_fake = (torch.rand(4, 1, 16, 16) * 2 - 1).requires_grad_()
    loss = differentiable_spectral_term(x_fake, x_real)
    loss.backward()
    assert torch.isfinite(x_fake.grad).all() and x_fake.grad.abs().sum() > 0
    assert differentiable_spectral_term(x_real, x_real) < loss


def test_variants():
    for name in GAN_VARIANTS:
        g, extra = make_variant(name, image_size=16, z_dim=8, width=4)
        assert g(torch.randn(2, 8)).shape == (2, 1, 16, 16)
        assert (extra is None) == (GAN_VARIANTS[name][1] is None)
    with pytest.raises(ValueError):
        make_variant("nope")


def _small_gan_experiment(**kwargs):
    images = torch.from_numpy(dead_leaves(80, 8, np.random.default_rng(0)))[:, None]
    return gan_experiment(images, ["baseline", "official"], n_seeds=2, seed=0, steps=4, batch_size=8, n_eval=16,
                          z_dim=4, width=4, **kwargs)


def _same(a, b):
    for v in ("baseline", "official"):
        for key in ("hf_err", "detect", "fd", "g_loss", "d_loss"):
            assert a[v][key] == b[v][key], (v, key)
    assert a["floor"] == b["floor"]


def test_gan_experiment_parallel_and_resumed_runs_equal_sequential(tmp_path, capsys):
    seq = _small_gan_experiment()
    assert seq["baseline"]["resumed_from"] == [0, 0]
    _same(seq, _small_gan_experiment(n_jobs=2))
    first = _small_gan_experiment(checkpoint_dir=tmp_path)
    _same(seq, first)
    assert len(list(tmp_path.glob("*.pt"))) == 4
    again = _small_gan_experiment(checkpoint_dir=tmp_path)  # finished runs: loaded, only evaluated
    assert again["official"]["resumed_from"] == [4, 4]
    _same(seq, again)
    print_training_record(first)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("steps 0-4 on" in line and "checkpoint -" not in line for line in lines)


def test_run_checkpoint_names_change_with_the_run(tmp_path):
    train = torch.zeros(4, 1, 8, 8)
    a = run_checkpoint(tmp_path, train, "baseline", 0, 10, width=4)
    assert a == run_checkpoint(tmp_path, train, "baseline", 0, 10, width=4)
    assert a.parent == tmp_path and a.name.startswith("baseline_seed0_steps10_")
    others = [run_checkpoint(tmp_path, train + 1, "baseline", 0, 10, width=4),
              run_checkpoint(tmp_path, train, "official", 0, 10, width=4),
              run_checkpoint(tmp_path, train, "baseline", 1, 10, width=4),
              run_checkpoint(tmp_path, train, "baseline", 0, 11, width=4),
              run_checkpoint(tmp_path, train, "baseline", 0, 10, width=8)]
    assert len({a, *others}) == 6


def test_gan_experiment_parallel_equals_sequential_at_the_profile_size_with_two_threads():
    """32×32, width 16 (the profile's networks), the caller at 2 threads: workers take the caller's count."""
    images = torch.from_numpy(dead_leaves(100, 32, np.random.default_rng(1)))[:, None]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [gan_experiment(images, ["baseline", "official"], n_seeds=1, seed=0, steps=3, batch_size=16, n_eval=32,
                               n_jobs=n) for n in (1, 2)]
    finally:
        torch.set_num_threads(before)
    _same(*runs)
