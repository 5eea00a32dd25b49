"""The experiments behind the notebooks (one function per experiment; the notebooks only call and plot)."""

from __future__ import annotations

import numpy as np
import torch

from common import stats
from papers.stsl import gmm as gmm_lib
from papers.stsl.operators import LinearOperator
from papers.stsl.stsl import SAMPLERS, Problem


def gmm_problem(y: torch.Tensor, sigma_y: float, n: int, prior=None) -> tuple[Problem, torch.Tensor]:
    """The analytic problem (y repeated n times) and M = A W."""
    prior = prior if prior is not None else gmm_lib.default_gmm()
    w, a = gmm_lib.default_linear_setting()
    codec = gmm_lib.LinearCodec(w)
    op = LinearOperator("gmm", a)
    problem = Problem(prior, codec.decode, codec.encode, op, y[None].expand(n, -1).clone(), sigma_y)
    return problem, a @ w


def run_gmm_seed(seed: int, methods: dict, n_samples: int, sigma_y: float, eta: float = 1.0) -> dict:
    """One seed of the analytic check: a true z0 from the prior, its y, every method's n_samples posterior
    samples (shared starting noise) and the exact posterior's; returns W2 per method and the floor
    (W2 between two independent exact-posterior samples). ``methods``: name -> (sampler, nfe, kwargs)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    prior = gmm_lib.default_gmm()
    w, a = gmm_lib.default_linear_setting()
    z_true = prior.sample(1, g)
    y = (z_true @ (a @ w).T)[0] + sigma_y * torch.randn(a.shape[0], generator=g, dtype=torch.float64)
    problem, m = gmm_problem(y, sigma_y, n_samples, prior)
    post = gmm_lib.exact_posterior(prior, m, y, sigma_y)
    exact = gmm_lib.sample_mixture(*post, n_samples, g)
    exact2 = gmm_lib.sample_mixture(*post, n_samples, g)
    noise = torch.randn(n_samples, prior.dim, generator=g, dtype=torch.float64)
    out = {"floor": gmm_lib.wasserstein2(exact, exact2)}
    for name, (sampler, nfe, kwargs) in methods.items():
        res = SAMPLERS[sampler](
            problem,
            noise,
            nfe,
            eta=eta,
            guidance="likelihood",
            generator=torch.Generator().manual_seed(20_000 + seed),
            **kwargs,
        )
        out[name] = gmm_lib.wasserstein2(res.z, exact)
        out[f"{name}.nfe"] = res.nfe
    return out


def digits_problem(model, vae, operator, x_true: torch.Tensor, sigma_y: float, seed: int) -> Problem:
    """Measure x_true (float32 rows) with ``operator`` and noise from ``seed``; wrap it as a Problem."""
    g = torch.Generator().manual_seed(30_000 + seed)
    y = operator.measure(x_true.double(), sigma_y, g).float()
    return Problem(model, vae.decode, vae.encode, operator, y, sigma_y)


def starting_noise(vae, x_true: torch.Tensor, seed: int) -> torch.Tensor:
    """The shared starting noise [B, d] of a seed for the images x_true [B, n] (d the VAE's latent dimension:
    8 at 8×8, 32 at 16×16)."""
    from papers.stsl.latent import latent_dim

    d = latent_dim(vae, x_true)
    return torch.randn(x_true.shape[0], d, generator=torch.Generator().manual_seed(40_000 + seed))


def subspace_lsq(operator: LinearOperator, y: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    r"""The least-squares reconstruction inside a known linear subspace, with no learned prior:
    :math:`\hat x = U (A U)^+ y` for rows y [B, m] -> [B, n] (float64), U = ``basis`` [n, k].

    At 16×16 the digits are bilinear upsamplings of 8×8 digits, x = U x₈ with U the upsampling matrix
    (``common.digits16.data.upsampling_matrix``, 256 × 64); restricted to its range, ×2 pooling and the blur are
    injective (A U has full column rank 64) and inpainting nearly so, so this baseline is what the measurement alone
    determines for this data (exact, x̂ = x, for y = A U x₈ without noise when A U has full column rank)."""
    if basis.ndim != 2 or basis.shape[0] != operator.shape[1]:
        raise ValueError(f"basis must be [{operator.shape[1]}, k], got {tuple(basis.shape)}")
    u = basis.to(torch.float64)
    au = operator.matrix.to(torch.float64) @ u
    return y.to(torch.float64) @ torch.linalg.pinv(au).T @ u.T


def run_digits(
    model,
    vae,
    operator,
    x_true: torch.Tensor,
    sigma_y: float,
    seed: int,
    methods: dict,
    eta: float = 0.0,
    subspace: torch.Tensor | None = None,
) -> dict:
    """Every method on the same images, measurement and starting noise (seed); per-image PSNR arrays.

    ``methods``: name -> (sampler, nfe, kwargs). Also returns the A⁺y baseline and the VAE ceiling, and with
    ``subspace`` (a basis U [n, k] of the data's subspace) the prior-free ``subspace_lsq`` baseline U (A U)⁺ y on
    the same y."""
    from papers.stsl.stsl import per_image_psnr

    problem = digits_problem(model, vae, operator, x_true, sigma_y, seed)
    noise = starting_noise(vae, x_true, seed)
    with torch.no_grad():
        out = {
            "measurement": per_image_psnr(operator.pinv(problem.y.double()), x_true),
            "ceiling": per_image_psnr(vae.decode(vae.encode(x_true)), x_true),
        }
        if subspace is not None:
            out["subspace_lsq"] = per_image_psnr(subspace_lsq(operator, problem.y, subspace), x_true)
    for name, (sampler, nfe, kwargs) in methods.items():
        res = SAMPLERS[sampler](
            problem, noise, nfe, eta=eta, generator=torch.Generator().manual_seed(50_000 + seed), **kwargs
        )
        out[name] = per_image_psnr(res.x, x_true)
        out[f"{name}.x"] = res.x.detach().clamp(-1, 1)  # the restorations themselves (FD/KID: ``distribution_scores``)
        out[f"{name}.nfe"] = res.nfe
        out[f"{name}.oracle_evals"] = res.oracle_evals
    return out


def empirical_noised_score(z: torch.Tensor, t: float, latents: torch.Tensor, schedule) -> torch.Tensor:
    """The exact score ∇ log p_t(z) of the VP-noised empirical distribution of ``latents`` [N, d]
    (p_t = (1/N) Σ_i N(α_t z_i, σ_t² I)); float64, differentiable in z. The latent model was trained to fit
    this p_t; at large t (α_t small against the spread of the latents) it is a smooth stand-in for the
    population's noised density."""
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    d = z.to(torch.float64)[:, None, :] - alpha * latents.to(torch.float64)[None]
    resp = torch.softmax(-(d**2).sum(-1) / (2 * sigma**2), -1)
    return -(resp[..., None] * d).sum(1) / sigma**2


def per_digit(values, n_seeds: int) -> np.ndarray:
    """Per-image values of ``digits_task`` (seed-major: the images of seed 0, then of seed 1, ...) averaged over the
    seeds, one value per test digit [n_images]. The seeds re-draw y and the noise for the *same* digits, so the
    images x seeds values are not independent; an interval over the digits (n = n_images) is the honest one."""
    arr = np.asarray(values, dtype=float)
    if n_seeds < 1 or arr.ndim != 1 or arr.size % n_seeds:
        raise ValueError(f"need a 1-D array whose length is a multiple of n_seeds = {n_seeds}, got shape {arr.shape}")
    return arr.reshape(n_seeds, -1).mean(0)


def per_digit_difference(a, b, n_seeds: int, *, confidence: float = 0.95):
    """Paired difference a − b over the test digits, with a Student-t interval (``common.stats``).

    ``a``, ``b``: per-image values of ``digits_task`` (seed-major, length n_images · n_seeds, the same images,
    y and noise for both methods). For digit i, d̄_i = (1/S) Σ_s (a_{s,i} − b_{s,i}) (``per_digit`` of each);
    the interval is d̄ ± t_{n−1,(1+c)/2} · sd(d̄_i) / √n over the n = n_images digits. The seeds re-draw y and the
    noise for the same digits, so the n_images · n_seeds pairs are not independent draws and an interval over them
    (n = n_images · n_seeds) is too narrow; averaging first keeps the digit the unit of replication."""
    return stats.paired_difference(per_digit(a, n_seeds), per_digit(b, n_seeds), confidence=confidence)


def responsibilities(z: torch.Tensor, t: float, latents: torch.Tensor, schedule) -> torch.Tensor:
    """The posterior weights w_i(z) ∝ N(z; α_t z_i, σ_t² I) of the training latents under the VP-noised empirical
    distribution p_t = (1/N) Σ_i N(α_t z_i, σ_t² I); [B, N], rows sum to 1 (float64)."""
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    d = z.to(torch.float64)[:, None, :] - alpha * latents.to(torch.float64)[None]
    return torch.softmax(-(d**2).sum(-1) / (2 * sigma**2), -1)


def effective_components(z: torch.Tensor, t: float, latents: torch.Tensor, schedule) -> torch.Tensor:
    """exp(H(w(z))), the entropy-effective number of training latents that the empirical score averages at z [B]:
    N when p_t is flat over the data (α_t z_i indistinguishable at noise σ_t), 1 when it has snapped to the
    nearest training latent (then ∇ log p_t = −(z − α_t z_i)/σ_t², a memorising score, not the population's)."""
    w = responsibilities(z, t, latents, schedule)
    return torch.exp(-(w * torch.log(w.clamp_min(1e-300))).sum(-1))


def trace_drift(score_fn, z: torch.Tensor, u: torch.Tensor, weight: float) -> torch.Tensor:
    r"""STSL's trace drift :math:`\nabla_z\,[w\,u^\top \nabla_z s(z)\,u]` for a score ``score_fn`` (z -> s(z),
    differentiable), u held fixed, by exact Hessian-vector products (two backward passes); [B, d] float64."""
    with torch.enable_grad():
        zz = z.clone().requires_grad_(True)
        score = score_fn(zz)
        uu = u.to(score.dtype)
        (hu,) = torch.autograd.grad((score * uu).sum(), zz, create_graph=True)
        (drift,) = torch.autograd.grad(weight * (uu * hu).sum(), zz)
    return drift.double()


def _start_and_probe(model, vae, operator, x_true, sigma_y: float, seed: int, t: float):
    """STSL's starting point z_t = α_t E(A⁺y) + σ_t ε (the y and ε of ``run_digits`` with this seed), its
    probe direction u = J_Dᵀ Aᵀ v at ẑ0(z_t) (v Rademacher, seed 60 000 + seed) and the weight σ_t⁴/α_t²."""
    from papers.stsl.stsl import _coeffs, rademacher

    problem = digits_problem(model, vae, operator, x_true, sigma_y, seed)
    noise = starting_noise(vae, x_true, seed)
    alpha, sigma = _coeffs(model.schedule, t)
    z = (alpha * vae.encode(operator.pinv(problem.y)).detach() + sigma * noise).detach()
    with torch.enable_grad():
        z0 = ((z - sigma * model.eps(z, t)) / alpha).detach().requires_grad_(True)
        ax = operator.forward(vae.decode(z0))
        v = rademacher(ax.shape, torch.Generator().manual_seed(60_000 + seed), ax.dtype)
        (u,) = torch.autograd.grad((ax * v).sum(), z0)
    return z, u.detach(), sigma**4 / alpha**2


def trace_drift_check(model, vae, operator, x_true, sigma_y: float, seed: int, t: float, latents) -> dict:
    """Can the latent model supply STSL's drift? At STSL's starting point z_t = α_t E(A⁺y) + σ_t ε (the same
    y and ε as ``run_digits`` with this seed) and one Rademacher probe v (u = J_Dᵀ Aᵀ v at ẑ0), the trace
    drift ∇_{z_t}[σ_t⁴/α_t² · uᵀ∇²log p_t(z_t) u] from the network (exact Hessian-vector products, no finite
    difference) and from the exact noised score of the training latents (``empirical_noised_score``).
    Returns per-image arrays: ``net`` and ``exact`` drift norms and ``rel_err`` = ‖g_net − g_exact‖/‖g_exact‖
    (1 means the network's drift is no closer to the exact one than a zero drift)."""
    z, u, weight = _start_and_probe(model, vae, operator, x_true, sigma_y, seed, t)
    sigma = float(model.schedule.sigma(t))
    g_net = trace_drift(lambda zz: -model.eps(zz, t) / sigma, z, u, weight)
    g_exact = trace_drift(lambda zz: empirical_noised_score(zz, t, latents, model.schedule), z.double(), u, weight)
    rel = (g_net - g_exact).norm(dim=-1) / g_exact.norm(dim=-1).clamp_min(1e-12)
    return {"net": g_net.norm(dim=-1), "exact": g_exact.norm(dim=-1), "rel_err": rel}


def oracle_faithfulness(
    model, vae, operator, x_true, sigma_y: float, seed: int, ts, latents, split_seed: int = 70_000
) -> dict:
    """Where is the empirical (oracle) drift a stand-in for the population's? At each t of ``ts``, at
    z_t = α_t E(A⁺y) + σ_t ε (STSL's start construction, same y, ε, probe as ``trace_drift_check``), per image:

    * ``eff``: ``effective_components`` of the full training latents (1 = snapped to one latent);
    * ``split``: ‖g_A − g_B‖ / ‖g‖, the oracle trace drift from two disjoint random halves A, B of the latents
      against the drift g of all of them. Each half is an independent sample of the population, so a small
      ``split`` means the empirical drift does not depend on which latents were drawn (it estimates the
      population's); ``split`` ≳ 1 means it is sampling noise of the training set.

    Returns {"t": list, "eff": [len(ts), B], "split": [len(ts), B]} (float64 tensors)."""
    perm = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(split_seed))
    half = latents.shape[0] // 2
    parts = {"all": latents, "a": latents[perm[:half]], "b": latents[perm[half:]]}
    eff, split = [], []
    for t in ts:
        z, u, weight = _start_and_probe(model, vae, operator, x_true, sigma_y, seed, float(t))
        g = {
            k: trace_drift(lambda zz, lat=lat, tt=float(t): empirical_noised_score(zz, tt, lat, model.schedule),
                         z.double(), u, weight)
            for k, lat in parts.items()
        }
        eff.append(effective_components(z, float(t), latents, model.schedule))
        split.append((g["a"] - g["b"]).norm(dim=-1) / g["all"].norm(dim=-1).clamp_min(1e-12))
    return {"t": [float(t) for t in ts], "eff": torch.stack(eff), "split": torch.stack(split)}


