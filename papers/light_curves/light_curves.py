"""Neural-network approximation of multi-band transient light curves (Demianenko et al. 2023, A&A 677, A16).

A light curve is a set of irregular observations ``(t_i, λ_i, f_i, σ_i)``: time, passband (its
effective wavelength), flux and flux error. Every approximation method of the paper is a regressor
of flux on the two inputs ``x = (t, log10 λ)`` — one model per light curve, fitted on that curve's
observations alone — that returns a predictive mean ``μ(x)`` and a standard deviation ``s(x)``. From
it a curve is *augmented*: predicted on a regular grid in every passband (Section 3, the Fulu API
``fit / predict / augmentation``). Inputs and flux are standardised per curve before fitting.

Methods (Section 3). Hyper-parameters are those of the paper's final run (the official notebook
``Regression_plasticc.ipynb`` of HSE-LAMBDA/light_curve_approx, which produced Table 2), not the
constructor defaults of the released ``fulu`` 0.1.2 library:

- **GP** (baseline, Section 3.1): a standard Gaussian process with kernel
  ``C·RBF(ℓ_t, ℓ_λ) + White`` (Eq. 1–2), hyper-parameters by maximum marginal likelihood with 5
  restarts; ``s(x)`` is the predictive standard deviation of an observation (white noise
  included). Implemented with scikit-learn's ``GaussianProcessRegressor``.
- **MLP (sklearn)**: scikit-learn's ``MLPRegressor`` (as fulu's ``MLPRegressionAugmentation``), two
  tanh hidden layers (20, 20), squared loss with an L2 penalty ``α = 0.1``, at most 900 L-BFGS
  iterations. ``s(x)`` is constant: the root mean squared training residual. The same network and
  objective in torch (:class:`MLPApproximator`, ``mlp_sklearn_torch``) is kept as a tested
  re-implementation; the notebooks run the library, as the paper did.
- **MLP (pytorch)**: one tanh hidden layer of 20 units, Adam (lr 0.1, weight decay 1e-3, 100 epochs)
  on the mean squared error; ``s(x)`` as above.
- **BNN** (Section 3.3): the same one-hidden-layer net with Bayes-by-backprop layers (Blundell et
  al. 2015): every weight is ``w = m + e^ρ ε``, ``ε ~ N(0, 1)``, trained on
  ``MSE + κ · KL(q(w) ‖ N(0, σ_p²))`` (Eq. 5, κ = 1e-4, σ_p = 0.1; Adam lr 0.01, weight decay 1e-3,
  1000 epochs); ``μ, s`` are the mean and standard deviation of 100 predictions with fresh weights.
- **NF** (Section 3.4): a conditional normalizing flow (RealNVP, Dinh et al. 2017) of the pair
  ``(y, ξ)`` — the standardised flux and an auxiliary N(0,1) variable that makes the flow 2-D —
  given ``(x, η)`` with a further noise input ``η ~ N(0, 1)``. Eight affine coupling layers
  (Eq. 6–7) ``z_B ← z_B ⊙ exp(s(z_A, c)) + t(z_A, c)`` alternate the masked half; ``s, t`` are
  one-hidden-layer tanh nets of width 10. Training maximises ``log p(y, ξ | c) = log N(g(y, ξ)) +
  Σ s`` on flux re-sampled as ``y ~ N(f_i, σ_i²)`` every step (the flux errors enter as data
  augmentation); Adam lr 0.01, weight decay 0.01, 1000 epochs, batches of 500; ``μ, s`` are the mean
  and standard deviation of 100 samples.

Synthetic data (our stand-in for PLAsTiCC / ZTF BTS, which are not available offline):
:func:`simulate_light_curve` draws a Bazin-profile transient (Bazin et al. 2009)

    f_b(t) = A_b · exp(-(t - t0_b)/τ_fall,b) / (1 + exp(-(t - t0_b)/τ_rise))

in every passband ``b``, with amplitudes from a black body of temperature ``T`` at the band's
wavelength, a fall time that grows with wavelength and a peak that comes later in redder bands.
Two classes differ in their priors: "Ia-like" (fast rise and fall, hot) and "II-like" (slow,
long-lived, cooler). Observations come on irregular nights, each band observed with probability
0.7 per night, with heteroscedastic Gaussian noise ``σ_i² = σ_floor² + (0.05 f_i)²`` whose value
is reported as the flux error. The noiseless curve is kept, so accuracy is measured against the
truth as well as against held-out noisy observations.

Evaluation (Section 4): :func:`binned_train_test_split` holds out random 5-day bins of a curve
(two of them in the paper's final run; the first and last bins stay in the training part, so the
test points lie inside the observed range); each method is fitted on the rest and predicts the
held-out points.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.neural_network import MLPRegressor
from torch import nn

from common import regression_metrics as rm

# Effective wavelengths in Å: LSST ugrizy as in the fulu README, ZTF g and r.
PASSBANDS = {
    "plasticc": {"u": 3751.36, "g": 4741.64, "r": 6173.23, "i": 7501.62, "z": 8679.19, "y": 9711.53},
    "ztf": {"g": 4741.64, "r": 6173.23},
}
CLASS_NAMES = ("Ia-like", "II-like")
_H_C_OVER_K = 1.4388e8  # h c / k_B in Å·K


# ----------------------------------------------------------------------------------------------
# Synthetic light curves
# ----------------------------------------------------------------------------------------------


def bazin(t, amplitude, t0, tau_rise, tau_fall):
    """Bazin et al. (2009) profile ``A e^{-(t-t0)/τf} / (1 + e^{-(t-t0)/τr})``."""
    if np.any(np.asarray(tau_rise) <= 0) or np.any(np.asarray(tau_fall) <= 0):
        raise ValueError("tau_rise and tau_fall must be positive")
    dt = np.asarray(t, dtype=float) - t0
    # log-sum-exp form, overflow-free for any t
    return amplitude * np.exp(-dt / tau_fall - np.logaddexp(0.0, -dt / tau_rise))


def planck_shape(wavelength, temperature):
    """Black-body spectral radiance B_λ(T) up to a constant: ``λ^-5 / (exp(hc/λkT) - 1)``."""
    wl = np.asarray(wavelength, dtype=float)
    return wl**-5.0 / np.expm1(_H_C_OVER_K / (wl * temperature))


@dataclass
class LightCurve:
    """One synthetic transient: observations and the parameters of its noiseless curve."""

    t: np.ndarray  # observation times (days)
    flux: np.ndarray  # noisy flux
    flux_err: np.ndarray  # reported 1σ error (the true noise level)
    passband: np.ndarray  # band index per observation
    wavelengths: np.ndarray  # Å, per band index
    label: int  # 0 = Ia-like, 1 = II-like
    params: dict = field(default_factory=dict)  # per-band Bazin parameters

    @property
    def log_lam(self) -> np.ndarray:
        return np.log10(self.wavelengths[self.passband])

    def true_flux(self, t, passband) -> np.ndarray:
        """The noiseless flux at times ``t`` in bands ``passband`` (arrays of equal length)."""
        t, passband = np.asarray(t, dtype=float), np.asarray(passband, dtype=int)
        p = self.params
        return bazin(t, p["amplitude"][passband], p["t0"][passband], p["tau_rise"], p["tau_fall"][passband])

    @property
    def t_min(self) -> float:
        return float(self.t.min())

    @property
    def t_max(self) -> float:
        return float(self.t.max())


def simulate_light_curve(label: int, survey: str = "ztf", rng: np.random.Generator | None = None,
                         band_probability: float = 0.7, min_per_band: int = 4) -> LightCurve:
    """Draw one Bazin-profile transient of class ``label`` observed on an irregular cadence."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (Ia-like) or 1 (II-like), got {label}")
    if survey not in PASSBANDS:
        raise ValueError(f"survey must be one of {sorted(PASSBANDS)}, got {survey!r}")
    if not 0 < band_probability <= 1:
        raise ValueError("band_probability must be in (0, 1]")
    rng = np.random.default_rng(rng)
    wl = np.array(list(PASSBANDS[survey].values()))
    n_bands = wl.size
    if label == 0:  # Ia-like: fast, hot, cooling
        tau_rise, tau_fall, temperature = rng.uniform(1.0, 3.0), rng.uniform(12.0, 30.0), rng.uniform(9000, 15000)
    else:  # II-like: slow rise, long plateau-like decline, cool
        tau_rise, tau_fall, temperature = rng.uniform(3.0, 7.0), rng.uniform(45.0, 100.0), rng.uniform(5000, 9000)
    peak_amplitude = 10 ** rng.uniform(2.0, 3.0)
    sed = planck_shape(wl, temperature)
    amplitude = peak_amplitude * sed / sed.max()
    lam_ratio = wl / 6000.0
    tau_fall_b = tau_fall * lam_ratio ** rng.uniform(0.2, 0.6)  # redder bands decline slower
    t0 = rng.uniform(50.0, 70.0)
    t0_b = t0 + rng.uniform(1.0, 4.0) * np.log2(lam_ratio)  # redder bands peak later
    start, stop = t0 - 3.0 * tau_rise - rng.uniform(0, 3), t0 + min(2.5 * tau_fall, 150.0)
    noise_floor = rng.uniform(0.01, 0.03) * peak_amplitude
    params = {"amplitude": amplitude, "t0": t0_b, "tau_rise": tau_rise, "tau_fall": tau_fall_b,
              "temperature": temperature}
    for _ in range(100):
        nights = start + np.cumsum(rng.uniform(1.0, 5.0, size=200))
        nights = nights[nights <= stop]
        observed = rng.random((nights.size, n_bands)) < band_probability
        if observed.sum(axis=0).min() >= min_per_band:
            break
    else:  # pragma: no cover - needs an absurd band_probability
        raise RuntimeError("could not draw a cadence with enough observations per band")
    night_idx, passband = np.nonzero(observed)
    t = nights[night_idx] + rng.normal(0.0, 0.05, size=night_idx.size)  # bands a few hours apart
    truth = bazin(t, amplitude[passband], t0_b[passband], tau_rise, tau_fall_b[passband])
    flux_err = np.sqrt(noise_floor**2 + (0.05 * truth) ** 2)
    flux = truth + flux_err * rng.standard_normal(t.size)
    order = np.argsort(t, kind="stable")
    return LightCurve(t[order], flux[order], flux_err[order], passband[order], wl, label, params)


