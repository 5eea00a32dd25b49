r"""Latent-diffusion posterior samplers for linear inverse problems: latent DPS, PSLD and STSL.

Setting (Rout et al., CVPR 2024, Sec. 3). A latent diffusion model :math:`\hat\varepsilon(z_t, t)` on latents
:math:`z \in \mathbb R^d` of an autoencoder :math:`x = D(z)`, :math:`z = E(x)`; a measurement
:math:`y = A x + \sigma_y n`. With :math:`z_t = \alpha_t z_0 + \sigma_t \varepsilon`, Tweedie's formula gives
the posterior mean and (second order) the posterior covariance of :math:`z_0` given :math:`z_t`:

.. math:: \hat z_0(z_t) = \frac{z_t - \sigma_t\hat\varepsilon(z_t,t)}{\alpha_t}, \qquad
          \operatorname{Cov}[z_0 \mid z_t] = \frac{\sigma_t^2}{\alpha_t^2}\big(I + \sigma_t^2\,\nabla^2_{z_t}\log p_t(z_t)\big).

* **Latent DPS** (Chung et al. 2023, first-order Tweedie): :math:`p(y\mid z_t) \approx
  \mathcal N(y; A D(\hat z_0), \sigma_y^2 I)`; each step is a DDIM step followed by
  :math:`z \leftarrow z - \zeta\,\nabla_{z_t}\|y - A D(\hat z_0)\|`.
* **PSLD** (Rout et al. 2023, Algorithm 2 and the official code ``ldm/models/diffusion/psld.py``): DPS plus
  the gluing term :math:`\gamma\,\|\hat z_0 - E(A^+y + (I - A^+A)\,D(\hat z_0))\|` (a norm, not squared, as
  the data term; the official code uses :math:`A^\top`, which equals :math:`A^+` for inpainting masks; we use
  :math:`A^+` so that the target is a projection for average pooling and blur too). :math:`\gamma` is the ratio
  of PSLD's gluing weight to its data weight (``gamma/omega``; 0.1 in the official box-inpainting script).
* **STSL** (second-order Tweedie from a surrogate loss). *Our reconstruction; the paper's equations were not
  retrieved.* Jensen's inequality lower-bounds the second-order log-likelihood:

  .. math:: \log \mathbb E_{z_0\mid z_t} p(y\mid z_0) \ \ge\ -\frac{1}{2\sigma_y^2}\,\mathbb E_{z_0\mid z_t}\|y - A D(z_0)\|^2
            \approx -\frac{1}{2\sigma_y^2}\Big(\|y - A D(\hat z_0)\|^2 + \operatorname{tr}\big(M\,\operatorname{Cov}[z_0\mid z_t]\,M^\top\big)\Big),

  :math:`M = A\,J_D(\hat z_0)`. The trace is estimated in O(1) network evaluations: one Rademacher probe
  :math:`v` in measurement space, :math:`u = M^\top v` (a vector-Jacobian product through the decoder, no
  NFE), and a finite difference of the score along u (one extra NFE):

  .. math:: \operatorname{tr}(M\operatorname{Cov}M^\top) \approx \frac{\sigma_t^2}{\alpha_t^2}\|u\|^2 +
            \frac{\sigma_t^4}{\alpha_t^2}\,\frac{u^\top\big(s(z_t + \delta u) - s(z_t)\big)}{\delta},
            \quad s = -\hat\varepsilon/\sigma_t,\ \mathbb E_v[vv^\top] = I.

  The surrogate loss is :math:`\ell = \|y - A D(\hat z_0)\|^2 + \text{(trace term)}` (u held fixed, so the
  :math:`\|u\|^2` part has no gradient), normalised like DPS's data term, plus PSLD's gluing term; its
  gradient is the new drift. STSL starts from the measurement (:math:`z_{t_0} = \alpha_{t_0}E(A^+y) + \sigma_{t_0}\varepsilon`,
  ``init="measurement"``) and may take ``n_inner`` gradient steps per timestep. Every network evaluation,
  probes included, is one NFE (backward passes are not counted, as for DPS).
* **STSL with an oracle drift** (``stsl_oracle``, a diagnostic arm, not the paper's method): identical to STSL
  (same ẑ0 from the network, same probes, δ, loss, gluing, start, step grid) except that the finite difference of
  the score along u uses a supplied score ``trace_score(z, t)`` (on the digits the exact score of the VP-noised
  empirical distribution of the latent model's training latents) instead of the network's, and only at
  ``t >= trace_t_min`` (below it the trace term is dropped, where that oracle is not a stand-in for the
  population score). Accounting: each probe is *charged* one NFE as in STSL (so the step count equals STSL's at
  the same budget), but it is not a network call: ``SampleResult.nfe`` counts network calls only (1 per step)
  and ``SampleResult.oracle_evals`` the oracle's score evaluations (2 per probe and step where it is applied,
  each a pass over the N training latents, O(N d)).
* **STSL without the trace term**: the same loop and initialisation with :math:`\ell` minus the trace term,
  1 NFE per step instead of 2, so at equal NFE it takes twice as many steps (the ablation).

Two guidance scalings share the loop: ``guidance="dps"`` normalises the gradient like DPS
(:math:`\zeta\,\nabla\ell/(2\|r\|)`, which is exactly :math:`\zeta\nabla\|r\|` for DPS) and is used on the
digits; ``guidance="likelihood"`` adds :math:`\zeta\,\nabla\ell/(2\sigma_y^2)` to the score (a posterior
score; :math:`\zeta=1` is the approximation's own weight) and is used in the analytic GMM check. In both,
the gluing term adds :math:`\zeta\gamma\nabla\|\hat z_0 - E(\cdot)\|` (PSLD's z ← z − ∇(ω‖r‖ + γ‖·‖)).

All samplers share one signature, ``sampler(problem, noise, nfe, *, step_size, eta, t_start, init,
generator, **options) -> SampleResult`` with the samples (latent and decoded) and the NFE actually spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from common.diffusion.samplers import ddim_step, time_grid

METHODS = ("dps", "psld", "stsl", "stsl_no_trace", "stsl_oracle")
NFE_PER_STEP = {"dps": 1, "psld": 1, "stsl_no_trace": 1}  # stsl, stsl_oracle: 1 + n_probes (charged)


@dataclass
class Problem:
    """One batch of inverse problems: model (``.eps(z, t)``, ``.schedule``), autoencoder, operator, y."""

    model: object
    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]
    operator: object  # .forward(x), .pinv(y) (see operators.LinearOperator)
    y: torch.Tensor  # [B, m]
    sigma_y: float


@dataclass
class SampleResult:
    z: torch.Tensor  # [B, d] latents at t_min
    x: torch.Tensor  # [B, n] decoded
    nfe: int  # network evaluations per sample path (forward passes of the latent model)
    n_steps: int
    oracle_evals: int = 0  # stsl_oracle: evaluations of the oracle score (not network calls)


def nfe_per_step(method: str, n_probes: int = 1, n_inner: int = 1) -> int:
    """NFE of one timestep: 1 (the model at z_t), + n_probes (the score at z_t + δu) for STSL, times n_inner.
    ``stsl_oracle`` is charged as STSL (its probe is an oracle evaluation, not a network call: see ``sample``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if n_probes < 1 or n_inner < 1:
        raise ValueError(f"n_probes and n_inner must be >= 1, got {n_probes}, {n_inner}")
    per = 1 + n_probes if method in ("stsl", "stsl_oracle") else 1
    return per * n_inner


def rademacher(shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype)


def hutchinson_trace(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    n_probes: int,
    generator: torch.Generator,
    batch: int = 1,
) -> torch.Tensor:
    """Hutchinson's estimator tr(H) ≈ (1/K) Σ_k v_kᵀ H v_k, v_k Rademacher; ``matvec`` maps [B, d] -> [B, d].

    Unbiased for any square H (E[v vᵀ] = I); returns one estimate per batch row [B]."""
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    total = 0.0
    for _ in range(n_probes):
        v = rademacher((batch, dim), generator)
        total = total + (v * matvec(v)).sum(-1)
    return total / n_probes


def gluing_target(problem: Problem, x0: torch.Tensor) -> torch.Tensor:
    """PSLD's glued image A⁺y + (I − A⁺A) x0: the measured part from y, the rest from the decoded x0."""
    op = problem.operator
    return op.pinv(problem.y.to(x0.dtype)) + x0 - op.pinv(op.forward(x0))


def gluing_norm(problem: Problem, z0: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """PSLD's gluing error per row, ‖ẑ0 − E(A⁺y + (I − A⁺A) D(ẑ0))‖ (differentiable; safe at 0)."""
    d = z0 - problem.encode(gluing_target(problem, x0))
    return (d**2).sum(-1).clamp_min(1e-24).sqrt()


def _coeffs(schedule, t: float) -> tuple[float, float]:
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def _surrogate(
    problem: Problem,
    method: str,
    z: torch.Tensor,
    t: float,
    gamma: float,
    n_probes: int,
    fd_scale: float,
    generator: torch.Generator,
    trace_score=None,
    trace_t_min: float = 0.0,
):
    """Loss per row and what the DDIM step needs. Returns (loss [B], gluing norm [B] or None, residual norm
    [B], eps, z0, nfe, oracle_evals); loss = ‖r‖² (+ the trace term for STSL; for ``stsl_oracle`` with the
    score ``trace_score(z, t)`` in the finite difference, only at t >= ``trace_t_min``)."""
    model, schedule = problem.model, problem.model.schedule
    alpha, sigma = _coeffs(schedule, t)
    eps = model.eps(z, t)
    nfe = 1
    z0 = (z - sigma * eps) / alpha
    x0 = problem.decode(z0)
    r = problem.y.to(x0.dtype) - problem.operator.forward(x0)
    loss = (r**2).sum(-1)
    glue = None
    if method in ("psld", "stsl", "stsl_no_trace", "stsl_oracle") and gamma:
        glue = gluing_norm(problem, z0, x0)
    oracle = 0
    if method == "stsl_oracle" and trace_score is None:
        raise ValueError("stsl_oracle needs trace_score(z, t)")
    if method == "stsl" or (method == "stsl_oracle" and t >= trace_t_min):
        z0d = z0.detach().requires_grad_(True)
        ax = problem.operator.forward(problem.decode(z0d))
        score = -eps / sigma
        trace = 0.0
        for _ in range(n_probes):
            v = rademacher(ax.shape, generator, ax.dtype)
            (u,) = torch.autograd.grad((ax * v).sum(), z0d, retain_graph=True)  # u = J_D^T A^T v
            delta = fd_scale * sigma / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            if method == "stsl":
                score_shift = -model.eps(z + delta * u, t) / sigma
                nfe += 1
                diff = score_shift - score
            else:  # the oracle's own difference, at the same two points (no network call)
                diff = (trace_score(z + delta * u, t) - trace_score(z, t)).to(z.dtype)
                oracle += 2
            trace = trace + (u * diff).sum(-1) / delta[:, 0]
        loss = loss + (sigma**4 / alpha**2) * trace / n_probes
    return loss, glue, r.norm(dim=-1).detach(), eps, z0, nfe, oracle


def sample(
    problem: Problem,
    method: str,
    noise: torch.Tensor,
    nfe: int,
    *,
    step_size: float,
    eta: float = 0.0,
    t_start: float = 1.0,
    init: str = "noise",
    gamma: float = 0.0,
    n_probes: int = 1,
    n_inner: int = 1,
    fd_scale: float = 0.1,
    guidance: str = "dps",
    generator: torch.Generator | None = None,
    trace_score=None,
    trace_t_min: float = 0.0,
) -> SampleResult:
    """Run ``method`` with at most ``nfe`` network evaluations per sample path (see the module docstring).

    ``noise`` [B, d] is the starting noise (shared across methods for pairing); ``init="measurement"``
    starts from :math:`\\alpha_{t_0}E(A^+y) + \\sigma_{t_0}\\,\\text{noise}` at ``t_start``.
    The number of timesteps is ``nfe // nfe_per_step(method)``."""
    if guidance not in ("dps", "likelihood"):
        raise ValueError(f"guidance must be 'dps' or 'likelihood', got {guidance!r}")
    if init not in ("noise", "measurement"):
        raise ValueError(f"init must be 'noise' or 'measurement', got {init!r}")
    per = nfe_per_step(method, n_probes, n_inner)
    n_steps = nfe // per
    if n_steps < 1:
        raise ValueError(f"nfe = {nfe} buys no step of {method} ({per} NFE per step)")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    schedule = problem.model.schedule
    ts = time_grid(n_steps, kind="uniform_t", t_start=t_start, schedule=schedule).tolist()
    alpha0, sigma0 = _coeffs(schedule, ts[0])
    if init == "measurement":
        z = (
            alpha0 * problem.encode(problem.operator.pinv(problem.y.to(noise.dtype))).detach()
            + sigma0 * noise
        )
    else:
        z = sigma0 * noise
    spent = oracle_evals = 0
    for i in range(n_steps):
        t, s = ts[i], ts[i + 1]
        alpha_t, sigma_t = _coeffs(schedule, t)
        alpha_s, sigma_s = _coeffs(schedule, s)
        for k in range(n_inner):
            z = z.detach().requires_grad_(True)
            loss, glue, rnorm, eps, z0, used, used_oracle = _surrogate(
                problem, method, z, t, gamma, n_probes, fd_scale, generator, trace_score, trace_t_min
            )
            spent += used
            oracle_evals += used_oracle
            if guidance == "dps":
                objective = (loss / (2.0 * rnorm.clamp_min(1e-12))).sum()
            else:
                objective = loss.sum() / (2.0 * problem.sigma_y**2)
            if glue is not None:
                objective = objective + gamma * glue.sum()
            (grad,) = torch.autograd.grad(objective, z)
            g = step_size * grad
            if k < n_inner - 1:  # an inner gradient step at the same t
                z = (z - g).detach()
                continue
            eps, z0 = eps.detach(), z0.detach()
            if guidance == "dps":
                z = ddim_step(z0, eps, alpha_t, sigma_t, alpha_s, sigma_s, eta, generator) - g
            else:  # posterior score: eps_post = eps - sigma * grad log p(y|z) = eps + sigma * g
                eps_post = eps + sigma_t * g
                z0_post = (z.detach() - sigma_t * eps_post) / alpha_t
                z = ddim_step(z0_post, eps_post, alpha_t, sigma_t, alpha_s, sigma_s, eta, generator)
            z = z.detach()
    with torch.no_grad():
        x = problem.decode(z)
    return SampleResult(z=z, x=x, nfe=spent, n_steps=n_steps, oracle_evals=oracle_evals)


def dps(problem, noise, nfe, **kwargs) -> SampleResult:
    """Latent DPS (first-order Tweedie), no gluing term."""
    kwargs.pop("gamma", None)
    return sample(problem, "dps", noise, nfe, **kwargs)


def psld(problem, noise, nfe, **kwargs) -> SampleResult:
    """PSLD: DPS plus the gluing term γ‖ẑ0 − E(A⁺y + (I − A⁺A) D(ẑ0))‖."""
    return sample(problem, "psld", noise, nfe, **kwargs)


def stsl(problem, noise, nfe, **kwargs) -> SampleResult:
    """STSL (our reconstruction): PSLD's loss plus the Hutchinson / finite-difference trace term."""
    return sample(problem, "stsl", noise, nfe, **kwargs)


def stsl_no_trace(problem, noise, nfe, **kwargs) -> SampleResult:
    """STSL without the trace term (the ablation): 1 NFE per step, so twice the steps at equal NFE."""
    return sample(problem, "stsl_no_trace", noise, nfe, **kwargs)


def stsl_oracle(problem, noise, nfe, **kwargs) -> SampleResult:
    """STSL whose trace term uses the oracle score ``trace_score(z, t)`` (at t >= ``trace_t_min``) in place of the
    network's; ẑ0, probes, loss and step grid as STSL's. ``nfe`` counts network calls only (a diagnostic arm)."""
    return sample(problem, "stsl_oracle", noise, nfe, **kwargs)


SAMPLERS = {"dps": dps, "psld": psld, "stsl": stsl, "stsl_no_trace": stsl_no_trace, "stsl_oracle": stsl_oracle}


def per_image_psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR per row in dB (images in [-1, 1] clipped first)."""
    mse = ((x.double().clamp(-1, 1) - ref.double()) ** 2).mean(-1)
    return 20.0 * torch.log10(torch.tensor(data_range, dtype=torch.float64)) - 10.0 * torch.log10(
        mse.clamp_min(1e-20)
    )
