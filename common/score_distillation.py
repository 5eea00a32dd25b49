r"""Score-distillation gradients (SDS, DDS, PDS) on a differentiable image seen through random affine views.

Score distillation optimises a differentiable parameter θ (a NeRF, a Gaussian splat, here one canonical
image) so that its renders x = g(θ) look likely under a frozen diffusion model. Every method below returns
a *gradient with respect to the render* x, G(x); it is applied through the render with the surrogate loss

.. math:: L(\theta) = \tfrac12 \lVert x - \mathrm{sg}(x - G) \rVert^2, \qquad \partial L / \partial x = G,

so the diffusion network is never differentiated (the U-Net Jacobian is dropped, as in all three papers).
All gradients use the VP forward process :math:`x_t = \alpha_t x + \sigma_t \varepsilon` of
:mod:`common.diffusion.schedule` and any model that follows the ``eps(x, t, y)`` protocol
(:class:`common.diffusion.views.Denoiser`; classifier-free guidance is the denoiser's ``guidance_scale``).

* **SDS** (Poole et al. 2022, DreamFusion, Eq. 3):
  :math:`G_{\rm SDS} = w(t)\,(\hat\varepsilon(x_t, y) - \varepsilon)`.
* **DDS** (Hertz et al. 2023, Delta Denoising Score, Eq. 7): the same t and ε for the edited render
  :math:`x^{\rm tgt}` (target prompt) and the source render :math:`x^{\rm src}` (source prompt),
  :math:`G_{\rm DDS} = w(t)\,(\hat\varepsilon(x^{\rm tgt}_t, y^{\rm tgt}) - \hat\varepsilon(x^{\rm src}_t, y^{\rm src}))`;
  the injected noise cancels, and G = 0 when the two renders and prompts coincide.
* **PDS** (Koo et al. 2024, Posterior Distillation Sampling, Eqs. 8-10): match the *stochastic latents*
  :math:`z_t = (x_{t'} - \mu_\phi(x_t, y))/\tilde\sigma_t` of source and target, where
  :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon_t`, :math:`x_{t'} = \alpha_{t'} x_0 + \sigma_{t'}\varepsilon_{t'}`
  (ε_t, ε_{t'} shared by source and target), :math:`\mu_\phi = c_0\,\hat x_0 + c_1 x_t` the DDPM posterior mean
  evaluated at the predicted :math:`\hat x_0`, and :math:`G_{\rm PDS} = z_t^{\rm tgt} - z_t^{\rm src}`. The official
  PDS code (``pds.py``, also DreamCatalyst's) samples t on a 500-step DDIM grid, so its previous step is
  :math:`t' = t - 2/T` (``stride = 2``), while :math:`\beta_t`, :math:`\alpha_t` in :math:`c_0, c_1, \tilde\sigma_t`
  stay the one-step values of the 1000-step schedule. Written out (:func:`pds_coefficients`),
  :math:`G_{\rm PDS} = \psi_t\,(x^{\rm tgt} - x^{\rm src}) + \chi_t\,(\hat\varepsilon^{\rm tgt} - \hat\varepsilon^{\rm src})`
  with :math:`\psi_t = (\alpha_{t'} - c_0 - c_1\alpha_t)/\tilde\sigma_t` and
  :math:`\chi_t = c_0\sigma_t/(\alpha_t\tilde\sigma_t)`: DDS plus an identity-preservation term (the
  decomposition DreamCatalyst starts from), whose weight ψ_t dominates χ_t at small t. Note that with
  ``stride = 1`` the coefficients are the exact one-step posterior, :math:`c_0 + c_1\alpha_t = \alpha_{t-1}`, so
  ψ_t ≡ 0 and PDS collapses to a χ_t-weighted DDS: the identity term exists only through the official
  code's stride (checked in ``tests/common/test_score_distillation.py``).

Views: :func:`affine_views` draws K random rotations and shifts per image and warps images with
``affine_grid``/``grid_sample`` (differentiable in the image), a 2-D stand-in for multi-view renders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "affine_thetas",
    "affine_views",
    "apply_render_gradient",
    "dds_grad",
    "pds_coefficients",
    "pds_grad",
    "sds_grad",
]


def _check_t(t: torch.Tensor, schedule) -> None:
    if torch.any(t <= schedule.t_min) or torch.any(t > 1.0):
        raise ValueError(f"t must lie in ({schedule.t_min}, 1], got range [{float(t.min())}, {float(t.max())}]")


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(dtype=x.dtype, device=x.device)[:, None]


def _noised(model, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x + sigma_t eps."""
    alpha, sigma = model.schedule.alpha(t), model.schedule.sigma(t)
    return _col(alpha, x) * x + _col(sigma, x) * eps