def simulate_dataset(n_objects: int, survey: str = "ztf", random_state: int = 0) -> list[LightCurve]:
    """``n_objects`` curves with alternating labels (balanced classes); curve ``i`` uses seed ``(random_state, i)``."""
    if n_objects < 1:
        raise ValueError("n_objects must be positive")
    return [simulate_light_curve(i % 2, survey, np.random.default_rng([random_state, i])) for i in range(n_objects)]


def binned_train_test_split(t, bin_size: float = 5.0, test_size: float | int = 2, rng=None):
    """Boolean test mask holding out whole time bins of width ``bin_size`` (Section 4.1).

    Bins are counted from the first observation; the first and the last occupied bins stay in the
    training part. As in the official ``binned_train_test_split``, an integer ``test_size`` is the
    number of held-out bins (the paper's final run holds out 2) and a float in (0, 1) a fraction:
    ``round(test_size · n_bins)`` of the other occupied bins, drawn uniformly.
    """
    is_count = isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool)
    if bin_size <= 0 or (is_count and test_size < 1) or (not is_count and not 0 < test_size < 1):
        raise ValueError("bin_size must be positive and test_size a count >= 1 or a fraction in (0, 1)")
    t = np.asarray(t, dtype=float)
    rng = np.random.default_rng(rng)
    bins = np.floor((t - t.min()) / bin_size).astype(int)
    occupied = np.unique(bins)
    inner = occupied[1:-1]
    wanted = int(test_size) if is_count else int(round(test_size * occupied.size))
    n_test = min(wanted, inner.size)
    if n_test < 1:
        raise ValueError("too few occupied bins to hold any out")
    test_bins = rng.choice(inner, size=n_test, replace=False)
    return np.isin(bins, test_bins)


