"""Unit tests of the SLAM sub-path pieces (exact algebra on small cases)."""

import numpy as np
import pytest
import torch

from common.consistency import alpha_sigma_discrete
from common.diffusion import VPSchedule
from papers.slam.slam import (
    balanced_labels,
    first_crossing,
    iteration_ratio,
    slam_student_input,
    student_input_for,
    sub_path_point,
    sub_path_sigma,
)

SCHEDULES = {"ddpm_linear": VPSchedule(), "sd_scaled_linear": VPSchedule(0.00085, 0.012, beta_schedule="scaled_linear")}


@pytest.mark.parametrize("sch", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_sigma_end_points(sch):
    a_f, s_f = alpha_sigma_discrete(sch, torch.tensor([519, 999]))
    a_t, s_t = alpha_sigma_discrete(sch, torch.tensor([499, 979]))
    assert torch.allclose(sub_path_sigma(torch.ones(2), a_f, a_t, s_t), s_f)
    assert torch.allclose(sub_path_sigma(torch.zeros(2), a_f, a_t, s_t), s_t * a_f / a_t)
    with pytest.raises(ValueError):
        sub_path_sigma(torch.tensor([1.5, 0.0]), a_f, a_t, s_t)


@pytest.mark.parametrize("sch", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_sub_path_point_has_the_stated_noise_level(sch):
    """z_from = a z_to + sqrt(1 - a^2) xi (forward transition): z_gamma - alpha_from x0 has std sigma_gamma."""
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


def test_slam_at_gamma_one_trains_exactly_like_lcm():
    """With γ forced to 1 the SLAM hook is LCM: identical losses on the same stream (the baseline is clean)."""
    from common.consistency import DistillConfig, consistency_distill
    from common.diffusion import EpsMLP
    from common.diffusion.model import build_denoiser

    torch.manual_seed(0)
    teacher = build_denoiser(EpsMLP(width=32, n_blocks=1, cond_dim=16, t_embed_dim=16))
    x, y = torch.randn(40, 64), torch.arange(40) % 10

    def slam_gamma_one(z, z_prev, step_from, step_to, schedule, generator):
        a_f, s_f = alpha_sigma_discrete(schedule, step_from)
        a_t, s_t = alpha_sigma_discrete(schedule, step_to)
        g = torch.ones(z.shape[0], dtype=torch.float64)
        return sub_path_point(z, z_prev, g, a_f, a_t), sub_path_sigma(g, a_f, a_t, s_t), g

    cfg = DistillConfig(steps=4, batch_size=8, seed=2)
    lcm = consistency_distill(teacher, x, y, cfg, student_input=student_input_for("lcm"), progress=False)
    one = consistency_distill(teacher, x, y, cfg, student_input=slam_gamma_one, progress=False)
    np.testing.assert_allclose(one.losses, lcm.losses, rtol=1e-6)
    slam = consistency_distill(teacher, x, y, cfg, student_input=student_input_for("slam"), progress=False)
    assert slam.losses[0] != lcm.losses[0]


def test_self_consistency_error_probe():
    from common.consistency import CondEpsMLP
    from common.diffusion import load_digits_eps, load_digits_split
    from papers.slam.slam import first_step_spread, self_consistency_error

    teacher = load_digits_eps("ci")
    split = load_digits_split()
    net = CondEpsMLP.from_teacher(teacher.net).eval()
    a = self_consistency_error(net, teacher, split.x_train, split.y_train, "lcm", n=64, random_state=3)
    b = self_consistency_error(net, teacher, split.x_train, split.y_train, "lcm", n=64, random_state=3)
    c = self_consistency_error(net, teacher, split.x_train, split.y_train, "slam", n=64, random_state=3)
    assert a == b and a["all"] > 0 and a["high"] >= 0
    # the teacher is not a consistency function of SLAM's off-path inputs: their error is larger
    assert c["all"] > a["all"]
    with pytest.raises(ValueError):
        self_consistency_error(net, teacher, split.x_train, split.y_train, "lcm", n=0)
    assert first_step_spread(net, 4, 32, teacher.schedule, 0) > 0


def test_official_arm_embeds_ten_minus_ten_gamma_with_a_random_slot():
    """slam_official = SLAM's input with the official slot: embedding of 10 - 10γ, default-initialised projection."""
    from common.consistency import CondEpsMLP, DistillConfig
    from common.diffusion.model import EpsMLP
    from papers.slam.slam import OFFICIAL_ARMS

    torch.manual_seed(0)
    net = EpsMLP(width=16, n_blocks=1, cond_dim=8)
    ours = CondEpsMLP.from_teacher(net)
    official = CondEpsMLP.from_teacher(net, cond_map="splam", zero_init=False)
    assert torch.count_nonzero(ours.cond_proj.weight) == 0 and torch.count_nonzero(official.cond_proj.weight) > 0
    official.cond_proj.weight.data = torch.randn_like(official.cond_proj.weight)
    same = CondEpsMLP.from_teacher(net, cond_map="identity", zero_init=False)
    same.cond_proj.weight.data = official.cond_proj.weight.data.clone()
    x, y = torch.randn(3, 64), torch.arange(3)
    with torch.no_grad():  # official(γ) == identity-slot network evaluated at 10 - 10γ
        for g in (0.0, 0.25, 1.0):
            assert torch.allclose(official(x, 0.4, y, g), same(x, 0.4, y, 10.0 - 10.0 * g), atol=1e-6)
    assert OFFICIAL_ARMS["slam_official"] == ("slam", {"cond_map": "splam", "cond_zero_init": False})
    assert DistillConfig().cond_map == "identity" and DistillConfig().cond_zero_init
    with pytest.raises(ValueError, match="cond_map"):
        CondEpsMLP(net, cond_map="w")


def test_iteration_ratio_first_crossing_after_iteration_zero():
    # iteration 0 (both students are the teacher, the same value) is below LCM's final value here but never counts
    lcm = {0: 4.0, 200: 6.0, 400: 5.0}
    assert iteration_ratio(lcm, {0: 4.0, 200: 6.0, 400: 5.0}, 400) == 1.0
    assert iteration_ratio(lcm, {0: 4.0, 200: 4.9, 400: 7.0}, 400) == 0.5
    assert iteration_ratio(lcm, {0: 4.0, 200: 40.0, 400: 50.0}, 400) == 2.0  # never reached after iteration 0


def test_as_digits8_and_arm_config():
    from common.consistency import DistillConfig
    from common.digits16.data import upsample8to16
    from papers.slam.slam import _arm_config, as_digits8

    x8 = torch.randn(3, 64)
    assert as_digits8(x8) is x8
    assert torch.allclose(as_digits8(upsample8to16(x8)), x8, atol=1e-5)
    with pytest.raises(ValueError):
        as_digits8(torch.randn(2, 100))
    cfg = DistillConfig(seed=4)
    assert _arm_config("slam", cfg) is cfg
    assert _arm_config("slam_official", cfg).cond_map == "splam" and not _arm_config("slam_official", cfg).cond_zero_init
    with pytest.raises(ValueError):
        _arm_config("dmd", cfg)


def test_train_and_evaluate_unet_cache_round_trip(tmp_path):
    """A tiny 16×16 UNet teacher: the cached student evaluates to the same numbers; the key moves with the arm."""
    from types import SimpleNamespace

    from common.consistency import DistillConfig
    from common.diffusion.model import build_denoiser
    from common.digits16.model import EpsUNet16, unet_config
    from papers.slam.slam import train_and_evaluate, training_cache_key

    torch.manual_seed(0)
    teacher = build_denoiser(EpsUNet16(unet_config(block_out_channels=[8, 16]), prediction="x0").eval())
    split = SimpleNamespace(x_train=torch.randn(24, 256).clamp(-1, 1), y_train=torch.arange(24) % 10)

    class Classifier:
        def predict(self, x):
            return torch.zeros(len(x), dtype=torch.long)

    cfg = DistillConfig(steps=2, batch_size=4, seed=0)
    kw = dict(steps=(1, 2), n_samples=12, n_curve_samples=6, eval_every=1, progress=False, n_probe=8, cache_dir=tmp_path)
    first = train_and_evaluate(teacher, split, "slam", cfg, Classifier(), **kw)
    again = train_and_evaluate(teacher, split, "slam", cfg, Classifier(), **kw)
    assert not first["cached"] and again["cached"] and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert again["fd"] == first["fd"] and again["curve"] == first["curve"] and torch.equal(again["grid"], first["grid"])
    assert first["grid"].shape == (12, 256) and set(first["curve"]) == {0, 1, 2}
    key = training_cache_key(teacher, split, "slam", cfg, 6, 1)
    assert key != training_cache_key(teacher, split, "lcm", cfg, 6, 1)
    assert key != training_cache_key(teacher, split, "slam", DistillConfig(steps=2, batch_size=4, seed=1), 6, 1)
