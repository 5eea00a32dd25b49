"""Unit tests of the DreamCatalyst proxy: schedule, weights, gradient, the editing loop's bookkeeping."""

import math

import numpy as np
import pytest
import torch

from common.diffusion.schedule import VPSchedule
from common.score_distillation import dds_grad
from papers.dreamcatalyst.dreamcatalyst import (
    DCConfig,
    dc_grad,
    dc_timestep,
    dc_weights,
    edit,
    image_side,
    iterations_to_success,
    method_gradient,
    select_sources,
    ssim,
    target_probability,
)


class LinearEps:
    def __init__(self):
        self.schedule = VPSchedule()

    def eps(self, x, t, y=None):
        return 0.5 * x + 0.1 * y.to(x.dtype)[:, None]


class ConstClassifier(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 10)


def test_schedule_decreases_linearly_from_t_max_to_t_min():
    ts = np.array([dc_timestep(i, 100) for i in range(100)])
    assert ts[0] == pytest.approx(0.9) and ts[-1] == pytest.approx(0.2 + 0.7 / 100)
    assert np.allclose(np.diff(ts), -0.007)
    with pytest.raises(ValueError):
        dc_timestep(100, 100)


def test_weights_match_official_constants():
    w, psi = dc_weights(0.5)
    assert float(w) == pytest.approx(0.2 + 0.8 * 0.5 ** (1 / math.e))
    assert float(psi) == pytest.approx(0.075 * math.exp(0.5))
    assert float(dc_weights(1.0)[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        DCConfig(t_min=0.9, t_max=0.2)


def test_dc_grad_is_weighted_dds_plus_identity_term():
    m = LinearEps()
    g = torch.Generator().manual_seed(0)
    xt, xs, eps = (torch.randn(3, 64, generator=g, dtype=torch.float64) for _ in range(3))
    ys, yt = torch.tensor([1, 3, 5]), torch.tensor([7, 8, 6])
    w, psi = dc_weights(0.6)
    expect = dds_grad(m, xt, xs, yt, ys, 0.6, eps=eps, weight=w) + float(psi) * (xt - xs)
    torch.testing.assert_close(dc_grad(m, xt, xs, yt, ys, 0.6, eps=eps), expect)
    # psi = 0 leaves the editability term alone; identical inputs give zero
    torch.testing.assert_close(dc_grad(m, xt, xs, yt, ys, 0.6, eps=eps, cfg=DCConfig(psi=0.0)),
                               dds_grad(m, xt, xs, yt, ys, 0.6, eps=eps, weight=w))
    assert torch.all(dc_grad(m, xs, xs, ys, ys, 0.6, eps=eps) == 0)


def test_methods_share_the_noise_stream_and_timesteps():
    m = LinearEps()
    x = torch.zeros(2, 64)
    y = torch.tensor([1, 1])
    ts = {}
    for method in ("sds", "dds", "pds", "dc", "dc_random_t", "dc_psi0"):
        gen = torch.Generator().manual_seed(5)
        _, ts[method] = method_gradient(method, m, x, x, y, y, 3, 10, gen)
    assert ts["sds"] == ts["dds"] == ts["pds"]
    assert 0.02 <= ts["sds"] <= 0.98 and 0.2 <= ts["dc_random_t"] <= 0.9
    assert ts["dc"] == ts["dc_psi0"] == pytest.approx(dc_timestep(3, 10))
    with pytest.raises(ValueError):
        method_gradient("nope", m, x, x, y, y, 0, 1, torch.Generator())


def test_edit_is_deterministic_and_dds_leaves_an_unedited_image():
    m, clf = LinearEps(), ConstClassifier()
    src = torch.rand(2, 64) * 2 - 1
    y = torch.tensor([1, 1])
    r1 = edit("dc", m, clf, src, y, torch.tensor([7, 7]), n_iters=5, seed=3)
    r2 = edit("dc", m, clf, src, y, torch.tensor([7, 7]), n_iters=5, seed=3)
    torch.testing.assert_close(r1.final, r2.final)
    assert r1.p_target.shape == (5, 2) and np.allclose(r1.p_target, 0.1)
    # same class on both sides: the DDS gradient is zero for every view, the image never moves
    r = edit("dds", m, clf, src, y, y, n_iters=4, seed=0)
    torch.testing.assert_close(r.final, src)
    assert np.allclose(r.mse, 0) and np.allclose(r.ssim, 1)


def test_iterations_to_success():
    p = np.array([[0.1, 0.9], [0.9, 0.9], [0.95, 0.1]])
    s = np.array([[1.0, 0.2], [0.6, 0.9], [0.9, 0.9]])
    np.testing.assert_array_equal(iterations_to_success(p, s, 0.8, 0.5), [2, 2])
    np.testing.assert_array_equal(iterations_to_success(p, s, 0.99, 0.5), [4, 4])


def test_ssim_of_identical_images_is_one_and_sources_are_selected():
    x = torch.rand(3, 64) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64))
    y = torch.tensor([1, 3, 1, 5, 0, 3, 5, 0])
    xs, ys, yt = select_sources(torch.arange(8.0)[:, None].expand(8, 64), y, 2)
    assert ys.tolist() == [1, 1, 3, 3, 5, 5, 0, 0] and yt.tolist() == [7, 7, 8, 8, 6, 6, 8, 8]
    with pytest.raises(ValueError):
        select_sources(x, torch.tensor([1, 1, 1]), 2)


def test_16x16_path_ssim_classifier_and_views():
    """16×16 images: SSIM at their own resolution, the 8×8 classifier through to_digits8, views of side 16."""
    from common.diffusion import load_digits_split
    from common.digits16 import upsample8to16

    assert image_side(64) == 8 and image_side(256) == 16
    with pytest.raises(ValueError):
        image_side(100)
    x8 = load_digits_split().x_heldout[:4]
    x16 = upsample8to16(x8)
    torch.testing.assert_close(ssim(x16, x16), torch.ones(4, dtype=torch.float64))
    assert float(ssim(x16[:1], x16[1:2])) < 0.99

    class Probe(torch.nn.Module):  # a classifier that reads its input: logit of class 7 = the pixel sum
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10, dtype=x.dtype)
            out[:, 7] = x.sum(1) / 64
            return out

    y = torch.full((4,), 7)
    # exact on upsampled digits: the 16×16 probability equals the 8×8 one
    torch.testing.assert_close(target_probability(Probe(), x16, y), target_probability(Probe(), x8, y))

    class LinearEps16(LinearEps):
        pass

    src = x16[:2]
    r = edit("dc", LinearEps16(), ConstClassifier(), src, torch.tensor([1, 1]), torch.tensor([7, 7]), n_iters=3,
             n_views=1, seed=0, max_shift_px=2.0)
    assert r.final.shape == (2, 256) and r.ssim.shape == (3, 2)
    r = edit("dds", LinearEps16(), ConstClassifier(), src, torch.tensor([1, 1]), torch.tensor([1, 1]), n_iters=2,
             n_views=2, seed=0, max_shift_px=2.0)
    torch.testing.assert_close(r.final, src)