# ----------------------------------------------------------------------------------------------
# Regressors: fit(t, flux, flux_err, log_lam) then predict(t, log_lam) -> (mean, std)
# ----------------------------------------------------------------------------------------------


class _Standardizer:
    def __init__(self, values):
        values = np.asarray(values, dtype=float)
        self.mean, self.scale = values.mean(axis=0), values.std(axis=0)
        self.scale = np.where(self.scale > 0, self.scale, 1.0)

    def __call__(self, values):
        return (np.asarray(values, dtype=float) - self.mean) / self.scale

    def inverse(self, values):
        return np.asarray(values, dtype=float) * self.scale + self.mean


class Approximator:
    """Common fit/predict plumbing: standardise ``x = (t, log10 λ)`` and the flux per curve."""

    name = "base"

    def __init__(self, random_state: int = 0):
        self.random_state = int(random_state)

    def fit(self, t, flux, flux_err, log_lam):
        t, flux, flux_err, log_lam = (np.asarray(a, dtype=float) for a in (t, flux, flux_err, log_lam))
        if not (t.shape == flux.shape == flux_err.shape == log_lam.shape) or t.ndim != 1:
            raise ValueError("t, flux, flux_err and log_lam must be 1-D arrays of equal length")
        if t.size < 3:
            raise ValueError("need at least 3 observations")
        x = np.column_stack([t, log_lam])
        self._sx, self._sy = _Standardizer(x), _Standardizer(flux)
        start = time.process_time()
        self._fit(self._sx(x), self._sy(flux), flux_err / self._sy.scale)
        self.fit_seconds = time.process_time() - start
        return self

    def predict(self, t, log_lam):
        """Predictive mean and standard deviation of the flux at ``(t, log_lam)``."""
        x = self._sx(np.column_stack([np.asarray(t, dtype=float), np.asarray(log_lam, dtype=float)]))
        mean, std = self._predict(x)
        return self._sy.inverse(mean), np.asarray(std) * self._sy.scale

    def augment(self, curve: LightCurve, n_grid: int = 128):
        """Flux on a regular grid of ``n_grid`` times in every band: arrays (n_bands, n_grid)."""
        grid = np.linspace(curve.t_min, curve.t_max, n_grid)
        n_bands = curve.wavelengths.size
        t = np.tile(grid, n_bands)
        log_lam = np.repeat(np.log10(curve.wavelengths), n_grid)
        mean, std = self.predict(t, log_lam)
        return grid, mean.reshape(n_bands, n_grid), std.reshape(n_bands, n_grid)


