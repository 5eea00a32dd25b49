"""Unit tests: exact answers on small cases and invariants of the light-curve approximators."""

import math

import numpy as np
import pytest
import torch

from papers.light_curves import light_curves as lc


def test_bazin_exact_values():
    # at t = t0 the denominator is 2
    assert lc.bazin(10.0, 4.0, 10.0, 2.0, 20.0) == pytest.approx(2.0)
    t = np.array([0.0, 5.0, 30.0])
    expected = 3.0 * np.exp(-(t - 5.0) / 15.0) / (1 + np.exp(-(t - 5.0) / 1.5))
    np.testing.assert_allclose(lc.bazin(t, 3.0, 5.0, 1.5, 15.0), expected, rtol=1e-12)
    assert np.isfinite(lc.bazin(-1e4, 1.0, 0.0, 1.0, 10.0))  # no overflow far before t0
    with pytest.raises(ValueError, match="positive"):
        lc.bazin(0.0, 1.0, 0.0, 0.0, 1.0)


def test_planck_peak_follows_wien():
    wl = np.linspace(1000, 30000, 20001)
    peak = wl[np.argmax(lc.planck_shape(wl, 10000.0))]
    assert peak == pytest.approx(2.898e7 / 10000.0, rel=2e-3)  # Wien: λ_max T = 2.898e7 Å K


def test_simulated_curve_is_reproducible_and_consistent():
    a = lc.simulate_light_curve(0, "plasticc", np.random.default_rng(5))
    b = lc.simulate_light_curve(0, "plasticc", np.random.default_rng(5))
    np.testing.assert_array_equal(a.flux, b.flux)
    assert np.all(np.diff(a.t) >= 0)
    assert np.bincount(a.passband, minlength=6).min() >= 4
    z = (a.flux - a.true_flux(a.t, a.passband)) / a.flux_err  # the reported errors are the noise level
    assert abs(z.mean()) < 1.0 and 0.4 < z.std() < 1.8
    assert np.all(a.true_flux(a.t, a.passband) > 0)


def test_classes_differ_in_timescale():
    curves = lc.simulate_dataset(20, "ztf", random_state=1)
    fall = {k: [c.params["tau_fall"].mean() for c in curves if c.label == k] for k in (0, 1)}
    assert [c.label for c in curves[:4]] == [0, 1, 0, 1]
    assert max(fall[0]) < min(fall[1])


def test_binned_split_keeps_edges_and_whole_bins():
    t = np.sort(np.random.default_rng(0).uniform(0, 100, 80))
    test = lc.binned_train_test_split(t, bin_size=5.0, test_size=0.3, rng=1)
    bins = np.floor((t - t.min()) / 5).astype(int)
    assert not test[bins == bins.min()].any() and not test[bins == bins.max()].any()
    for b in np.unique(bins[test]):
        assert test[bins == b].all()  # whole bins
    assert round(0.3 * np.unique(bins).size) == np.unique(bins[test]).size
    two = lc.binned_train_test_split(t, bin_size=5.0, test_size=2, rng=1)  # the paper's final run: 2 bins
    assert np.unique(bins[two]).size == 2 and not two[bins == bins.min()].any()
    with pytest.raises(ValueError):
        lc.binned_train_test_split(t, bin_size=0.0)
    with pytest.raises(ValueError):
        lc.binned_train_test_split(t, test_size=0)


@pytest.fixture(scope="module")
def curve():
    return lc.simulate_light_curve(0, "ztf", np.random.default_rng(3))


@pytest.mark.parametrize("name,kwargs", [("gp", {}), ("mlp_sklearn", {}), ("mlp_sklearn_torch", {"max_iter": 90}), ("mlp_torch", {"n_epochs": 50}),
                                         ("bnn", {"n_epochs": 50}), ("nf", {"n_epochs": 20})])
def test_approximators_fit_predict_shapes(curve, name, kwargs):
    model = lc.make_approximator(name, 0, **kwargs)
    model.fit(curve.t, curve.flux, curve.flux_err, curve.log_lam)
    mean, std = model.predict(curve.t[:7], curve.log_lam[:7])
    assert mean.shape == std.shape == (7,) and np.all(np.isfinite(mean)) and np.all(std > 0)
    grid, m, s = model.augment(curve, n_grid=16)
    assert grid.shape == (16,) and m.shape == s.shape == (2, 16)
    assert model.fit_seconds >= 0


def test_gp_and_mlp_fit_a_smooth_curve(curve):
    for name in ("gp", "mlp_sklearn"):
        model = lc.make_approximator(name, 0).fit(curve.t, curve.flux, curve.flux_err, curve.log_lam)
        mean, _ = model.predict(curve.t, curve.log_lam)
        truth = curve.true_flux(curve.t, curve.passband)
        assert np.sqrt(np.mean((mean - truth) ** 2)) < 0.15 * truth.max()


def test_unknown_approximator_and_bad_inputs():
    with pytest.raises(ValueError, match="unknown approximator"):
        lc.make_approximator("svm")
    with pytest.raises(ValueError, match="equal length"):
        lc.make_approximator("gp").fit([1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 1.0], [3.0, 3.0])


