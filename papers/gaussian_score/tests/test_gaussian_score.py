"""Explained variance, sigma_hi, the teleportation bookkeeping, and teleportation on an exactly Gaussian model."""

import math

import pytest
import torch

from common.diffusion.samplers import heun_edm
from common.diffusion.schedule import VPSchedule
from common.diffusion.twins import ClassGaussianTwins, GaussianTwin
from papers.gaussian_score import (
    edm_grid,
    ev_profile,
    explained_variance,
    jump,
    jump_gap,
    log_sigma_grid,
    method_nfe,
    n_intervals,
    nfe_of,
    sigma_hi,
    skip_steps,
    skip_to_sigma,
    teleport_sample,
    trajectory_rel_rmse,
)

SCHEDULE = VPSchedule()


def gaussian_data(n=400, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return 0.3 + torch.randn(n, d, generator=g, dtype=torch.float64) @ a


def test_explained_variance_exact_values():
    ref = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert explained_variance(ref, ref) == 1.0
    assert explained_variance(ref, torch.zeros_like(ref)) == 0.0
    assert explained_variance(ref, 2 * ref) == pytest.approx(0.0)
    assert explained_variance(ref, 0.5 * ref) == pytest.approx(0.75)


def test_sigma_hi_takes_the_high_noise_run():
    sigmas = [0.1, 1.0, 10.0, 100.0]
    assert sigma_hi(sigmas, [0.995, 0.5, 0.991, 0.999]) == 10.0
    assert sigma_hi(sigmas, [0.1, 0.2, 0.3, 0.4]) == math.inf
    grid = log_sigma_grid(5, 0.01, 100.0)
    assert torch.allclose(grid, torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        log_sigma_grid(1)


def test_skip_and_nfe_bookkeeping():
    assert [skip_steps(f, 18) for f in (0.0, 0.1, 0.2, 0.3, 0.4)] == [0, 1, 3, 5, 7]
    assert skip_steps(0.2, 40) == 8
    ts = edm_grid(18, SCHEDULE)
    assert n_intervals(ts) == 19  # 18 EDM steps plus the final step to sigma = 0
    assert nfe_of("heun", n_intervals(ts)) == 37 and nfe_of("dpmpp2m", n_intervals(ts)) == 19
    assert skip_steps(0.2, 18) / n_intervals(ts) == pytest.approx(3 / 19)  # f = 0.2 skips 16 % of the steps
    methods = {"full": ("heun", None, ts, 0), "tele": ("heun", None, ts, 3), "matched": ("dpmpp2m", None, edm_grid(15, SCHEDULE), 0)}
    assert method_nfe(methods) == {"full": 37, "tele": 31, "matched": 16}
    assert skip_to_sigma(ts, SCHEDULE, 2.5) == 11 and float(SCHEDULE.edm_sigma(ts[11])) < 2.5 < float(SCHEDULE.edm_sigma(ts[10]))
    with pytest.raises(ValueError):
        nfe_of("heun", 0)
    with pytest.raises(ValueError):
        skip_steps(1.0, 10)
    with pytest.raises(ValueError):
        nfe_of("euler", 10)


def test_edm_grid_spans_the_model_range():
    ts = edm_grid(18, SCHEDULE)
    assert len(ts) == 20 and ts[0] == 1.0 and ts[-1] == 0.0
    assert float(SCHEDULE.edm_sigma(ts[-2])) == pytest.approx(0.01, rel=1e-3)


def test_twin_explains_itself_fully():
    twin = GaussianTwin.fit(gaussian_data(), SCHEDULE)
    ev = ev_profile(twin, {"self": twin}, gaussian_data(seed=1)[:64], log_sigma_grid(3, 0.1, 10.0))
    assert all(e == pytest.approx(1.0) for e in ev["self"])


def test_teleport_on_a_gaussian_model_matches_the_closed_form():
    """On an exactly Gaussian model, skipping with the closed form changes only the discretisation error."""
    twin = GaussianTwin.fit(gaussian_data(), SCHEDULE)
    x_T = torch.randn(32, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = edm_grid(60, SCHEDULE)
    exact = twin.ode_solution(x_T, 1.0, float(ts[-2]))
    x_end = heun_edm(twin, x_T, ts[:-1])
    tele = teleport_sample(twin, twin, x_T, ts[:-1], skip=20, solver="heun")
    err_full, err_tele = (x_end - exact).abs().max(), (tele - exact).abs().max()
    assert err_full < 2e-2 and err_tele < 2e-2
    assert err_tele <= err_full * 1.01  # the skipped part is exact, so the error cannot grow
    assert teleport_sample(twin, twin, x_T.float(), ts, 3, "dpmpp2m").shape == (32, 8)
    assert max(trajectory_rel_rmse(twin, twin, x_T, ts, 5)) < 1e-3
    with pytest.raises(ValueError):
        teleport_sample(twin, twin, x_T, ts, len(ts) - 2)


def test_baseline_twins_mean_only_and_isotropic():
    x = gaussian_data()
    mean_only = GaussianTwin.fit(x, SCHEDULE, covariance="zero")
    iso = GaussianTwin.fit(x, SCHEDULE, covariance="isotropic")
    full = GaussianTwin.fit(x, SCHEDULE)
    assert torch.all(mean_only.lam == 0) and torch.allclose(iso.lam, iso.lam.mean().expand(8))
    assert float(iso.lam.sum()) == pytest.approx(float(full.lam.sum()))
    x_t = torch.randn(5, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = 0.6
    a, s = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
    assert torch.allclose(mean_only.eps(x_t, t), (x_t - a * mean_only.mu) / s)  # "rescale around the mean"
    assert torch.allclose(mean_only.ode_solution(x_t, 0.9, t),
                          a * mean_only.mu + (s / SCHEDULE.sigma(0.9)) * (x_t - SCHEDULE.alpha(0.9) * mean_only.mu))
    lw = GaussianTwin.fit(x, SCHEDULE, covariance="ledoit_wolf")
    assert lw.lam.min() > full.lam.min()
    with pytest.raises(ValueError):
        GaussianTwin.fit(x, SCHEDULE, covariance="diag")


def test_class_gaussian_twins_apply_each_label_its_own_gaussian():
    x = torch.cat([gaussian_data(seed=0), gaussian_data(seed=1) + 2.0])
    y = torch.cat([torch.zeros(400, dtype=torch.long), torch.ones(400, dtype=torch.long)])
    twins = ClassGaussianTwins.fit(x, y, SCHEDULE)
    x_t = torch.randn(6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    out = jump(twins, x_t, 1.0, 0.5, labels)
    for c in (0, 1):
        rows = labels == c
        assert torch.allclose(out[rows], twins.twins[c].ode_solution(x_t[rows], 1.0, 0.5))
        assert torch.allclose(twins.eps(x_t, 0.5, labels)[rows], twins.twins[c].eps(x_t[rows], 0.5))
    assert torch.allclose(twins.means_for(labels)[1], twins.twins[1].mu)
    with pytest.raises(ValueError):
        twins.ode_solution(x_t, 1.0, 0.5)
    mean_twins = ClassGaussianTwins.fit(x, y, SCHEDULE, covariance="zero")
    centre = twins.means_for(labels)
    assert jump_gap(twins, twins, x_t, 1.0, 0.5, centre, labels) == 0.0
    assert jump_gap(twins, mean_twins, x_t, 1.0, 1e-3, centre, labels) > jump_gap(twins, mean_twins, x_t, 1.0, 0.95, centre, labels)


def test_training_dynamics_helpers():
    import numpy as np

    from common.diffusion.schedule import VPSchedule
    from common.diffusion.twins import GaussianTwin
    from papers.gaussian_score.training_dynamics import (
        copy_fraction,
        nn_distances,
        rel_error_to_twin,
        unpaired_ratio_of_means,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    schedule = VPSchedule()
    twin = GaussianTwin.fit(x, schedule)

    class TwinModel:  # the twin itself as a "model": relative error 0 (up to float32)
        def __init__(self, twin, scale=1.0):
            self.twin, self.schedule, self.scale = twin, schedule, scale

        def eps(self, x_t, t, y=None):
            return (self.scale * self.twin.eps(x_t.double(), t)).to(x_t.dtype)

    errs = rel_error_to_twin({"same": TwinModel(twin), "half": TwinModel(twin, 0.5)}, twin, x[:20], [0.1, 1.0, 10.0])
    assert errs["same"].shape == (20, 3) and errs["same"].max() < 1e-10
    np.testing.assert_allclose(errs["half"], 0.25, rtol=1e-5)  # ||0.5 e - e||^2 / ||e||^2
    d = nn_distances(torch.tensor([[0.0, 0.0], [5.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0], [5.0, 0.1]]))
    np.testing.assert_allclose(d[0], [1.0, 3.0])
    np.testing.assert_allclose(d[1, 0], 0.1, rtol=1e-6)
    assert copy_fraction(d) == 0.5  # 0.1 < 1/3 of the second distance; 1 is not < 1/3 of 3
    rng = np.random.default_rng(0)
    inside = [unpaired_ratio_of_means(rng.normal(2, 0.5, 40), rng.normal(2, 0.5, 60)) for _ in range(400)]
    coverage = np.mean([iv.lo <= 1.0 <= iv.hi for iv in inside])
    assert 0.91 <= coverage <= 0.99
    with pytest.raises(ValueError):
        unpaired_ratio_of_means([1.0], [1.0, 2.0])