def digit_features(x: torch.Tensor) -> np.ndarray:
    """The digits classifier's 32-dim features (float64 [B, 32]) of images [B, 64] (8×8) or [B, 256] (16×16; through
    ``to_digits8``, the least-squares 8×8 digit, exact on the upsampled real digits): FD32/KID's feature space."""
    from common.diffusion.metrics import DigitsFeatures

    if x.shape[1] == 256:
        from common.digits16 import to_digits8

        x = to_digits8(x)
    if x.shape[1] != 64:
        raise ValueError(f"images must have 64 or 256 pixels, got {x.shape[1]}")
    return DigitsFeatures.load().features(x.float()).double().numpy()


def per_seed_score(score, n_seeds: int):
    """``score`` averaged over the seeds' blocks of seed-major rows (each block: one restoration per digit)."""

    def averaged(f: np.ndarray) -> float:
        if f.shape[0] % n_seeds:
            raise ValueError(f"{f.shape[0]} rows do not split into {n_seeds} seeds")
        return float(np.mean([score(block) for block in f.reshape(n_seeds, -1, f.shape[1])]))

    return averaged


def jackknife_difference(score, fa: np.ndarray, fb: np.ndarray, n_images: int, n_seeds: int, *,
                         confidence: float = 0.95) -> stats.Interval:
    r"""score(fa) − score(fb) with a delete-one-digit jackknife standard error (Efron & Tibshirani 1993, ch. 11),
    rows seed-major (row s·n_images + i is digit i under seed s); each left-out digit takes its n_seeds rows of both
    sets with it. With :math:`\theta_{(i)}` the difference without digit i, the standard error is
    :math:`\sqrt{\tfrac{n-1}{n}\sum_i(\theta_{(i)} - \bar\theta)^2}` and the interval Student-t with n − 1 degrees
    of freedom around the plain difference, n = n_images. The jackknife, not a bootstrap: a bootstrap resample repeats
    digits, which shrinks the covariances and moves FD's small-sample bias, so its percentiles are not centred."""
    from scipy import stats as sps

    if fa.shape[0] != n_seeds * n_images or fb.shape[0] != n_seeds * n_images:
        raise ValueError(f"need n_seeds x n_images = {n_seeds * n_images} rows, got {fa.shape[0]} and {fb.shape[0]}")
    estimate = score(fa) - score(fb)
    digit = np.arange(n_seeds * n_images) % n_images
    leave_out = np.array([score(fa[digit != i]) - score(fb[digit != i]) for i in range(n_images)])
    se = float(np.sqrt((n_images - 1) / n_images * ((leave_out - leave_out.mean()) ** 2).sum()))
    half = float(sps.t.ppf((1 + confidence) / 2, n_images - 1)) * se
    return stats.Interval(estimate, estimate - half, estimate + half, n_images, confidence, "jackknife over test digits")