class GaussianProcessApproximator(Approximator):
    """Standard GP baseline (scikit-learn): ``C·RBF([ℓ_t, ℓ_λ]) + White``, 5 restarts (Eq. 1–2)."""

    name = "gp"

    def __init__(self, random_state: int = 0, n_restarts: int = 5):
        super().__init__(random_state)
        self.n_restarts = n_restarts

    def _fit(self, x, y, y_err):
        kernel = ConstantKernel(1.0) * RBF([1.0, 1.0]) + WhiteKernel()
        self.gp = GaussianProcessRegressor(kernel=kernel, n_restarts_optimizer=self.n_restarts,
                                           normalize_y=True, random_state=self.random_state)
        self.gp.fit(x, y)

    def _predict(self, x):
        return self.gp.predict(x, return_std=True)


def _mlp(sizes, activation=nn.Tanh):
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class _PointNetApproximator(Approximator):
    """A deterministic net; ``s(x)`` = root mean squared training residual (as fulu does)."""

    def _predict(self, x):
        with torch.no_grad():
            mean = self.net(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).double().numpy()
        return mean, np.full_like(mean, self.train_rmse)

    def _finish(self, x, y):
        with torch.no_grad():
            mean = self.net(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).double().numpy()
        self.train_rmse = max(float(np.sqrt(np.mean((mean - y) ** 2))), 1e-6)


class MLPApproximator(_PointNetApproximator):
    """'MLP (sklearn)' re-implemented in torch: tanh (20, 20), squared loss + L2 α, full-batch L-BFGS.

    Same network and objective as :class:`SklearnMLPApproximator` (tested against it); not run by the
    notebooks, which use the library the paper used.
    """

    name = "mlp_sklearn_torch"

    def __init__(self, random_state: int = 0, hidden=(20, 20), alpha: float = 0.1, max_iter: int = 900):
        super().__init__(random_state)
        self.hidden, self.alpha, self.max_iter = tuple(hidden), float(alpha), int(max_iter)

    def _fit(self, x, y, y_err):
        torch.manual_seed(self.random_state)
        self.net = _mlp((2, *self.hidden, 1)).double()
        X, Y = torch.as_tensor(x), torch.as_tensor(y)
        weights = [m.weight for m in self.net if isinstance(m, nn.Linear)]
        opt = torch.optim.LBFGS(self.net.parameters(), lr=1.0, max_iter=self.max_iter, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-5, tolerance_change=1e-9)

        def closure():  # scikit-learn's objective: ½ mean squared error + α/(2n) Σ W²
            opt.zero_grad()
            loss = 0.5 * ((self.net(X).squeeze(-1) - Y) ** 2).mean()
            loss = loss + self.alpha / (2 * len(Y)) * sum((w**2).sum() for w in weights)
            loss.backward()
            return loss

        opt.step(closure)
        self.net = self.net.float()
        self._finish(x, y)


