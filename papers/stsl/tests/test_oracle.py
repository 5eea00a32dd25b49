"""The oracle-drift arm (stsl_oracle), its faithfulness diagnostics and the arms of digits_task (DPS, oracle)."""

import pytest
import torch

from common.diffusion.schedule import VPSchedule
from papers.stsl.experiments import (
    digits_task,
    effective_components,
    empirical_noised_score,
    oracle_faithfulness,
    trace_drift,
)
from papers.stsl.gmm import LinearCodec
from papers.stsl.operators import make_operator
from papers.stsl.stsl import Problem, nfe_per_step, sample


def _exact_setting(seed=0, n_lat=50, d=8, batch=3):
    """A linear codec, latents and an 'exact network' whose ε is the exact noised empirical score's."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n_lat, d, generator=g, dtype=torch.float64)
    codec = LinearCodec(torch.randn(64, d, generator=g, dtype=torch.float64) / d**0.5)

    class Exact:
        schedule = VPSchedule()

        def eps(self, z, t):
            return -float(self.schedule.sigma(t)) * empirical_noised_score(z, t, lat, self.schedule).to(z.dtype)

    model = Exact()
    op = make_operator("inpaint")
    x = codec.decode(torch.randn(batch, d, generator=g, dtype=torch.float64))
    y = op.measure(x, 0.05, g)
    problem = Problem(model, codec.decode, codec.encode, op, y, 0.05)
    noise = torch.randn(batch, d, generator=g, dtype=torch.float64)
    return model, codec, lat, problem, noise, x


def test_oracle_drift_equals_autograd_of_the_empirical_log_density():
    """trace_drift(empirical score) = ∇_z [w uᵀ ∇²_z log p_t(z) u], with log p_t = logsumexp of the Gaussians."""
    sched, t, w = VPSchedule(), 0.45, 3.7
    g = torch.Generator().manual_seed(11)
    lat = torch.randn(30, 4, generator=g, dtype=torch.float64)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    u = torch.randn(5, 4, generator=g, dtype=torch.float64)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    zz = z.clone().requires_grad_(True)
    logp = torch.logsumexp(-((zz[:, None, :] - a * lat[None]) ** 2).sum(-1) / (2 * s * s), -1)
    (grad,) = torch.autograd.grad(logp.sum(), zz, create_graph=True)
    (hu,) = torch.autograd.grad((grad * u).sum(), zz, create_graph=True)
    (ref,) = torch.autograd.grad(w * (hu * u).sum(), zz)
    got = trace_drift(lambda q: empirical_noised_score(q, t, lat, sched), z, u, w)
    assert torch.allclose(got, ref, atol=1e-9, rtol=1e-9)


def test_effective_components_limits():
    sched = VPSchedule()
    lat = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = torch.zeros(20, 3, dtype=torch.float64)
    # identical latents: every one equally responsible -> N
    assert torch.allclose(effective_components(torch.ones(2, 3), 0.5, same, sched), torch.full((2,), 20.0, dtype=torch.float64))
    # at tiny noise, a point on a training latent snaps to it -> 1
    a = float(sched.alpha(0.01))
    assert torch.allclose(effective_components(a * lat[:3], 0.01, lat, sched), torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_stsl_oracle_equals_stsl_when_the_network_is_the_oracle():
    """With the oracle = the network's own (exact) score, the arm is STSL: same samples, network calls 1 per step
    instead of 2, and 2 oracle evaluations per step."""
    model, codec, lat, problem, noise, _ = _exact_setting()

    def oracle(z, t):
        return empirical_noised_score(z, t, lat, model.schedule)

    kw = dict(step_size=0.5, gamma=0.1, t_start=0.6, init="measurement")
    ref = sample(problem, "stsl", noise, 10, generator=torch.Generator().manual_seed(3), **kw)
    arm = sample(problem, "stsl_oracle", noise, 10, generator=torch.Generator().manual_seed(3), trace_score=oracle, **kw)
    assert torch.allclose(arm.z, ref.z, atol=1e-10)
    assert (ref.nfe, ref.n_steps, ref.oracle_evals) == (10, 5, 0)
    assert (arm.nfe, arm.n_steps, arm.oracle_evals) == (5, 5, 10)
    assert nfe_per_step("stsl_oracle") == nfe_per_step("stsl") == 2
    with pytest.raises(ValueError, match="trace_score"):
        sample(problem, "stsl_oracle", noise, 10, **kw)


def test_stsl_oracle_below_trace_t_min_is_the_ablation():
    """With trace_t_min above every step's t, the oracle arm takes no-trace steps (the matching control)."""
    model, codec, lat, problem, noise, _ = _exact_setting(seed=1)
    kw = dict(step_size=0.5, gamma=0.1, t_start=0.6, init="measurement")
    arm = sample(problem, "stsl_oracle", noise, 10, trace_score=lambda z, t: 1 / 0, trace_t_min=0.7, **kw)
    ctrl = sample(problem, "stsl_no_trace", noise, 5, **kw)
    assert torch.equal(arm.z, ctrl.z) and arm.oracle_evals == 0 and arm.nfe == ctrl.nfe == 5
    # a threshold inside the grid uses the oracle only at the steps with t >= trace_t_min
    part = sample(
        problem, "stsl_oracle", noise, 10, trace_score=lambda z, t: empirical_noised_score(z, t, lat, model.schedule),
        trace_t_min=0.45, **kw,
    )
    assert part.oracle_evals == 2 * 2  # t = 0.6, 0.48 of the grid 0.6, 0.48, 0.36, 0.24, 0.12