def distribution_scores(restorations: dict, x_true: torch.Tensor, n_seeds: int, *, pairs=(),
                        confidence: float = 0.95) -> dict:
    r"""FD32 and KID of each method's restorations to the digits train split (the note's FD/KID; the paper's FID on
    classifier features, Inception being unavailable offline), with jackknife intervals of their differences.

    ``restorations``: name -> [n_seeds · n_images, n] images, seed-major (row s·n_images + i is digit i under seed s,
    the order ``digits_task`` concatenates). Each score is computed **per seed** (that seed's n_images restorations,
    one per test digit) and averaged over the seeds, so every method, and ``"truth"`` (the test digits themselves:
    the identity restorer), is scored on sets of the same structure: pooling the seeds instead would put several
    restorations of one digit in a set, and FD's small-sample bias (about 90 % of FD32 at 64 digits) and KID's
    within-set pairs would then reward or punish how much a method varies across seeds rather than its quality.
    KID: unbiased MMD² with the cubic kernel on features standardised by the train split's statistics
    (``common.diffusion.metrics.kid_to_train``'s convention).
    ``pairs`` ((a, b), ...): FD_a − FD_b and KID_a − KID_b (``fd_diff``, ``kid_diff``) with delete-one-digit jackknife
    t intervals (:func:`jackknife_difference`), n = n_images. Caveat: at 16×16 the features see the restorations
    through ``to_digits8`` (the least-squares inverse of the bilinear upsampling), blind to anything outside the
    64-dim upsampling subspace.
    """
    from common.diffusion import metrics as dm

    n_images = x_true.shape[0]
    feats = {name: digit_features(x) for name, x in restorations.items()}
    feats["truth"] = digit_features(x_true.repeat(n_seeds, 1))
    for name, f in feats.items():
        if f.shape[0] != n_seeds * n_images:
            raise ValueError(f"{name}: {f.shape[0]} restorations, expected n_seeds x n_images = {n_seeds * n_images}")
    train = dm.train_features().numpy()
    train_std = dm.standardise_by(train, dm.train_feature_stats())
    std = {name: dm.standardise_by(f, dm.train_feature_stats()) for name, f in feats.items()}
    fd = per_seed_score(lambda f: dm.frechet_distance(f, train), n_seeds)
    kid = per_seed_score(lambda f: dm.kid(f, train_std), n_seeds)
    out = {"fd": {name: fd(f) for name, f in feats.items()}, "kid": {name: kid(f) for name, f in std.items()},
           "fd_diff": {}, "kid_diff": {}}
    for a, b in pairs:
        out["fd_diff"][f"{a}_minus_{b}"] = jackknife_difference(fd, feats[a], feats[b], n_images, n_seeds,
                                                                confidence=confidence)
        out["kid_diff"][f"{a}_minus_{b}"] = jackknife_difference(kid, std[a], std[b], n_images, n_seeds,
                                                                 confidence=confidence)
    return out


