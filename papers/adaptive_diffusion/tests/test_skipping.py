import numpy as np
import pytest
import torch

from common.diffusion import ddim, dpm_solver_pp_2m, load_digits_eps, time_grid
from papers.adaptive_diffusion import (
    ThirdOrderEstimator,
    adaptive_sample,
    called_subgrid,
    matched_baselines,
    max_consecutive_skips,
    random_schedule,
    scheduled_sample,
    uniform_schedule,
)
from papers.adaptive_diffusion.experiment import delta_key, label_anova, within_label_std


@pytest.fixture(scope="module")
def model():
    return load_digits_eps("ci")


@pytest.fixture(scope="module")
def batch():
    x = torch.randn(12, 64, generator=torch.Generator().manual_seed(3))
    return x, torch.arange(12) % 10


def test_uniform_schedule_exact():
    assert torch.nonzero(uniform_schedule(10, 5)).flatten().tolist() == [0, 2, 4, 6, 8]
    assert torch.nonzero(uniform_schedule(10, 3)).flatten().tolist() == [0, 3, 6]
    assert uniform_schedule(7, 7).all()
    assert uniform_schedule(50, 1).sum() == 1 and uniform_schedule(50, 1)[0]
    with pytest.raises(ValueError):
        uniform_schedule(10, 0)
    with pytest.raises(ValueError):
        uniform_schedule(10, 11)


def test_random_schedule_count_and_warmup():
    rng = np.random.default_rng(0)
    for k in (1, 3, 4, 9, 50):
        s = random_schedule(50, k, rng)
        assert int(s.sum()) == k and s[: min(4, k)].all()


def test_estimator_linear_trajectory_skips_with_official_forcing():
    # z_k = k^2: d_k = 2k - 1 is linear, the third-order difference is exactly 0 -> every test says "stable"
    est = ThirdOrderEstimator(threshold=0.0, max_skip_steps=4)
    z = [torch.full((1, 3), float(k * k)) for k in range(40)]
    est.diffs = [est.mean_abs_diff(z[2], z[1]), est.mean_abs_diff(z[3], z[2])]
    decisions = [bool(est.call_next(z[k + 1], z[k])) for k in range(3, 20)]
    # no forcing while len(mask) <= 4: five skips, then a forced call after every 4 skips
    assert decisions[:12] == [False] * 5 + [True] + [False] * 4 + [True] + [False]


def test_estimator_rule_exact():
    est = ThirdOrderEstimator(threshold=0.1, max_skip_steps=4)
    prev_prev, prev = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    # |(cur + 1)/2 - 1| <= 0.1  <=>  0.8 <= cur <= 1.2
    assert est.stable(torch.tensor([1.19, 1.21]), prev, prev_prev).tolist() == [True, False]
    assert est.stable(torch.tensor([0.81, 0.79]), prev, prev_prev).tolist() == [True, False]
    with pytest.raises(ValueError):
        ThirdOrderEstimator(threshold=-1)
    with pytest.raises(ValueError):
        ThirdOrderEstimator(max_skip_steps=0)