def test_oracle_faithfulness_shapes_and_snapping():
    model, codec, lat, problem, noise, x = _exact_setting(seed=2, n_lat=200)
    out = oracle_faithfulness(model, codec, make_operator("inpaint"), x, 0.05, 0, [0.9, 0.05], lat)
    assert out["eff"].shape == (2, 3) and out["split"].shape == (2, 3)
    assert (out["eff"][0] > out["eff"][1]).all()  # more latents averaged at large t


def test_digits_task_arms_wiring():
    """digits_task adds latent DPS at the PSLD budget and the oracle arm + its control at the matched step count,
    each tuned on the same grid; unknown arms and the oracle without latents are errors."""
    from papers.stsl.latent import load_setting

    st = load_setting(8)
    with torch.no_grad():
        lat = st.vae.encode(st.x_train[:200])
    x_test, x_tune = st.x_heldout[:2], st.x_heldout[-2:]
    out = digits_task(st.model, st.vae, "sr", x_test, x_tune, 0.05, 8, [0], [0.3, 1.0], 0.1, 0.6,
                      latents=lat, arms=("dps", "oracle"), oracle_t_min=0.3)
    assert out["nfe"] == {"psld": 8, "stsl": 2, "stsl_no_trace": 2, "dps": 8, "stsl_oracle": 1, "no_trace_matched": 1}
    assert out["oracle_evals"] == 2 and out["dps"].shape == (2,) and out["stsl_oracle"].shape == (2,)
    assert set(out["step_size"]) == set(out["tuning"]) == set(out["nfe"])
    with pytest.raises(ValueError, match="unknown arms"):
        digits_task(st.model, st.vae, "sr", x_test, x_tune, 0.05, 8, [0], [1.0], 0.1, 0.6, arms=("p2l",))
    with pytest.raises(ValueError, match="latents"):
        digits_task(st.model, st.vae, "sr", x_test, x_tune, 0.05, 8, [0], [1.0], 0.1, 0.6, arms=("oracle",))