class SklearnMLPApproximator(Approximator):
    """'MLP (sklearn)': scikit-learn's ``MLPRegressor``, tanh (20, 20), L-BFGS, α = 0.1, 900 iterations.

    The method of the paper (fulu's ``MLPRegressionAugmentation``) at its final-run settings.
    """

    name = "mlp_sklearn"

    def __init__(self, random_state: int = 0, hidden=(20, 20), alpha: float = 0.1, max_iter: int = 900):
        super().__init__(random_state)
        self.hidden, self.alpha, self.max_iter = tuple(hidden), float(alpha), int(max_iter)

    def _fit(self, x, y, y_err):
        self.reg = MLPRegressor(hidden_layer_sizes=self.hidden, activation="tanh", solver="lbfgs",
                                alpha=self.alpha, max_iter=self.max_iter, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.reg.fit(x, y)
        self.train_rmse = max(float(np.sqrt(np.mean((self.reg.predict(x) - y) ** 2))), 1e-6)

    def _predict(self, x):
        mean = self.reg.predict(x)
        return mean, np.full_like(mean, self.train_rmse)


class SingleLayerApproximator(_PointNetApproximator):
    """'MLP (pytorch)': one tanh hidden layer, Adam (with weight decay) on the mean squared error, batches of 500."""

    name = "mlp_torch"

    def __init__(self, random_state: int = 0, n_hidden: int = 20, n_epochs: int = 100, lr: float = 0.1,
                 batch_size: int = 500, weight_decay: float = 1e-3):
        super().__init__(random_state)
        self.n_hidden, self.n_epochs, self.lr, self.batch_size = n_hidden, int(n_epochs), lr, batch_size
        self.weight_decay = weight_decay

    def _fit(self, x, y, y_err):
        g = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        self.net = _mlp((2, self.n_hidden, 1))
        X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.n_epochs):
            for idx in torch.randperm(len(Y), generator=g).split(self.batch_size):
                opt.zero_grad()
                loss = ((self.net(X[idx]).squeeze(-1) - Y[idx]) ** 2).mean()
                loss.backward()
                opt.step()
        self._finish(x, y)


class BayesLinear(nn.Module):
    """Mean-field Gaussian linear layer (Bayes by backprop): ``w = m + e^{ρ} ε``, ``ε ~ N(0, 1)``."""

    def __init__(self, n_in: int, n_out: int, prior_sigma: float = 0.1):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.w_mu = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound))
        self.b_mu = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        self.w_log_sigma = nn.Parameter(torch.full((n_out, n_in), math.log(prior_sigma)))
        self.b_log_sigma = nn.Parameter(torch.full((n_out,), math.log(prior_sigma)))
        self.prior_sigma = prior_sigma

    def forward(self, x):
        w = self.w_mu + self.w_log_sigma.exp() * torch.randn_like(self.w_mu)
        b = self.b_mu + self.b_log_sigma.exp() * torch.randn_like(self.b_mu)
        return x @ w.T + b

    def kl(self) -> torch.Tensor:
        """KL(N(m, σ²) ‖ N(0, σ_p²)) summed over weights and biases."""
        total = 0.0
        for mu, log_s in ((self.w_mu, self.w_log_sigma), (self.b_mu, self.b_log_sigma)):
            var_ratio = (2 * log_s).exp() / self.prior_sigma**2
            total = total + 0.5 * (var_ratio + mu**2 / self.prior_sigma**2 - 1 - var_ratio.log()).sum()
        return total

    def n_params(self) -> int:
        return self.w_mu.numel() + self.b_mu.numel()


class BNNApproximator(Approximator):
    """BNN: one hidden tanh layer of Bayes-by-backprop units; loss ``MSE + κ KL / n_params`` (Eq. 5)."""

    name = "bnn"

    def __init__(self, random_state: int = 0, n_hidden: int = 20, prior_sigma: float = 0.1, n_epochs: int = 1000,
                 lr: float = 0.01, kl_weight: float = 1e-4, n_samples: int = 100, weight_decay: float = 1e-3):
        super().__init__(random_state)
        self.n_hidden, self.prior_sigma, self.n_epochs = n_hidden, prior_sigma, int(n_epochs)
        self.lr, self.kl_weight, self.n_samples, self.weight_decay = lr, kl_weight, n_samples, weight_decay

    def _fit(self, x, y, y_err):
        torch.manual_seed(self.random_state)
        self.layers = nn.ModuleList([BayesLinear(2, self.n_hidden, self.prior_sigma),
                                     BayesLinear(self.n_hidden, 1, self.prior_sigma)])
        X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        n_params = sum(layer.n_params() for layer in self.layers)
        opt = torch.optim.Adam(self.layers.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.n_epochs):
            opt.zero_grad()
            mse = ((self._forward(X).squeeze(-1) - Y) ** 2).mean()
            kl = sum(layer.kl() for layer in self.layers) / n_params  # torchbnn's BKLLoss(reduction="mean")
            (mse + self.kl_weight * kl).backward()
            opt.step()

    def _forward(self, x):
        return self.layers[1](torch.tanh(self.layers[0](x)))

    def _predict(self, x):
        gen_state = torch.get_rng_state()
        torch.manual_seed(self.random_state + 1)
        X = torch.as_tensor(x, dtype=torch.float32)
        with torch.no_grad():
            draws = torch.stack([self._forward(X).squeeze(-1) for _ in range(self.n_samples)]).double().numpy()
        torch.set_rng_state(gen_state)
        return draws.mean(axis=0), np.maximum(draws.std(axis=0), 1e-6)


