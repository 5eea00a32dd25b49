"""Unit tests of papers.stsl: operators, the exact GMM posterior, Hutchinson, NFE counting, sampler shapes."""

import pytest
import torch

from papers.stsl import gmm as gmm_lib
from papers.stsl.experiments import gmm_problem, sigma_tag
from papers.stsl.operators import TASKS, make_operator
from papers.stsl.stsl import SAMPLERS, hutchinson_trace, nfe_per_step, per_image_psnr, sample


@pytest.mark.parametrize("task", TASKS)
def test_operator_adjoint_and_pinv(task):
    op = make_operator(task)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=g, dtype=torch.float64)
    y = torch.randn(5, op.shape[0], generator=g, dtype=torch.float64)
    assert torch.allclose((op.forward(x) * y).sum(-1), (x * op.adjoint(y)).sum(-1), atol=1e-12)
    # A A^+ A = A
    assert torch.allclose(op.forward(op.pinv(op.forward(x))), op.forward(x), atol=1e-10)


def test_operator_shapes_and_values():
    assert make_operator("inpaint").shape == (48, 64)
    assert make_operator("sr").shape == (16, 64)
    blur = make_operator("blur").matrix
    assert blur.shape == (64, 64) and torch.allclose(blur[27].sum(), torch.tensor(1.0, dtype=torch.float64))
    sr = make_operator("sr")
    ones = torch.ones(1, 64, dtype=torch.float64)
    assert torch.allclose(sr.forward(ones), torch.ones(1, 16, dtype=torch.float64))
    assert torch.allclose(sr.pinv(torch.ones(1, 16, dtype=torch.float64)), ones)
    with pytest.raises(ValueError):
        make_operator("jpeg")


