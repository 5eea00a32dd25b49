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
    # the training record's "started" timestamp is the wall clock (it differed when a second ticked between runs)
    for h in (h1, h2):
        assert [seg.pop("started") for seg in h["segments"]]
    assert h1 == h2 and torch.equal(x1, x2)
    h3, _ = run(lambda xf, xr, gl: xf.mean() ** 2)
    assert h3["extra"][0] > 0
    assert len(h1["d_loss"]) == 3


def _fresh(seed=0):
    torch.manual_seed(seed)
    return DCGenerator(z_dim=4, image_size=8, width=4), DCDiscriminator(image_size=8, width=4)


def test_train_gan_resumes_bit_identically(tmp_path):
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    g0, d0 = _fresh()
    straight = train_gan(g0, d0, data, 7, batch_size=8, seed=1)
    ckpt = tmp_path / "run.pt"
    g1, d1 = _fresh()
    first = train_gan(g1, d1, data, 4, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=3)
    assert first["resumed_from"] == 0 and ckpt.is_file()
    # an "interrupted" run: a fresh process would start from new networks; the checkpoint holds step 4
    g2, d2 = _fresh(seed=123)
    resumed = train_gan(g2, d2, data, 7, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=3)
    assert resumed["resumed_from"] == 4
    assert [(seg["from"], seg["to"]) for seg in resumed["segments"]] == [(0, 4), (4, 7)]
    assert [(seg["from"], seg["to"]) for seg in straight["segments"]] == [(0, 7)]
    assert {"cpu", "capability", "threads", "torch", "numpy", "started"} <= set(resumed["segments"][0])
    for key in ("d_loss", "g_loss", "extra"):
        assert resumed[key] == straight[key]
    for a, b in zip([*g0.state_dict().values(), *d0.state_dict().values()],
                    [*g2.state_dict().values(), *d2.state_dict().values()], strict=True):
        assert torch.equal(a, b)
    # a finished run returns at once with the stored networks and history
    g3, d3 = _fresh(seed=5)
    again = train_gan(g3, d3, data, 7, batch_size=8, seed=1, checkpoint=ckpt)
    assert again["resumed_from"] == 7 and again["g_loss"] == straight["g_loss"]
    assert torch.equal(generate(g3, latent_bank(4, 4, 0)), generate(g0, latent_bank(4, 4, 0)))
    assert again["segments"] == resumed["segments"]  # nothing trained: no new segment
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file


class _Crash(RuntimeError):
    pass


def test_train_gan_resumes_after_a_crash_mid_run_with_an_extra_loss(tmp_path):
    """A process dying between two saves (here: inside the extra loss at step 5, saves every 3 steps)
    resumes from the last save and ends bit-identical to an uninterrupted run, weights and history."""
    data = torch.rand(64, 1, 8, 8) * 2 - 1

    def extra(xf, xr, gl, crash_at=None, calls=[0]):  # noqa: B006 (a call counter)
        calls[0] += 1
        if crash_at is not None and calls[0] == crash_at:
            raise _Crash
        return (xf.mean() - xr.mean()) ** 2

    g0, d0 = _fresh()
    straight = train_gan(g0, d0, data, 8, batch_size=8, seed=1, g_extra_loss=lambda *a: extra(*a, calls=[0]))
    ckpt = tmp_path / "run.pt"
    counter = [0]
    with pytest.raises(_Crash):
        train_gan(*_fresh(), data, 8, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=3,
                  g_extra_loss=lambda *a: extra(*a, crash_at=5, calls=counter))
    torch.manual_seed(999)  # the global stream plays no part
    g2, d2 = _fresh(seed=7)
    resumed = train_gan(g2, d2, data, 8, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=3,
                        g_extra_loss=lambda *a: extra(*a, calls=[0]))
    assert resumed["resumed_from"] == 3
    for key in ("d_loss", "g_loss", "extra"):
        assert resumed[key] == straight[key]
    for a, b in zip([*g0.state_dict().values(), *d0.state_dict().values()],
                    [*g2.state_dict().values(), *d2.state_dict().values()], strict=True):
        assert torch.equal(a, b)  # weights, BatchNorm buffers and step counters alike


def test_train_gan_lock_and_kernel_change_warning(tmp_path, monkeypatch):
    import common.gan as gan

    data = torch.rand(64, 1, 8, 8) * 2 - 1
    ckpt = tmp_path / "run.pt"
    held = gan._lock(ckpt)
    with pytest.raises(RuntimeError, match="another process"):
        train_gan(*_fresh(), data, 2, batch_size=8, seed=1, checkpoint=ckpt)
    held.close()
    (tmp_path / ".run.pt.tmp-1").write_bytes(b"killed writer")
    train_gan(*_fresh(), data, 2, batch_size=8, seed=1, checkpoint=ckpt)
    assert not (tmp_path / ".run.pt.tmp-1").exists()
    real = gan._environment
    monkeypatch.setattr(gan, "_environment", lambda: {**real(), "threads": 99})
    with pytest.warns(UserWarning, match="other kernels"):
        out = train_gan(*_fresh(), data, 4, batch_size=8, seed=1, checkpoint=_copy(ckpt, tmp_path / "run4.pt"))
    assert [seg["threads"] for seg in out["segments"]][-1] == 99 and out["resumed_from"] == 2


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_train_gan_refuses_foreign_or_longer_checkpoints(tmp_path):
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    ckpt = tmp_path / "run.pt"
    train_gan(*_fresh(), data, 5, batch_size=8, seed=1, checkpoint=ckpt)
    with pytest.raises(ValueError, match="another run"):
        train_gan(*_fresh(), data, 5, batch_size=8, seed=2, checkpoint=ckpt)
    with pytest.raises(ValueError, match="past the 3 steps"):
        train_gan(*_fresh(), data, 3, batch_size=8, seed=1, checkpoint=ckpt)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_gan(*_fresh(), data, 3, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=0)


def test_errors():
    with pytest.raises(ValueError):
        DCGenerator(image_size=24)
    with pytest.raises(ValueError):
        DCGenerator(upsample="bicubic")
    with pytest.raises(ValueError):
        up_block(2, 2, "nearest", kernel_size=4)
    assert n_parameters(torch.nn.Linear(2, 3)) == 9