class AffineCoupling(nn.Module):
    """RealNVP coupling layer (Eq. 6–7): the masked half ``z_A`` and the condition set scale and shift of ``z_B``."""

    def __init__(self, mask: torch.Tensor, cond_size: int, hidden: int = 10):
        super().__init__()
        self.register_buffer("mask", mask.float())
        d = mask.numel()
        self.s = _mlp((d + cond_size, hidden, d))
        self.t = _mlp((d + cond_size, hidden, d))

    def forward(self, z, c):
        """z → y with log|det J|, J = ∂y/∂z."""
        h = torch.cat([z * self.mask, c], dim=1)
        s, t = self.s(h) * (1 - self.mask), self.t(h) * (1 - self.mask)
        return z * self.mask + (1 - self.mask) * (z * s.exp() + t), s.sum(dim=1)

    def inverse(self, y, c):
        h = torch.cat([y * self.mask, c], dim=1)
        s, t = self.s(h) * (1 - self.mask), self.t(h) * (1 - self.mask)
        return y * self.mask + (1 - self.mask) * ((y - t) * (-s).exp())


class ConditionalRealNVP(nn.Module):
    """``n_layers`` couplings with alternating masks; data → latent is ``forward``, sampling is the inverse."""

    def __init__(self, dim: int = 2, cond_size: int = 3, n_layers: int = 8, hidden: int = 10):
        super().__init__()
        self.layers = nn.ModuleList(
            AffineCoupling((torch.arange(dim) + i) % 2, cond_size, hidden) for i in range(n_layers))
        self.dim = dim

    def log_prob(self, v, c):
        """log p(v | c) = log N(g(v); 0, I) + Σ log|det|, with g the composition of the couplings."""
        log_det = torch.zeros(len(v), dtype=v.dtype)
        for layer in self.layers:
            v, ld = layer(v, c)
            log_det = log_det + ld
        return -0.5 * (v**2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi) + log_det

    def sample(self, c, generator=None):
        z = torch.randn(len(c), self.dim, generator=generator)
        for layer in reversed(self.layers):
            z = layer.inverse(z, c)
        return z


class NormalizingFlowApproximator(Approximator):
    """NF: conditional RealNVP of (flux, auxiliary noise) given (t, log λ, noise input); Section 3.4."""

    name = "nf"

    def __init__(self, random_state: int = 0, n_epochs: int = 1000, lr: float = 0.01, batch_size: int = 500,
                 n_layers: int = 8, hidden: int = 10, n_samples: int = 100, weight_decay: float = 0.01):
        super().__init__(random_state)
        self.n_epochs, self.lr, self.batch_size, self.weight_decay = int(n_epochs), lr, batch_size, weight_decay
        self.n_layers, self.hidden, self.n_samples = n_layers, hidden, n_samples

    def _fit(self, x, y, y_err):
        torch.manual_seed(self.random_state)
        g = torch.Generator().manual_seed(self.random_state)
        self.flow = ConditionalRealNVP(2, 3, self.n_layers, self.hidden)
        X = torch.as_tensor(x, dtype=torch.float32)
        Y, E = torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(y_err, dtype=torch.float32)
        opt = torch.optim.Adam(self.flow.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.n_epochs):
            for idx in torch.randperm(len(Y), generator=g).split(self.batch_size):
                n = len(idx)
                y_draw = Y[idx] + E[idx] * torch.randn(n, generator=g)  # flux errors as augmentation
                v = torch.stack([y_draw, torch.randn(n, generator=g)], dim=1)
                c = torch.cat([X[idx], torch.randn(n, 1, generator=g)], dim=1)
                opt.zero_grad()
                (-self.flow.log_prob(v, c).mean()).backward()
                opt.step()

    def _predict(self, x):
        g = torch.Generator().manual_seed(self.random_state + 1)
        X = torch.as_tensor(x, dtype=torch.float32).repeat(self.n_samples, 1)
        with torch.no_grad():
            c = torch.cat([X, torch.randn(len(X), 1, generator=g)], dim=1)
            draws = self.flow.sample(c, generator=g)[:, 0].reshape(self.n_samples, -1).double().numpy()
        return draws.mean(axis=0), np.maximum(draws.std(axis=0), 1e-6)


APPROXIMATORS = {cls.name: cls for cls in (GaussianProcessApproximator, MLPApproximator, SklearnMLPApproximator,
                                           SingleLayerApproximator,
                                           BNNApproximator, NormalizingFlowApproximator)}