def tune_step_size(
    model,
    vae,
    operator,
    x_tune: torch.Tensor,
    sigma_y: float,
    sampler: str,
    nfe: int,
    grid,
    seed: int = 999,
    max_widen: int = 0,
    **kwargs,
) -> tuple[float, dict]:
    """The step size of ``grid`` with the best mean PSNR on the tuning images (same grid, images and seed for
    every method); returns (best, {ζ: mean PSNR} for every ζ tried, ascending).

    ``max_widen`` > 0 (the widening rule, README open (h)): while the best ζ is the largest tried, try 3× it; while
    it is the smallest, try it / 3; at most ``max_widen`` times on each side. The rule is the same for every method
    and reads only the tuning images. A non-finite mean PSNR (a diverged run) counts as the worst; ties go to the
    smaller ζ."""
    if max_widen < 0:
        raise ValueError(f"max_widen must be >= 0, got {max_widen}")
    scores: dict[float, float] = {}

    def score(zeta: float) -> None:
        out = run_digits(
            model, vae, operator, x_tune, sigma_y, seed, {"m": (sampler, nfe, dict(step_size=zeta, **kwargs))}
        )
        value = float(out["m"].mean())
        scores[float(zeta)] = value if np.isfinite(value) else -np.inf

    def best() -> float:
        return max(sorted(scores), key=lambda z: scores[z])  # first maximum in ascending ζ: ties to the smaller

    for zeta in grid:
        score(zeta)
    up = down = 0
    while True:
        zeta, tried = best(), sorted(scores)
        if zeta == tried[-1] and up < max_widen:
            score(3.0 * zeta)
            up += 1
        elif zeta == tried[0] and down < max_widen:
            score(zeta / 3.0)
            down += 1
        else:
            return zeta, {z: scores[z] for z in sorted(scores)}