def test_blur_adj_backprojects_with_the_adjoint():
    """blur_adj: the same matrix as blur, pinv replaced by Aᵀ (the official PSLD code's back-projection)."""
    blur, adj = make_operator("blur", 16), make_operator("blur_adj", 16)
    assert torch.equal(blur.matrix, adj.matrix)
    y = torch.randn(3, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(adj.pinv(y), adj.adjoint(y))
    assert not torch.allclose(adj.pinv(y), blur.pinv(y))
    assert torch.equal(adj.forward(y), blur.forward(y))
    with pytest.raises(ValueError, match="blur_adj"):
        make_operator("jpeg", 16)


def test_blur_adj_gluing_target_and_start_use_the_adjoint():
    """With blur_adj, PSLD's gluing target is Aᵀy + (I − AᵀA) x̂ and STSL's start is α E(Aᵀy) + σ ε (not A⁺)."""
    from papers.stsl.stsl import gluing_target

    g = torch.Generator().manual_seed(3)
    d = 8
    codec = LinearCodec(torch.randn(64, d, generator=g, dtype=torch.float64) / d**0.5)
    adj, blur = make_operator("blur_adj", 8), make_operator("blur", 8)
    a = adj.matrix.to(torch.float64)
    x = codec.decode(torch.randn(2, d, generator=g, dtype=torch.float64))
    y = adj.measure(x, 0.05, g)
    x_hat = torch.randn(2, 64, generator=g, dtype=torch.float64)
    problem = Problem(None, codec.decode, codec.encode, adj, y, 0.05)
    expected = y @ a + x_hat - (x_hat @ a.T) @ a  # rows: Aᵀy + (I − AᵀA) x̂
    assert torch.allclose(gluing_target(problem, x_hat), expected, atol=1e-10)
    pinv_problem = Problem(None, codec.decode, codec.encode, blur, y, 0.05)
    assert not torch.allclose(gluing_target(pinv_problem, x_hat), expected, atol=1e-3)

    class Zero:  # a network that predicts ε = 0: the start is then visible in the encoder's first input
        schedule = VPSchedule()

        def eps(self, z, t):
            return torch.zeros_like(z)

    seen = []

    def encode(xx):
        seen.append(xx.detach().clone())
        return codec.encode(xx)

    noise = torch.randn(2, d, generator=g, dtype=torch.float64)
    problem = Problem(Zero(), codec.decode, encode, adj, y, 0.05)
    sample(problem, "stsl_no_trace", noise, 1, init="measurement", t_start=0.6, step_size=0.0, gamma=0.0)
    assert torch.allclose(seen[0], y @ a, atol=1e-12)  # E is applied to Aᵀy


def test_per_digit_averages_the_seeds_of_each_digit():
    """digits_task's arrays are seed-major (images of seed 0, then seed 1): per_digit averages each digit's seeds."""
    import numpy as np

    from papers.stsl.experiments import per_digit

    vals = np.array([1.0, 2.0, 3.0, 3.0, 4.0, 5.0])  # 3 digits x 2 seeds
    assert np.allclose(per_digit(vals, 2), [2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="multiple"):
        per_digit(vals, 4)


def test_per_digit_difference_is_over_the_digits_not_the_pairs():
    """The paired intervals (README open (j)) are over the digits: n = n_images, the per-digit mean differences by
    hand, and duplicating the seeds (the same values again, as if each seed were re-drawn identically) leaves the
    interval unchanged, where an interval over the images x seeds pairs would shrink by about sqrt(2)."""
    import numpy as np

    from common import stats
    from papers.stsl.experiments import per_digit_difference

    rng = np.random.default_rng(0)
    n_images, n_seeds = 5, 2
    a = rng.normal(size=n_images * n_seeds)
    b = rng.normal(size=n_images * n_seeds)
    iv = per_digit_difference(a, b, n_seeds)
    d = (a - b).reshape(n_seeds, n_images).mean(0)  # seed-major: digit i's seeds are i, i + n_images, ...
    ref = stats.paired_difference(d, np.zeros(n_images))
    assert iv.n == n_images
    assert np.isclose(iv.estimate, d.mean()) and np.isclose(iv.lo, ref.lo) and np.isclose(iv.hi, ref.hi)
    twice = per_digit_difference(np.tile(a, 2), np.tile(b, 2), 2 * n_seeds)
    assert twice.n == n_images
    assert np.isclose(twice.lo, iv.lo) and np.isclose(twice.hi, iv.hi)
    pairs = stats.paired_difference(np.tile(a, 2), np.tile(b, 2))  # the old definition: shrinks with duplicates
    assert pairs.hi - pairs.lo < iv.hi - iv.lo
    with pytest.raises(ValueError, match="multiple"):
        per_digit_difference(a, b, 3)