def make_approximator(name: str, random_state: int = 0, **kwargs) -> Approximator:
    """An approximator by its short name (``gp, mlp_sklearn, mlp_sklearn_torch, mlp_torch, bnn, nf``)."""
    if name not in APPROXIMATORS:
        raise ValueError(f"unknown approximator {name!r}; choose from {sorted(APPROXIMATORS)}")
    return APPROXIMATORS[name](random_state=random_state, **kwargs)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

METRICS = ("rmse", "mape", "rse", "nlpd", "picp68", "picp95", "truth_rmse", "truth_mape", "truth_rse",
           "truth_nlpd", "fit_seconds")


def evaluate_on_curve(model: Approximator, curve: LightCurve, test_mask) -> dict:
    """Fit on the training part, score the held-out points (Section 4.2 metrics).

    ``rmse, mape, rse, nlpd, picp68, picp95`` compare the prediction with the held-out *observations*
    (the paper's protocol); ``truth_*`` compare it with the noiseless curve at the same times
    (``truth_nlpd`` of the truth under ``N(μ, s²)``).
    """
    test_mask = np.asarray(test_mask, dtype=bool)
    tr, te = ~test_mask, test_mask
    log_lam = curve.log_lam
    model.fit(curve.t[tr], curve.flux[tr], curve.flux_err[tr], log_lam[tr])
    mu, s = model.predict(curve.t[te], log_lam[te])
    s = np.maximum(s, 1e-9)
    y, truth = curve.flux[te], curve.true_flux(curve.t[te], curve.passband[te])
    return {
        "rmse": rm.rmse(y, mu), "mape": rm.mape(y, mu), "rse": rm.rse(y, mu), "nlpd": rm.nlpd(y, mu, s),
        "picp68": rm.picp(y, mu, s, 0.6827), "picp95": rm.picp(y, mu, s, 0.9545),
        "truth_rmse": rm.rmse(truth, mu), "truth_mape": rm.mape(truth, mu), "truth_rse": rm.rse(truth, mu),
        "truth_nlpd": rm.nlpd(truth, mu, s), "fit_seconds": model.fit_seconds,
    }


def run_regression_benchmark(curves, methods: dict, random_state: int = 0, progress=None, test_size=2) -> dict:
    """Every method on every curve, same split per curve; returns ``{method: {metric: per-curve array}}``.

    ``methods`` maps a name to keyword arguments of :func:`make_approximator`; curve ``i`` is split
    with seed ``(random_state, i)`` and every model on it is seeded with ``random_state + i``;
    ``test_size`` is passed to :func:`binned_train_test_split` (2 bins, the paper's final run).
    """
    out = {m: {k: [] for k in METRICS} for m in methods}
    iterator = progress(list(enumerate(curves))) if progress else enumerate(curves)
    for i, curve in iterator:
        mask = binned_train_test_split(curve.t, test_size=test_size, rng=np.random.default_rng([random_state, i, 1]))
        for name, kwargs in methods.items():
            res = evaluate_on_curve(make_approximator(name, random_state + i, **kwargs), curve, mask)
            for k, v in res.items():
                out[name][k].append(v)
    return {m: {k: np.asarray(v) for k, v in d.items()} for m, d in out.items()}


def calibration_gap_interval(picp_a, picp_b, level: float = 0.6827, n_resamples: int = 10_000,
                             random_state: int = 0, confidence: float = 0.95):
    """Paired bootstrap over curves of ``|mean(picp_a) - level| - |mean(picp_b) - level|``.

    Positive: method ``a``'s mean coverage is further from the nominal level than ``b``'s. The
    statistic is not a mean of per-curve values (coverage on a handful of held-out points per curve
    is coarse), so the interval resamples whole curves (percentile bootstrap).
    """
    from common.stats import Interval

    a, b = np.asarray(picp_a, dtype=float), np.asarray(picp_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError("picp_a and picp_b must be 1-D, paired, with at least 2 curves")
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, a.size, size=(n_resamples, a.size))
    boot = np.abs(a[idx].mean(axis=1) - level) - np.abs(b[idx].mean(axis=1) - level)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    estimate = abs(a.mean() - level) - abs(b.mean() - level)
    return Interval(float(estimate), float(lo), float(hi), a.size, confidence, "bootstrap")


# ----------------------------------------------------------------------------------------------
# Downstream use of the augmented curves (Section 6): peak time and classification
# ----------------------------------------------------------------------------------------------


def true_peak_time(curve: LightCurve, n_fine: int = 4001) -> float:
    """Time of the maximum of the noiseless flux summed over passbands, within the observed range."""
    fine = np.linspace(curve.t_min, curve.t_max, n_fine)
    n_bands = curve.wavelengths.size
    total = sum(curve.true_flux(fine, np.full(n_fine, b)) for b in range(n_bands))
    return float(fine[np.argmax(total)])