def test_exact_posterior_matches_importance_sampling():
    prior = gmm_lib.default_gmm()
    w, a = gmm_lib.default_linear_setting()
    m, sigma_y = a @ w, 0.3
    y = torch.tensor([0.7], dtype=torch.float64)
    post = gmm_lib.exact_posterior(prior, m, y, sigma_y)
    g = torch.Generator().manual_seed(1)
    z = prior.sample(200_000, g)
    lw = -0.5 * ((z @ m.T - y) ** 2).sum(-1) / sigma_y**2
    wts = torch.softmax(lw, 0)
    mc_mean = (wts[:, None] * z).sum(0)
    exact_mean = (post[0][:, None] * post[1]).sum(0)
    assert torch.allclose(mc_mean, exact_mean, atol=0.02)
    assert torch.isclose(post[0].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gmm_score_matches_autograd_of_log_prob():
    prior = gmm_lib.default_gmm()
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(
        True
    )
    (grad,) = torch.autograd.grad(prior.log_prob(z, 0.3).sum(), z)
    assert torch.allclose(prior.score(z.detach(), 0.3), grad, atol=1e-10)


def test_hutchinson_unbiased_on_known_matrix():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(6, 6, generator=g, dtype=torch.float64)
    est = hutchinson_trace(lambda v: v @ h.T, 6, n_probes=20_000, generator=g)
    assert abs(float(est) - float(torch.trace(h))) < 0.1


def test_finite_difference_trace_term_matches_exact_hessian():
    """The STSL quadratic form uᵀ(s(z+δu) − s(z))/δ approaches uᵀ H u for small δ (exact GMM Hessian)."""
    prior = gmm_lib.default_gmm()
    z = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    u = torch.tensor([[0.6, -0.4]], dtype=torch.float64)
    h = prior.hessian(z, 0.4)[0]
    delta = 1e-5
    fd = (u * (prior.score(z + delta * u, 0.4) - prior.score(z, 0.4))).sum() / delta
    assert torch.isclose(fd, u[0] @ h @ u[0], rtol=1e-3)


def test_nfe_counting_and_budget():
    assert (
        nfe_per_step("dps") == 1
        and nfe_per_step("stsl") == 2
        and nfe_per_step("stsl", n_probes=3, n_inner=2) == 8
    )
    problem, _ = gmm_problem(torch.tensor([0.5], dtype=torch.float64), 0.3, 8)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, fn in SAMPLERS.items():
        if name == "stsl_oracle":  # needs an oracle score; its NFE counting is tested in test_oracle.py
            continue
        res = fn(problem, noise, 25, step_size=1.0, guidance="likelihood", eta=1.0)
        assert res.nfe <= 25 and res.nfe == res.n_steps * nfe_per_step(name)
        assert res.z.shape == (8, 2) and res.x.shape == (8, 3) and torch.isfinite(res.z).all()
    with pytest.raises(ValueError):
        sample(problem, "stsl", noise, 1, step_size=1.0)
    with pytest.raises(ValueError):
        nfe_per_step("p2l")


def test_sampler_deterministic_and_measurement_init():
    problem, _ = gmm_problem(torch.tensor([0.5], dtype=torch.float64), 0.3, 4)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(step_size=0.5, t_start=0.5, init="measurement", eta=0.0)
    a = SAMPLERS["stsl"](problem, noise, 20, **kw)
    b = SAMPLERS["stsl"](problem, noise, 20, **kw)
    assert torch.equal(a.z, b.z)


def test_w2_and_psnr_helpers():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert gmm_lib.wasserstein2(x, x) == 0.0
    assert abs(gmm_lib.wasserstein2(x, x + torch.tensor([3.0, 4.0], dtype=torch.float64)) - 5.0) < 1e-9
    ref = torch.zeros(2, 64)
    assert torch.allclose(per_image_psnr(ref + 0.2, ref), torch.full((2,), 20.0, dtype=torch.float64))
    assert sigma_tag(0.05) == "sy005" and sigma_tag(0.01) == "sy001"


@pytest.mark.parametrize("task", ["inpaint", "sr"])
def test_psld_gluing_target_is_a_projection(task):
    """PSLD's glued image A⁺y + (I − A⁺A) x0 agrees with y in measurement space and equals x0 when A x0 = y;
    for inpainting it copies y into the measured pixels and keeps x0 in the box."""
    from papers.stsl.stsl import Problem, gluing_target

    op = make_operator(task)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(3, 64, generator=g, dtype=torch.float64)
    y = torch.randn(3, op.shape[0], generator=g, dtype=torch.float64)
    problem = Problem(None, None, None, op, y, 0.05)
    glued = gluing_target(problem, x0)
    assert torch.allclose(op.forward(glued), y, atol=1e-10)
    consistent = Problem(None, None, None, op, op.forward(x0), 0.05)
    assert torch.allclose(gluing_target(consistent, x0), x0, atol=1e-10)
    if task == "inpaint":
        assert torch.allclose(op.adjoint(op.forward(glued)), op.adjoint(y))
        box = op.adjoint(torch.ones(1, op.shape[0], dtype=torch.float64))[0] == 0
        assert torch.equal(glued[:, box], x0[:, box])


def test_empirical_noised_score_matches_autograd():
    from common.diffusion.schedule import VPSchedule
    from papers.stsl.experiments import empirical_noised_score

    sched, t = VPSchedule(), 0.5
    g = torch.Generator().manual_seed(6)
    lat = torch.randn(40, 3, generator=g, dtype=torch.float64)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    logp = torch.logsumexp(-((z[:, None, :] - a * lat[None]) ** 2).sum(-1) / (2 * s * s), -1)
    (grad,) = torch.autograd.grad(logp.sum(), z)
    assert torch.allclose(empirical_noised_score(z.detach(), t, lat, sched), grad, atol=1e-10)


def test_trace_drift_check_is_zero_for_an_exact_network():
    """When the 'network' is the exact noised score of the latents, its drift equals the exact drift."""
    from common.diffusion.schedule import VPSchedule
    from papers.stsl.experiments import empirical_noised_score, trace_drift_check
    from papers.stsl.gmm import LinearCodec

    g = torch.Generator().manual_seed(7)
    lat = torch.randn(60, 8, generator=g, dtype=torch.float64)
    codec = LinearCodec(torch.randn(64, 8, generator=g, dtype=torch.float64))

    class Exact:
        schedule = VPSchedule()

        def eps(self, z, t):
            return -float(self.schedule.sigma(t)) * empirical_noised_score(z, t, lat, self.schedule).to(
                z.dtype
            )

    x = torch.randn(4, 64, generator=g, dtype=torch.float64)
    out = trace_drift_check(Exact(), codec, make_operator("inpaint"), x, 0.05, 0, 0.6, lat)
    assert out["rel_err"].shape == (4,) and (out["exact"] > 0).all()
    assert float(out["rel_err"].max()) < 1e-4
