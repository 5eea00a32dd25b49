"""Unit tests of the SLAM sub-path pieces (exact algebra on small cases)."""

import numpy as np
import pytest
import torch

from common.consistency import alpha_sigma_discrete
from common.diffusion import VPSchedule
from papers.slam.slam import (
    balanced_labels,
    first_crossing,
    slam_student_input,
    student_input_for,
    sub_path_point,
    sub_path_sigma,
)


def test_sigma_end_points():
    sch = VPSchedule()
    a_f, s_f = alpha_sigma_discrete(sch, torch.tensor([519, 999]))
    a_t, s_t = alpha_sigma_discrete(sch, torch.tensor([499, 979]))
    assert torch.allclose(sub_path_sigma(torch.ones(2), a_f, a_t, s_t), s_f)
    assert torch.allclose(sub_path_sigma(torch.zeros(2), a_f, a_t, s_t), s_t * a_f / a_t)
    with pytest.raises(ValueError):
        sub_path_sigma(torch.tensor([1.5, 0.0]), a_f, a_t, s_t)


def test_sub_path_point_has_the_stated_noise_level():
    """z_from = a z_to + sqrt(1 - a^2) xi (forward transition): z_gamma - alpha_from x0 has std sigma_gamma."""
    sch = VPSchedule()
    gen = torch.Generator().manual_seed(0)
    n = 50_000
    x0 = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    a_f, s_f = alpha_sigma_discrete(sch, torch.full((n,), 619))
    a_t, s_t = alpha_sigma_discrete(sch, torch.full((n,), 599))
    z_to = a_t[:, None] * x0 + s_t[:, None] * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    r = (a_f / a_t)[:, None]
    z_from = r * z_to + torch.sqrt(1 - r**2) * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    assert torch.allclose((z_from - a_f[:, None] * x0).std(), s_f[0], rtol=2e-2)
    gamma = torch.full((n,), 0.3, dtype=torch.float64)
    zg = sub_path_point(z_from, z_to, gamma, a_f, a_t)
    resid = zg - a_f[:, None] * x0
    assert abs(resid.mean().item()) < 1e-2
    assert resid.std().item() == pytest.approx(sub_path_sigma(gamma[:1], a_f[:1], a_t[:1], s_t[:1]).item(), rel=2e-2)


def test_gamma_one_is_lcm_and_hook_shapes():
    sch = VPSchedule()
    z, zp = torch.randn(4, 64), torch.randn(4, 64)
    sf, st = torch.tensor([19, 39, 999, 519]), torch.tensor([0, 19, 979, 499])
    a_f, _ = alpha_sigma_discrete(sch, sf)
    a_t, _ = alpha_sigma_discrete(sch, st)
    assert torch.equal(sub_path_point(z, zp, torch.ones(4), a_f, a_t), z)
    u, sig, g = slam_student_input(z, zp, sf, st, sch, torch.Generator().manual_seed(0))
    assert u.shape == z.shape and sig.shape == (4,) and ((g >= 0) & (g <= 1)).all()
    u1, sig1, g1 = student_input_for("lcm")(z, zp, sf, st, sch, None)
    assert torch.equal(u1, z) and torch.all(g1 == 1)
    with pytest.raises(ValueError):
        student_input_for("ddim")


def test_helpers():
    assert balanced_labels(12).tolist() == list(range(10)) + [0, 1]
    assert first_crossing([0, 10, 20], [5.0, 3.0, 1.0], 3.0) == 10.0
    assert np.isinf(first_crossing([0, 10], [5.0, 4.0], 3.0))
