"""Tests of common.consistency: scalings, grids, solver step, student init, loss, EMA, sampler (+ diffusers peer)."""

import numpy as np
import pytest
import torch

from common.consistency import (
    CondEpsMLP,
    DistillConfig,
    alpha_sigma_discrete,
    boundary_scalings,
    consistency_distill,
    ddim_skip_step,
    ema_update,
    lcm_inference_timesteps,
    lcm_sample,
    pseudo_huber,
    skipping_timesteps,
)
from common.diffusion import EpsMLP, VPSchedule
from common.diffusion.model import build_denoiser


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_denoiser(EpsMLP(width=32, n_blocks=1, cond_dim=16, t_embed_dim=16))


def test_grids():
    assert skipping_timesteps(50).tolist()[:3] == [19, 39, 59] and skipping_timesteps(50)[-1] == 999
    assert lcm_inference_timesteps(1).tolist() == [999]
    assert lcm_inference_timesteps(2).tolist() == [999, 499]
    assert lcm_inference_timesteps(4).tolist() == [999, 759, 499, 259]
    with pytest.raises(ValueError):
        skipping_timesteps(7)
    with pytest.raises(ValueError):
        lcm_inference_timesteps(0)


def test_boundary_scalings():
    c_skip, c_out = boundary_scalings([0, 1, 999])
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    assert torch.allclose(c_skip[1], torch.tensor(0.25 / 100.25, dtype=torch.float64))
    assert torch.allclose(c_skip**2 * 0 + c_out**2 + c_skip * 0, c_out**2)
    assert (c_out[1:] > 0.99).all()


def test_pseudo_huber_exact():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([4.0, 3.0])
    assert pseudo_huber(a, b, c=3.0).item() == pytest.approx((5.0 - 3.0 + 0.0) / 2)
    with pytest.raises(ValueError):
        pseudo_huber(a, b, c=0.0)


def test_ddim_skip_step_is_exact_for_a_perfect_eps():
    sch = VPSchedule()
    x0, eps = torch.randn(5, 64, dtype=torch.float64), torch.randn(5, 64, dtype=torch.float64)
    step_from, step_to = torch.full((5,), 519), torch.full((5,), 499)
    a_f, s_f = alpha_sigma_discrete(sch, step_from)
    a_t, s_t = alpha_sigma_discrete(sch, step_to)
    z = a_f[:, None] * x0 + s_f[:, None] * eps

    class Oracle:
        schedule = sch

        def eps(self, x, t, y=None):
            return eps

    z_prev = ddim_skip_step(Oracle(), z, step_from, step_to, None)
    assert torch.allclose(z_prev, a_t[:, None] * x0 + s_t[:, None] * eps, atol=1e-12)


def test_student_starts_as_teacher_and_ema(teacher):
    st = CondEpsMLP.from_teacher(teacher.net)
    x, t, y = torch.randn(8, 64), torch.rand(8).double(), torch.arange(8) % 10
    for g in (0.0, 0.5, 1.0):
        assert torch.equal(st(x, t, y, g), teacher.eps(x, t, y))
    other = CondEpsMLP.from_teacher(teacher.net)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    ema_update(st, other, 0.75)
    p0 = next(iter(teacher.net.parameters()))
    assert torch.allclose(next(iter(st.parameters())), p0 + 0.25)
    with pytest.raises(ValueError):
        ema_update(st, other, 1.5)


def test_sampler_nfe_and_determinism(teacher):
    st = CondEpsMLP.from_teacher(teacher.net).eval()
    noise, y = torch.randn(6, 64), torch.arange(6)
    calls = []
    wrapped = lambda *a: calls.append(1) or st(*a)  # noqa: E731
    x1 = lcm_sample(wrapped, noise, y, 4, teacher.schedule, torch.Generator().manual_seed(1))
    x2 = lcm_sample(st, noise, y, 4, teacher.schedule, torch.Generator().manual_seed(1))
    assert len(calls) == 4 and torch.equal(x1, x2)