def augment_dataset(curves, name: str, kwargs: dict | None = None, n_grid: int = 128, random_state: int = 0,
                    progress=None) -> dict:
    """Fit ``name`` on all observations of every curve and resample it on ``n_grid`` times per band.

    Returns ``images`` (N, 2·n_bands, n_grid): the predicted flux and its standard deviation, both
    divided by the curve's largest predicted flux (the CNNs' input, Section 6); ``argmax_peak``: the
    grid time of the largest flux summed over bands (the "direct" peak estimate); ``window``:
    ``(t_min, t_max)`` per curve; ``fit_seconds`` per curve.
    """
    kwargs = kwargs or {}
    images, argmax_peak, window, seconds = [], [], [], []
    iterator = progress(list(enumerate(curves)), desc=name) if progress else enumerate(curves)
    for i, curve in iterator:
        model = make_approximator(name, random_state + i, **kwargs)
        model.fit(curve.t, curve.flux, curve.flux_err, curve.log_lam)
        grid, mean, std = model.augment(curve, n_grid)
        scale = max(float(mean.max()), 1e-9)
        images.append(np.concatenate([mean / scale, std / scale]))
        argmax_peak.append(float(grid[np.argmax(mean.sum(axis=0))]))
        window.append((curve.t_min, curve.t_max))
        seconds.append(model.fit_seconds)
    return {"images": np.asarray(images, dtype=np.float32), "argmax_peak": np.asarray(argmax_peak),
            "window": np.asarray(window), "fit_seconds": np.asarray(seconds)}


class CurveCNN(nn.Module):
    """1-D CNN on augmented curves (bands × grid): three conv blocks, global average pooling, one output."""

    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(2 * width, 4 * width, 5, padding=2), nn.ReLU())
        self.head = nn.Linear(4 * width, 1)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=-1)).squeeze(-1)


def cross_val_cnn(images, targets, task: str, n_folds: int = 4, n_epochs: int = 300, lr: float = 3e-3,
                  random_state: int = 0) -> np.ndarray:
    """Out-of-fold CNN predictions: ``task="classify"`` gives probabilities of label 1 (BCE), ``"regress"`` values (MSE).

    Folds are a seeded permutation of the curves; every fold trains a fresh CNN (full batch, Adam) on the
    other folds. Regression targets are standardised on the training folds.
    """
    if task not in ("classify", "regress"):
        raise ValueError(f"task must be 'classify' or 'regress', got {task!r}")
    X = torch.as_tensor(np.asarray(images, dtype=np.float32))
    y = np.asarray(targets, dtype=float)
    if len(X) != len(y) or len(y) < n_folds:
        raise ValueError("need one target per image and at least n_folds curves")
    folds = np.array_split(np.random.default_rng(random_state).permutation(len(y)), n_folds)
    out = np.empty(len(y))
    for k, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        torch.manual_seed(random_state * 1000 + k)
        net = CurveCNN(X.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        mu, sd = (y[train].mean(), y[train].std() + 1e-12) if task == "regress" else (0.0, 1.0)
        target = torch.as_tensor((y[train] - mu) / sd, dtype=torch.float32)
        for _ in range(n_epochs):
            opt.zero_grad()
            pred = net(X[train])
            loss = (nn.functional.binary_cross_entropy_with_logits(pred, target) if task == "classify"
                    else ((pred - target) ** 2).mean())
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = net(X[test]).double().numpy()
        out[test] = 1 / (1 + np.exp(-pred)) if task == "classify" else pred * sd + mu
    return out


def bootstrap_difference(stat, a, b, labels=None, n_resamples: int = 2000, random_state: int = 0,
                         confidence: float = 0.95):
    """Paired percentile bootstrap over curves of ``stat(labels, a) - stat(labels, b)`` (scikit-learn's argument order).

    Resamples with both classes present (for PR-AUC). Returns a ``common.stats.Interval``.
    """
    from common.stats import Interval

    a, b = np.asarray(a), np.asarray(b)
    labels = np.zeros(len(a)) if labels is None else np.asarray(labels)
    rng = np.random.default_rng(random_state)
    diffs = []
    while len(diffs) < n_resamples:
        idx = rng.integers(0, len(a), len(a))
        if np.unique(labels[idx]).size < np.unique(labels).size:
            continue
        diffs.append(stat(labels[idx], a[idx]) - stat(labels[idx], b[idx]))
    lo, hi = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(stat(labels, a) - stat(labels, b)), float(lo), float(hi), len(a), confidence, "bootstrap")