def test_mlp_objective_matches_sklearn_training_error(curve):
    """Our torch L-BFGS MLP and scikit-learn's MLPRegressor minimise the same objective: similar fits."""
    from sklearn.neural_network import MLPRegressor

    ours = lc.MLPApproximator(0, max_iter=300).fit(curve.t, curve.flux, curve.flux_err, curve.log_lam)
    x, y = ours._sx(np.column_stack([curve.t, curve.log_lam])), ours._sy(curve.flux)
    errs = []
    for seed in range(3):
        sk = MLPRegressor(hidden_layer_sizes=(20, 20), activation="tanh", solver="lbfgs", max_iter=300, alpha=0.1, random_state=seed)
        errs.append(np.sqrt(np.mean((sk.fit(x, y).predict(x) - y) ** 2)))
    assert ours.train_rmse < 3 * max(errs) + 0.05
    lib = lc.make_approximator("mlp_sklearn", 0)  # the library at the paper's settings
    assert (lib.hidden, lib.alpha, lib.max_iter) == ((20, 20), 0.1, 900)


def test_coupling_layer_inverse_and_log_det():
    torch.manual_seed(0)
    layer = lc.AffineCoupling(torch.tensor([1, 0]), cond_size=3, hidden=10)
    z, c = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    layer = layer.double()
    y, log_det = layer(z, c)
    torch.testing.assert_close(layer.inverse(y, c), z)
    for i in range(5):
        ci = c[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, ci=ci: layer(v[None], ci)[0][0], z[i])
        assert log_det[i].item() == pytest.approx(torch.logdet(jac).item(), abs=1e-10)


def test_flow_log_prob_normalised_in_one_dimension_slice():
    """∫∫ p(v | c) dv = 1 on a grid (a 2-D density from the change of variables)."""
    torch.manual_seed(1)
    flow = lc.ConditionalRealNVP(2, 3, n_layers=4, hidden=5).double()
    g = torch.linspace(-8, 8, 321, dtype=torch.float64)
    v = torch.cartesian_prod(g, g)
    c = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64).expand(len(v), 3)
    with torch.no_grad():
        mass = flow.log_prob(v, c).exp().sum() * (g[1] - g[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=0.01)


def test_bayes_linear_kl_matches_torch_distributions():
    torch.manual_seed(2)
    layer = lc.BayesLinear(3, 2, prior_sigma=0.1)
    with torch.no_grad():
        layer.w_log_sigma.uniform_(-3, -1)
    q = torch.distributions.Normal(torch.cat([layer.w_mu.flatten(), layer.b_mu]),
                                   torch.cat([layer.w_log_sigma.flatten(), layer.b_log_sigma]).exp())
    p = torch.distributions.Normal(0.0, 0.1)
    expected = torch.distributions.kl_divergence(q, p).sum()
    assert layer.kl().item() == pytest.approx(expected.item(), rel=1e-6)


def test_calibration_gap_interval_sign():
    gp = np.full(30, 0.68) + np.random.default_rng(0).normal(0, 0.05, 30)
    mlp = np.full(30, 0.40) + np.random.default_rng(1).normal(0, 0.05, 30)
    iv = lc.calibration_gap_interval(mlp, gp, 0.68)
    assert iv.lo > 0 and iv.estimate == pytest.approx(abs(mlp.mean() - 0.68) - abs(gp.mean() - 0.68))


def test_benchmark_pairs_methods_on_the_same_curves():
    curves = lc.simulate_dataset(2, "ztf", random_state=4)
    res = lc.run_regression_benchmark(curves, {"gp": {}, "mlp_sklearn": {}}, random_state=4)
    assert set(res) == {"gp", "mlp_sklearn"} and res["gp"]["nlpd"].shape == (2,)
    again = lc.run_regression_benchmark(curves, {"gp": {}}, random_state=4)
    np.testing.assert_allclose(res["gp"]["rmse"], again["gp"]["rmse"])


def test_true_peak_time_of_single_band_bazin():
    """For one band the Bazin maximum is at t0 + τr·ln(τf/τr - 1)."""
    c = lc.simulate_light_curve(1, "ztf", np.random.default_rng(9))
    c.params = {**c.params, "amplitude": np.array([1.0, 0.0])}
    t0, tr, tf = c.params["t0"][0], c.params["tau_rise"], c.params["tau_fall"][0]
    expected = t0 + tr * math.log(tf / tr - 1)
    assert lc.true_peak_time(c, n_fine=20001) == pytest.approx(np.clip(expected, c.t_min, c.t_max), abs=0.05)


def test_cross_val_cnn_learns_a_trivial_task():
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 2
    images = rng.normal(0, 0.1, size=(24, 2, 32)).astype(np.float32)
    images[labels == 1, 0, 10:20] += 1.0  # a bump in class 1
    prob = lc.cross_val_cnn(images, labels, "classify", n_folds=3, n_epochs=150, random_state=0)
    assert prob.shape == (24,) and ((prob > 0.5) == labels).mean() > 0.9
    with pytest.raises(ValueError, match="task"):
        lc.cross_val_cnn(images, labels, "cluster")


def test_bootstrap_difference_of_identical_scores_is_zero():
    labels = np.arange(20) % 2
    scores = np.linspace(0, 1, 20)
    from common import regression_metrics as rm

    iv = lc.bootstrap_difference(rm.pr_auc, scores, scores, labels=labels, n_resamples=200)
    assert iv.estimate == 0 and iv.lo == 0 and iv.hi == 0


def test_bootstrap_difference_detects_a_better_score():
    from common import regression_metrics as rm

    labels = np.arange(40) % 2
    good = labels + np.random.default_rng(1).normal(0, 0.1, 40)
    bad = np.random.default_rng(2).normal(size=40)
    iv = lc.bootstrap_difference(rm.pr_auc, good, bad, labels=labels, n_resamples=300)
    assert iv.estimate == pytest.approx(rm.pr_auc(labels, good) - rm.pr_auc(labels, bad)) and iv.lo > 0