def test_distill_deterministic_and_same_stream(teacher):
    x, y = torch.randn(40, 64), torch.arange(40) % 10
    cfg = DistillConfig(steps=3, batch_size=8, seed=3)
    r1 = consistency_distill(teacher, x, y, cfg, progress=False)
    r2 = consistency_distill(teacher, x, y, cfg, progress=False)
    assert r1.losses == r2.losses and len(r1.losses) == 3
    with pytest.raises(ValueError):
        consistency_distill(teacher, x, y, DistillConfig(steps=0), progress=False)


def test_peer_diffusers_lcm_scheduler(teacher):
    """Our multistep sampler against diffusers' LCMScheduler driven by the same ε-network."""
    diffusers = pytest.importorskip("diffusers")
    st = CondEpsMLP.from_teacher(teacher.net).eval()
    sch = teacher.schedule
    noise, y = torch.randn(6, 64, dtype=torch.float64), torch.arange(6)
    ours = lcm_sample(st, noise, y, 4, sch, torch.Generator().manual_seed(5))
    peer = diffusers.LCMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                  set_alpha_to_one=True, original_inference_steps=50, prediction_type="epsilon",
                                  timestep_spacing="leading")
    peer.set_timesteps(4)
    assert peer.timesteps.tolist() == lcm_inference_timesteps(4).tolist()
    gen = torch.Generator().manual_seed(5)
    z = noise
    with torch.no_grad():
        for tau in peer.timesteps:
            eps = st(z, sch.t_of_step(tau.double()), y, 1.0)
            z = peer.step(eps, tau, z, generator=gen).denoised if tau == peer.timesteps[-1] else peer.step(eps, tau, z, generator=gen).prev_sample
    assert np.abs((z - ours).numpy()).max() <= 1e-6 * max(1.0, float(ours.abs().max()))


# --- the 16×16 UNet student (x0-prediction) ------------------------------------------------------------
@pytest.fixture(scope="module")
def unet_teacher():
    from common.digits16.model import EpsUNet16, unet_config

    torch.manual_seed(0)
    net = EpsUNet16(unet_config(block_out_channels=[8, 16]), prediction="x0")
    with torch.no_grad():  # diffusers zero-initialises nothing we rely on; perturb so outputs are not trivial
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return build_denoiser(net.eval())


def test_unet_student_starts_as_teacher_and_hook_is_removed(unet_teacher):
    from common.consistency import CondUNetStudent, student_from_teacher

    st = student_from_teacher(unet_teacher.net, DistillConfig()).eval()
    assert isinstance(st, CondUNetStudent) and st.prediction == "x0"
    x, t, y = torch.randn(6, 256), torch.rand(6).double() * 0.9 + 0.05, torch.arange(6) % 10
    with torch.no_grad():
        for g in (0.0, 0.4, 1.0):
            assert torch.equal(st.predict_x0(x, t, y, g), unet_teacher.net.predict_x0(x, t, y))
            assert torch.allclose(st(x, t, y, g), unet_teacher.eps(x, t, y), atol=1e-5)
        assert not st.net.unet.time_embedding._forward_pre_hooks
        nn_init = CondUNetStudent.from_teacher(unet_teacher.net, zero_init=False).eval()
        a, b = nn_init.predict_x0(x, t, y, 0.0), nn_init.predict_x0(x, t, y, 1.0)
        assert not torch.allclose(a, b)  # a non-zero slot makes the output depend on the condition
    with pytest.raises(TypeError):
        CondUNetStudent(torch.nn.Linear(2, 2))