def sigma_tag(sigma_y: float) -> str:
    """0.05 -> 'sy005', 0.01 -> 'sy001' (hundredths; a metric-name component)."""
    return "sy" + str(int(round(sigma_y * 100))).zfill(3)


def digits_task(
    model,
    vae,
    task: str,
    x_test,
    x_tune,
    sigma_y: float,
    nfe: int,
    seeds,
    grid,
    gamma: float,
    stsl_t_start: float,
    latents: torch.Tensor | None = None,
    side: int = 8,
    arms: tuple = (),
    oracle_t_min: float = 0.0,
    fd_pairs: tuple | None = None,
    max_widen: int = 0,
) -> dict:
    """Claim 1 / claim 2 on one task: tune ζ on x_tune (same grid for every method), then PSLD at nfe,
    STSL and STSL-without-trace at nfe // 4, all from the same noise, over ``seeds``; per-image PSNRs
    concatenated over seeds (pairs are image × seed). With ``latents`` (the training latents), also the
    trace-drift check at STSL's start t₀ (``trace_drift_check``, per image × seed). ``side``: the image side
    (8 or 16; the operator is ``make_operator(task, side)`` and must match the VAE's images). At side 16 also the
    prior-free least-squares baseline inside the data's 64-dim upsampling subspace (``subspace_lsq``, key
    ``"subspace_lsq"``; not computed at side 8, whose images span all of ℝ⁶⁴).

    ``arms`` adds methods, each tuned like the others (same grid, tuning images, seed):

    * ``"dps"``: latent DPS (no gluing, from pure noise at t = 1) at the PSLD budget ``nfe``;
    * ``"oracle"`` (needs ``latents``): ``stsl_oracle`` at STSL's budget nfe // 4 (same steps as STSL, the probe
      charged, 1 network call per step) with the exact noised empirical score of ``latents`` in the trace term at
      t >= ``oracle_t_min`` (below it no trace term), and its matching control ``no_trace_matched``: the
      ablation with as many steps, hence network calls, as the oracle arm (budget (nfe // 4) // 2). The oracle
      arm's score evaluations are returned under ``"oracle_evals"``.

    ``max_widen``: the step-size widening rule of :func:`tune_step_size` (0: the fixed grid).

    ``fd_pairs``: also FD32/KID of every method's restorations (scored per seed, averaged over the seeds), with
    jackknife intervals of the FD and KID differences of these (a, b) pairs (``distribution_scores``), under
    ``"dist"``."""
    from papers.stsl.operators import make_operator

    op = make_operator(task, side)
    if x_test.shape[1] != op.shape[1] or x_tune.shape[1] != op.shape[1]:
        raise ValueError(
            f"images have {x_test.shape[1]} pixels, the {side}x{side} operator takes {op.shape[1]}"
        )
    quarter = nfe // 4
    stsl_kw = dict(gamma=gamma, t_start=stsl_t_start, init="measurement")
    configs = {
        "psld": ("psld", nfe, dict(gamma=gamma)),
        "stsl": ("stsl", quarter, stsl_kw),
        "stsl_no_trace": ("stsl_no_trace", quarter, stsl_kw),
    }
    if "dps" in arms:
        configs["dps"] = ("dps", nfe, {})
    if "oracle" in arms:
        if latents is None:
            raise ValueError("the oracle arm needs the training latents")
        schedule = model.schedule
        lat64 = latents.to(torch.float64)

        def oracle_score(z, t):
            return empirical_noised_score(z, t, lat64, schedule)

        configs["stsl_oracle"] = ("stsl_oracle", quarter, dict(stsl_kw, trace_score=oracle_score, trace_t_min=oracle_t_min))
        configs["no_trace_matched"] = ("stsl_no_trace", quarter // 2, stsl_kw)
    unknown = set(arms) - {"dps", "oracle"}
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; known: dps, oracle")
    steps, tuning = {}, {}
    for name, (sampler, budget, kw) in configs.items():
        steps[name], tuning[name] = tune_step_size(
            model, vae, op, x_tune, sigma_y, sampler, budget, grid, max_widen=max_widen, **kw
        )
    methods = {name: (s, b, dict(kw, step_size=steps[name])) for name, (s, b, kw) in configs.items()}
    subspace = None
    if side == 16:
        from common.digits16.data import upsampling_matrix

        subspace = upsampling_matrix()
    per_seed = [run_digits(model, vae, op, x_test, sigma_y, s, methods, subspace=subspace) for s in seeds]
    baselines = ("measurement", "ceiling") + (("subspace_lsq",) if subspace is not None else ())
    out = {k: torch.cat([r[k] for r in per_seed]).numpy() for k in (*baselines, *methods)}
    out["nfe"] = {name: per_seed[0][f"{name}.nfe"] for name in methods}
    if "stsl_oracle" in methods:
        out["oracle_evals"] = per_seed[0]["stsl_oracle.oracle_evals"]
    out["step_size"] = steps
    out["tuning"] = tuning
    if fd_pairs is not None:
        pooled = {name: torch.cat([r[f"{name}.x"] for r in per_seed]) for name in methods}
        out["dist"] = distribution_scores(pooled, x_test, len(per_seed), pairs=fd_pairs)
    if latents is not None:
        checks = [trace_drift_check(model, vae, op, x_test, sigma_y, s, stsl_t_start, latents) for s in seeds]
        out["trace_drift"] = {
            k: torch.cat([c[k] for c in checks]).numpy() for k in ("net", "exact", "rel_err")
        }
    return out