def test_all_calls_equal_the_plain_solvers(model, batch):
    x, y = batch
    ts = time_grid(12, "uniform_t")
    with torch.no_grad():
        full = torch.ones(12, dtype=torch.bool)
        assert torch.allclose(scheduled_sample(model, x, ts, full, y, "ddim").x, ddim(model, x, ts, y), atol=1e-6)
        assert torch.allclose(scheduled_sample(model, x, ts, full, y, "dpmpp_2m").x, dpm_solver_pp_2m(model, x, ts, y), atol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_adaptive_replays_as_fixed_schedule_and_counts_nfe(model, batch, solver):
    x, y = batch
    ts = time_grid(30, "uniform_t")
    with torch.no_grad():
        model.reset_nfe()
        run = adaptive_sample(model, x, ts, y, threshold=0.02, solver=solver)
        assert model.reset_nfe() == int(run.calls.any(0).sum())  # batched calls: steps where any sample calls
        assert torch.equal(run.nfe, run.calls.sum(1))
        assert run.calls[:, :4].all() and max_consecutive_skips(run.calls) <= 5
        assert run.nfe.min() < 30  # something was skipped
        replay = scheduled_sample(model, x, ts, run.calls, y, solver)
    assert torch.allclose(replay.x, run.x, atol=1e-6)


def test_decisions_are_per_sample(model, batch):
    x, y = batch
    ts = time_grid(30, "uniform_t")
    with torch.no_grad():
        together = adaptive_sample(model, x, ts, y)
        for b in (0, 5, 11):
            alone = adaptive_sample(model, x[b:b + 1], ts, y[b:b + 1])
            assert torch.equal(alone.calls[0], together.calls[b])


def test_ddim_reuse_equals_subgrid(model, batch):
    x, y = batch
    ts = time_grid(30, "uniform_t")
    with torch.no_grad():
        run = adaptive_sample(model, x[:3], ts, y[:3], threshold=0.02)
        for b in range(3):
            sub = ddim(model, x[b:b + 1], called_subgrid(ts, run.calls[b]), y[b:b + 1])
            assert torch.allclose(sub, run.x[b:b + 1], atol=1e-5)


def test_matched_baselines_spend_exactly_the_nfe(model, batch):
    x, y = batch
    ts = time_grid(20, "uniform_t")
    nfe = torch.tensor([5, 5, 7, 20, 1, 9, 9, 9, 12, 5, 6, 7])
    with torch.no_grad():
        out = matched_baselines(model, x, ts, nfe, y, rng=np.random.default_rng(0))
        for name, run in out.items():
            assert torch.equal(run.nfe, nfe), name
        # NFE = N: every method is the full-step solver
        assert torch.allclose(out["uniform"].x[3], ddim(model, x[3:4], ts, y[3:4])[0], atol=1e-6)
    with pytest.raises(ValueError):
        matched_baselines(model, x, ts, torch.zeros(12, dtype=torch.long), y)


def test_helpers():
    assert delta_key(0.01) == "d0p01" and delta_key(0.005) == "d0p005"
    nfe = torch.tensor([10, 12, 10, 12, 20, 22])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert within_label_std(nfe, labels) == pytest.approx(np.sqrt(6 / 3))
    f, p = label_anova(nfe, labels)
    assert f > 1 and 0 <= p < 0.05
    assert np.isnan(label_anova(torch.tensor([3, 3, 3, 3]), torch.tensor([0, 0, 1, 1]))[0])
    assert max_consecutive_skips(torch.tensor([True, False, False, True, False])) == 2


def test_ddim_rowwise_equals_ddim_per_row(model, batch):
    from papers.adaptive_diffusion import ddim_rowwise

    x, y = batch
    grids = [time_grid(k, "uniform_t") for k in (3, 7, 7, 1, 12, 5, 9, 2, 4, 6, 8, 10)]
    with torch.no_grad():
        model.reset_nfe()
        out = ddim_rowwise(model, x, grids, y)
        assert model.reset_nfe() == 12  # batched calls = the longest grid
        for b in range(12):
            # one step from t = 1 divides by alpha_1 ~ 6e-3: float32 rounding of the coefficients shows at 1e-4
            tol = 1e-3 if len(grids[b]) <= 3 else 2e-5
            assert torch.allclose(out[b:b + 1], ddim(model, x[b:b + 1], grids[b], y[b:b + 1]), atol=tol)


# --- SD's grid mapped by log-SNR, against diffusers' schedulers built offline from the pipelines' configs ------


# The SD grids' agreement with diffusers is tested once, in tests/common/test_diffusion_grids.py.


def test_frozen_test_on_a_linear_grid_is_always_stable():
    from common.diffusion.schedule import VPSchedule
    from papers.adaptive_diffusion import frozen_test_stable

    class Linear:  # alpha, sigma linear in t: every move is the same, the third-order difference is 0
        def alpha(self, t):
            return 1 - 0.5 * t

        def sigma(self, t):
            return 0.1 + t

    ts = torch.linspace(1, 0.1, 21, dtype=torch.float64)
    out = frozen_test_stable(Linear(), ts, torch.randn(3, 8), torch.randn(3, 8), 1e-9)
    assert not out[:, :4].any() and out[:, 4:].all()  # decisions start at step 4
    sd = frozen_test_stable(VPSchedule(), make_sd(), torch.randn(3, 8), torch.randn(3, 8))
    assert sd.shape == (3, 50)


def make_sd():
    from common.diffusion.schedule import VPSchedule
    from papers.adaptive_diffusion.grids import sd_grid

    return sd_grid(VPSchedule(), 50)


# --- the call counter ---------------------------------------------------------------------------------


def test_call_counter_counts_each_sample(model, batch):
    from papers.adaptive_diffusion import CallCounter

    x, y = batch
    ts = time_grid(20, "uniform_t")
    counter = CallCounter(model, y, 12)
    ids = torch.arange(12)
    with torch.no_grad():
        run = adaptive_sample(counter, x, ts, ids, threshold=0.02)
        assert torch.equal(counter.take(), run.nfe)
        plain = adaptive_sample(model, x, ts, y, threshold=0.02)
        assert torch.equal(run.x, plain.x)  # the wrapper passes the true labels
        nfe = torch.tensor([5, 5, 7, 20, 1, 9, 9, 9, 12, 5, 6, 7])
        for solver in ("ddim", "dpmpp_2m"):
            out = matched_baselines(counter, x, ts, nfe, ids, solver=solver, rng=np.random.default_rng(0))
            for name, r in out.items():
                assert torch.equal(r.counted, nfe), (solver, name)
        # it can fail: a sampler that spends extra calls on some rows is caught
        ddim(counter, x[:3], ts, ids[:3])
        assert counter.take().tolist() == [20, 20, 20] + [0] * 9