def test_unet_slot_matches_diffusers_cond_proj(unet_teacher):
    """Our pre-hook sum equals diffusers' TimestepEmbedding(cond_proj_dim=...) with the same weights."""
    from diffusers.models.embeddings import TimestepEmbedding

    from common.consistency import CondUNetStudent, scalar_embedding

    st = CondUNetStudent.from_teacher(unet_teacher.net, zero_init=False).eval()
    te = st.net.unet.time_embedding
    peer = TimestepEmbedding(te.linear_1.in_features, te.linear_1.out_features, cond_proj_dim=64)
    peer.load_state_dict({**te.state_dict(), "cond_proj.weight": st.cond_proj.weight})
    cond = torch.rand(5).double()
    emb = scalar_embedding(cond, 64).float()
    seen = {}  # what the hooked call gave the time embedding (input) and got from it (output)
    handle = te.register_forward_hook(lambda m, args, out: seen.update(inp=args[0], out=out))
    x, t, y = torch.randn(5, 256), torch.full((5,), 0.5), torch.arange(5)
    with torch.no_grad():
        st.raw(x, t, y, cond)
        hooked_in, hooked_out = seen["inp"], seen["out"]
        st.net.raw(x, t, y)  # the bare UNet: the sinusoidal input without the slot
        bare_in = seen["inp"]
    handle.remove()
    with torch.no_grad():
        assert torch.allclose(hooked_in, bare_in + st.cond_proj(emb), atol=1e-6)
        assert torch.allclose(hooked_out, peer(bare_in, emb), atol=1e-6)  # diffusers' own cond_proj path


def test_x0_student_consistency_output_and_peer_scheduler(unet_teacher):
    """The x0 branch: f = c_skip x + c_out x0_hat, sigma_in unused; the sampler equals diffusers' LCMScheduler
    with prediction_type="sample" driven by the same network."""
    diffusers = pytest.importorskip("diffusers")
    from common.consistency import consistency_output, student_from_teacher

    st = student_from_teacher(unet_teacher.net, DistillConfig()).eval()
    sch = unet_teacher.schedule
    x, y, steps = torch.randn(4, 256), torch.arange(4), torch.tensor([999, 759, 19, 0])
    with torch.no_grad():
        f = consistency_output(st, x, steps, y, 1.0, torch.full((4,), 0.3), sch)
        f2 = consistency_output(st, x, steps, y, 1.0, torch.full((4,), 0.9), sch)
        c_skip, c_out = boundary_scalings(steps)
        expect = c_skip.float()[:, None] * x + c_out.float()[:, None] * st.predict_x0(x, sch.t_of_step(steps), y, 1.0)
    assert torch.equal(f, f2) and torch.allclose(f, expect, atol=1e-6)
    assert torch.equal(f[3], x[3])  # boundary condition f(z, 0) = z
    noise = torch.randn(3, 256, dtype=torch.float64)
    y3 = torch.arange(3)
    ours = lcm_sample(st, noise, y3, 4, sch, torch.Generator().manual_seed(5))
    peer = diffusers.LCMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                  set_alpha_to_one=True, original_inference_steps=50, prediction_type="sample",
                                  timestep_spacing="leading")
    peer.set_timesteps(4)
    gen, z = torch.Generator().manual_seed(5), noise
    with torch.no_grad():
        for tau in peer.timesteps:
            out = st.raw(z, sch.t_of_step(tau.double()), y3, 1.0).double()
            res = peer.step(out, tau, z, generator=gen)
            z = res.denoised if tau == peer.timesteps[-1] else res.prev_sample
    assert np.abs((z - ours).numpy()).max() <= 1e-5 * max(1.0, float(ours.abs().max()))


def test_unet_distill_deterministic(unet_teacher):
    x, y = torch.randn(20, 256), torch.arange(20) % 10
    cfg = DistillConfig(steps=2, batch_size=4, seed=1)
    r1 = consistency_distill(unet_teacher, x, y, cfg, progress=False)
    r2 = consistency_distill(unet_teacher, x, y, cfg, progress=False)
    assert r1.losses == r2.losses and len(r1.losses) == 2 and all(np.isfinite(r1.losses))