def _prep(model, x: torch.Tensor, t, eps: torch.Tensor | None, generator) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2:
        raise ValueError(f"x must have shape [B, D], got {tuple(x.shape)}")
    t = torch.as_tensor(t, dtype=torch.float64)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    _check_t(t, model.schedule)
    if eps is None:
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if eps.shape != x.shape:
        raise ValueError(f"eps must have x's shape {tuple(x.shape)}, got {tuple(eps.shape)}")
    return t, eps


@torch.no_grad()
def sds_grad(model, x: torch.Tensor, y: torch.Tensor, t, *, eps: torch.Tensor | None = None, weight=1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    r"""SDS gradient w(t)(ε̂(x_t, y) − ε) (DreamFusion, Eq. 3), x_t = α_t x + σ_t ε.

    Args:
        model: a denoiser with ``eps(x, t, y)`` and ``.schedule``.
        x: renders [B, D] (detached inside). y: target labels [B]. t: scalar or [B] continuous times.
        eps: the injected noise (drawn from ``generator`` when None). weight: w(t), scalar or [B].
    """
    x = x.detach()
    t, eps = _prep(model, x, t, eps, generator)
    w = torch.as_tensor(weight, dtype=torch.float64).expand(x.shape[0])
    return _col(w, x) * (model.eps(_noised(model, x, t, eps), t, y) - eps)


@torch.no_grad()
def dds_grad(model, x_tgt: torch.Tensor, x_src: torch.Tensor, y_tgt: torch.Tensor, y_src: torch.Tensor, t, *,
             eps: torch.Tensor | None = None, weight=1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""DDS gradient w(t)(ε̂(x^tgt_t, y^tgt) − ε̂(x^src_t, y^src)) with shared t and ε (Hertz et al., Eq. 7)."""
    x_tgt, x_src = x_tgt.detach(), x_src.detach()
    if x_src.shape != x_tgt.shape:
        raise ValueError(f"x_src {tuple(x_src.shape)} and x_tgt {tuple(x_tgt.shape)} must have the same shape")
    t, eps = _prep(model, x_tgt, t, eps, generator)
    w = torch.as_tensor(weight, dtype=torch.float64).expand(x_tgt.shape[0])
    e_tgt, e_src = _paired_eps(model, x_tgt, x_src, y_tgt, y_src, t, eps)
    return _col(w, x_tgt) * (e_tgt - e_src)


def _paired_eps(model, x_tgt, x_src, y_tgt, y_src, t, eps):
    """ε̂ of the noised target and source renders, as one batch of 2B."""
    both = model.eps(torch.cat([_noised(model, x_tgt, t, eps), _noised(model, x_src, t, eps)]),
                     torch.cat([t, t]), torch.cat([y_tgt, y_src]))
    return both.chunk(2)


def pds_coefficients(schedule, t, stride: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""(c0, c1, σ̃_t, α_{t'}) of PDS's posterior mean at continuous t, with t' = t − stride/T.

    As in the official PDS code: :math:`\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1/T}` and
    :math:`\alpha^{\rm step}_t = 1 - \beta_t` are one-step values, :math:`\bar\alpha_{t'}` is taken ``stride`` steps
    back (``stride = 2``: 500 inference steps on 1000 training steps),
    :math:`c_0 = \sqrt{\bar\alpha_{t'}}\beta_t/(1-\bar\alpha_t)`,
    :math:`c_1 = \sqrt{\alpha^{\rm step}_t}\,(1-\bar\alpha_{t'})/(1-\bar\alpha_t)`,
    :math:`\tilde\sigma_t^2 = (1-\bar\alpha_{t'})\beta_t/(1-\bar\alpha_t)` (Ho et al. 2020, Eqs. 6-7, for stride 1).
    """
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    t = torch.as_tensor(t, dtype=torch.float64)
    t_prev = t - float(stride) / schedule.num_train_timesteps
    if torch.any(t_prev < schedule.t_min - 1e-12):
        raise ValueError(f"PDS needs t - stride/T >= t_min = {schedule.t_min}")
    abar_t = schedule.alpha(t) ** 2
    beta = 1.0 - abar_t / schedule.alpha(t - 1.0 / schedule.num_train_timesteps) ** 2
    abar_p = schedule.alpha(t_prev) ** 2
    c0 = torch.sqrt(abar_p) * beta / (1.0 - abar_t)
    c1 = torch.sqrt(1.0 - beta) * (1.0 - abar_p) / (1.0 - abar_t)
    sigma_tilde = torch.sqrt((1.0 - abar_p) * beta / (1.0 - abar_t))
    return c0, c1, sigma_tilde, torch.sqrt(abar_p)


@torch.no_grad()
def pds_grad(model, x_tgt: torch.Tensor, x_src: torch.Tensor, y_tgt: torch.Tensor, y_src: torch.Tensor, t, *,
             eps: torch.Tensor | None = None, eps_prev: torch.Tensor | None = None, stride: int = 2,
             generator: torch.Generator | None = None) -> torch.Tensor:
    r"""PDS gradient z_t^tgt − z_t^src (Koo et al., Eqs. 8-10), from the stochastic latents themselves.

    z_t = (x_{t'} − μ_φ(x_t, y)) / σ̃_t with t' = t − stride/T (official: stride 2, see
    :func:`pds_coefficients`), x_t = α_t x + σ_t ε, x_{t'} = α_{t'} x + σ_{t'} ε_prev and
    μ_φ = c0 x̂0 + c1 x_t, x̂0 = (x_t − σ_t ε̂)/α_t; ε and ε_prev are shared by source and target (so ε_prev
    cancels exactly; it is drawn to follow the paper's definition).
    """
    x_tgt, x_src = x_tgt.detach(), x_src.detach()
    if x_src.shape != x_tgt.shape:
        raise ValueError(f"x_src {tuple(x_src.shape)} and x_tgt {tuple(x_tgt.shape)} must have the same shape")
    t, eps = _prep(model, x_tgt, t, eps, generator)
    if eps_prev is None:
        eps_prev = torch.randn(x_tgt.shape, generator=generator, dtype=x_tgt.dtype)
    sch = model.schedule
    c0, c1, s_tilde, a_prev = pds_coefficients(sch, t, stride)
    t_prev = t - float(stride) / sch.num_train_timesteps
    alpha, sigma = _col(sch.alpha(t), x_tgt), _col(sch.sigma(t), x_tgt)
    e_tgt, e_src = _paired_eps(model, x_tgt, x_src, y_tgt, y_src, t, eps)

    def z(x0, e_hat):
        xt = alpha * x0 + sigma * eps
        x_prev = _col(a_prev, x0) * x0 + _col(sch.sigma(t_prev), x0) * eps_prev
        mu = _col(c0, x0) * (xt - sigma * e_hat) / alpha + _col(c1, x0) * xt
        return (x_prev - mu) / _col(s_tilde, x0)

    return z(x_tgt, e_tgt) - z(x_src, e_src)


def apply_render_gradient(render: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""The surrogate loss ½‖x − sg(x − G)‖² summed over the batch (its gradient in x is G); call ``.backward()``."""
    if render.shape != grad.shape:
        raise ValueError(f"render {tuple(render.shape)} and grad {tuple(grad.shape)} must have the same shape")
    target = (render - grad).detach()
    return 0.5 * ((render - target) ** 2).sum()


def affine_thetas(n: int, *, max_angle_deg: float = 10.0, max_shift_px: float = 1.0, side: int = 8,
                  generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """n random affine matrices [n, 2, 3] for ``affine_grid``: rotation U[−a, a] degrees, shift U[−s, s] pixels.

    Shifts are converted to ``affine_grid``'s normalised coordinates (2 / side per pixel,
    ``align_corners=False``).
    """
    if n <= 0 or side <= 0 or max_angle_deg < 0 or max_shift_px < 0:
        raise ValueError(f"need n, side > 0 and non-negative ranges, got {n}, {side}, {max_angle_deg}, {max_shift_px}")
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1
    ang = u[:, 0] * math.radians(max_angle_deg)
    shift = u[:, 1:] * max_shift_px * 2.0 / side
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return theta.to(dtype)


def affine_views(images: torch.Tensor, thetas: torch.Tensor, *, side: int = 8, background: float = -1.0) -> torch.Tensor:
    """Warp flattened images [B, side²] by thetas [B, K, 2, 3] (or [K, 2, 3], shared) -> views [B·K, side²].

    Bilinear ``grid_sample`` of (x − background) with zero padding, plus background: pixels from outside
    the image are background. Differentiable in ``images``; the identity matrix returns the image.
    """
    if images.ndim != 2 or images.shape[1] != side * side:
        raise ValueError(f"images must have shape [B, {side * side}], got {tuple(images.shape)}")
    b = images.shape[0]
    if thetas.ndim == 3:
        thetas = thetas.unsqueeze(0).expand(b, *thetas.shape)
    if thetas.ndim != 4 or thetas.shape[0] != b or thetas.shape[2:] != (2, 3):
        raise ValueError(f"thetas must have shape [B, K, 2, 3] or [K, 2, 3], got {tuple(thetas.shape)}")
    k = thetas.shape[1]
    img = (images - background).reshape(b, 1, 1, side, side).expand(b, k, 1, side, side).reshape(b * k, 1, side, side)
    grid = F.affine_grid(thetas.reshape(b * k, 2, 3).to(images.dtype), [b * k, 1, side, side], align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b * k, side * side) + background
