r"""POLARIS (Chen et al. 2025, arXiv 2512.00369): a per-step guidance scale that minimises the approximate-noise error.

DDIM inversion under classifier-free guidance (see :mod:`common.cfg_inversion`, Eqs. 1-2) evaluates the
guided noise at the state a step *starts* from; the generation step that should undo it evaluates it at
the state the step *ends* at. With the changes of the two predictions between consecutive inversion steps,
:math:`\Delta\varepsilon_u = \varepsilon_u(x_{t_i}) - \varepsilon_u(x_{t_{i-1}})` and
:math:`\Delta\varepsilon_c = \varepsilon_c(x_{t_i}) - \varepsilon_c(x_{t_{i-1}})`, the guided change is
:math:`\Delta\tilde\varepsilon(\omega) = (1 - \omega)\Delta\varepsilon_u + \omega\Delta\varepsilon_c`. POLARIS treats ω as a
per-step variable and takes the least-squares minimiser of :math:`\|\Delta\tilde\varepsilon(\omega)\|^2`, i.e. the ω
that makes the residual orthogonal to :math:`\Delta\varepsilon_c - \Delta\varepsilon_u` ("projection-orthogonal"):

.. math::  \omega_t = \mathrm{clip}\Big(\frac{\|\Delta\varepsilon_u\|^2 - \langle\Delta\varepsilon_u, \Delta\varepsilon_c\rangle}
           {\|\Delta\varepsilon_u - \Delta\varepsilon_c\|^2},\ 0,\ \omega_{max}\Big)          (POLARIS)

(the official ``ddim_inversion_polaris``: ω = 1 on the first step and whenever the denominator is below
1e-6, ω_max = 15). The step then uses ε̃ = ε_u + ω_t (ε_c − ε_u), and generation *replays* the recorded ω_t
("During generation, the recorded ω_t sequence is replayed", paper Fig. 2). The previous step's change is a
proxy for the current one, which is unknown before the step is taken: the method costs no extra network
pass, only three inner products per step.

The official code's "dynamic exact" variant updates ω incrementally instead: with
:math:`a = (1 - \omega_{t-1})\Delta\varepsilon_u + \omega_{t-1}\Delta\varepsilon_c` and
:math:`b = \varepsilon_c(x_{t_{i-1}}) - \varepsilon_u(x_{t_{i-1}})`, :math:`\omega_t = \mathrm{clip}(\omega_{t-1} + \langle a, b\rangle
/ (\|b\|^2 + 10^{-6}), 0, 15)`.

Per sample: every quantity is computed per row of the batch (one image = one row; the official code has a
batch of one and sums over the whole latent).
"""

from __future__ import annotations

import time

import torch

from common.cfg_inversion import (
    Inversion,
    cfg,
    ddim_move,
    guided_pair,
    invert_fixed,
    invert_fixed_point,
    invert_null_embedding,
    reconstruct,
)
from common.diffusion.samplers import check_times, ddim, grid_coefficients

OMEGA_MAX = 15.0
DEN_TOL = 1e-6


def polaris_omega(d_eps_u: torch.Tensor, d_eps_c: torch.Tensor, omega_max: float = OMEGA_MAX,
                  den_tol: float = DEN_TOL, fallback: float = 1.0) -> torch.Tensor:
    """Eq. (POLARIS) per row: argmin_ω ‖(1-ω)Δε_u + ωΔε_c‖², clipped to [0, ω_max]; ``fallback`` where the
    denominator ‖Δε_u − Δε_c‖² is ≤ ``den_tol``."""
    if omega_max <= 0:
        raise ValueError(f"omega_max must be positive, got {omega_max}")
    du, dc = d_eps_u.double(), d_eps_c.double()
    num = (du * du).sum(1) - (du * dc).sum(1)
    den = ((du - dc) ** 2).sum(1)
    omega = (num / den.clamp_min(1e-300)).clamp(0.0, omega_max)
    return torch.where(den > den_tol, omega, torch.full_like(omega, fallback)).to(d_eps_u.dtype)


def dynamic_exact_omega(omega_prev: torch.Tensor, d_eps_u: torch.Tensor, d_eps_c: torch.Tensor,
                        gap_prev: torch.Tensor, omega_max: float = OMEGA_MAX, eps: float = 1e-6) -> torch.Tensor:
    """The official "dynamic exact" update: ω + ⟨a, b⟩ / (‖b‖² + eps), a = (1-ω)Δε_u + ωΔε_c, b = ε_c − ε_u
    at the previous state; clipped to [0, ω_max]."""
    w = omega_prev.double()[:, None]
    a = (1 - w) * d_eps_u.double() + w * d_eps_c.double()
    b = gap_prev.double()
    omega = omega_prev.double() + (a * b).sum(1) / ((b * b).sum(1) + eps)
    return omega.clamp(0.0, omega_max).to(omega_prev.dtype)


def invert_polaris(model, x0: torch.Tensor, ts, y: torch.Tensor, omega: float | None = None,
                   variant: str = "polaris", omega_max: float = OMEGA_MAX) -> Inversion:
    """DDIM inversion along reversed ``ts`` with a per-step, per-row ω_t (Eq. POLARIS or the dynamic-exact update).

    ``omega`` is accepted for the uniform signature of :mod:`common.cfg_inversion` and ignored: POLARIS
    chooses its own scales (the official code's reconstruction replays them, whatever ``--guidance_scale``).
    Two passes per step, as fixed-ω inversion.
    """
    if variant not in ("polaris", "dynamic_exact"):
        raise ValueError(f"variant must be 'polaris' or 'dynamic_exact', got {variant!r}")
    ts = check_times(ts)
    if x0.ndim != 2 or y is None or y.shape != (x0.shape[0],):
        raise ValueError("need x0 [B, D] and one label per row")
    c = grid_coefficients(model.schedule, ts)
    t, a, s = c["t"], c["alpha"], c["sigma"]
    n, batch = len(ts) - 1, x0.shape[0]
    x, traj, passes = x0, [x0], 0
    omegas, eps_used = torch.empty(n, batch, dtype=x0.dtype), [None] * n
    prev_u = prev_c = None
    w = torch.ones(batch, dtype=x0.dtype)
    for k in range(n - 1, -1, -1):  # the inversion step over generation interval k (low noise -> high noise)
        eps_u, eps_c = guided_pair(model, x, t[k + 1], y)
        passes += 2
        if prev_u is not None:
            if variant == "polaris":
                w = polaris_omega(eps_u - prev_u, eps_c - prev_c, omega_max)
            else:
                w = dynamic_exact_omega(w, eps_u - prev_u, eps_c - prev_c, prev_c - prev_u, omega_max)
        eps = cfg(eps_u, eps_c, w)
        omegas[k], eps_used[k] = w, eps
        x = ddim_move(x, eps, a[k + 1], s[k + 1], a[k], s[k])
        traj.append(x)
        prev_u, prev_c = eps_u, eps_c
    return Inversion(x, omegas, torch.stack(eps_used), passes, trajectory=traj)


# --- metrics ----------------------------------------------------------------------------------------------


def per_row_psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR per row in dB, 10 log10(range² / MSE), on model-space pixels in [-1, 1] (range 2)."""
    mse = (a.double() - b.double()).pow(2).mean(1).clamp_min(1e-30)
    return 10.0 * torch.log10(data_range**2 / mse)


def per_row_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root mean squared difference per row (the latent error ‖x̂_T − x_T‖ / √D)."""
    return (a.double() - b.double()).pow(2).mean(1).sqrt()


def ssim_8x8(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 3) -> torch.Tensor:
    r"""SSIM per image (Wang et al. 2004, Eq. 13) with a uniform ``window``×``window`` window (valid positions)
    on 8×8 digits, averaged over positions; C1 = (0.01 L)², C2 = (0.03 L)²."""
    side = int(round(a.shape[1] ** 0.5))
    if side * side != a.shape[1] or a.shape != b.shape:
        raise ValueError("need two [N, side²] batches of the same shape")
    x = a.double().reshape(-1, 1, side, side)
    z = b.double().reshape(-1, 1, side, side)
    pool = torch.nn.functional.avg_pool2d
    mx, mz = pool(x, window, 1), pool(z, window, 1)
    vx, vz = pool(x * x, window, 1) - mx**2, pool(z * z, window, 1) - mz**2
    cxz = pool(x * z, window, 1) - mx * mz
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * mz + c1) * (2 * cxz + c2)) / ((mx**2 + mz**2 + c1) * (vx + vz + c2))
    return s.flatten(1).mean(1)


def approx_noise_error(inversion: Inversion, eps_generation: torch.Tensor) -> torch.Tensor:
    """Per row: mean over steps of ‖ε̃_gen(x_{t_k}) − ε̃_inv(x_{t_{k+1}})‖ / √D, the approximate-noise error of the
    round trip (the generation step's guided noise against the one its inversion step used)."""
    d = eps_generation.double() - inversion.eps_used.double()
    return d.pow(2).mean(2).sqrt().mean(0)


# --- the experiments ------------------------------------------------------------------------------------

#: method -> (how to invert, how to reconstruct); ω is the target guidance scale of the comparison.
METHODS = ("fixed", "asymmetric", "polaris", "dynamic_exact", "polaris_inversion_order", "fixed_point",
           "fixed_point_polaris_path", "null_embedding", "fixed_w1")


def invert_method(model, x0, ts, y, method: str, omega: float, n_fp_iter: int = 3, nti_iter: int = 10,
                  nti_lr: float = 1e-2) -> Inversion:
    """The inversion half of ``method`` (see :func:`round_trip`)."""
    if method == "fixed":
        return invert_fixed(model, x0, ts, y, omega)
    if method in ("asymmetric", "fixed_w1"):
        return invert_fixed(model, x0, ts, y, 1.0)
    if method in ("polaris", "polaris_inversion_order"):
        return invert_polaris(model, x0, ts, y)
    if method == "dynamic_exact":
        return invert_polaris(model, x0, ts, y, variant="dynamic_exact")
    if method == "fixed_point":
        return invert_fixed_point(model, x0, ts, y, omega, n_fp_iter)
    if method == "fixed_point_polaris_path":
        return invert_fixed_point(model, x0, ts, y, invert_polaris(model, x0, ts, y).omegas, n_fp_iter)
    if method == "null_embedding":
        return invert_null_embedding(model, x0, ts, y, omega, nti_iter, nti_lr)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def round_trip(model, x0, ts, y, method: str, omega: float, **options) -> dict:
    """Invert ``x0`` (labels ``y``) and regenerate it along ``ts``; per-row metrics and the cost.

    * ``fixed``: ω inversion, ω generation (symmetric); ``asymmetric``: ω = 1 inversion, ω generation;
    * ``polaris`` / ``dynamic_exact``: per-step ω_t, replayed time-matched; ``polaris_inversion_order``: the
      same inversion replayed in recorded order (the official ``ddim_reconstruct`` indexing);
    * ``fixed_point``: ReNoise-style inversion at ω, ω generation; ``fixed_point_polaris_path``: the same
      along POLARIS's own ω_t (the exact-inversion reference for POLARIS's guidance path);
    * ``null_embedding``: null-text inversion at ω; ``fixed_w1``: ω = 1 both ways (no guidance).

    Returns ``psnr`` [B], ``approx_noise`` [B], ``omega_mean`` [B], ``passes`` (inversion + generation),
    ``inversion_passes``, ``backward_passes``, ``x0_hat``, ``inversion``, ``cpu_seconds`` (process time).
    """
    start = time.process_time()
    inv = invert_method(model, x0, ts, y, method, omega, **options)  # fixed_point_polaris_path: the fixed-point
    # inversion's own passes only (the POLARIS inversion that gave its ω_t path is not counted)
    with torch.no_grad():
        rec = reconstruct(model, inv, ts, y, omega=omega if method == "asymmetric" else None,
                          replay="inversion_order" if method == "polaris_inversion_order" else "time_matched")
    seconds = time.process_time() - start
    return {"psnr": per_row_psnr(rec.x0, x0), "approx_noise": approx_noise_error(inv, rec.eps_used),
            "omega_mean": inv.omegas.double().mean(0), "passes": inv.passes + rec.passes,
            "inversion_passes": inv.passes, "backward_passes": inv.backward_passes, "x0_hat": rec.x0,
            "inversion": inv, "cpu_seconds": seconds}


def generate(model, x_T, ts, y, omega: float) -> torch.Tensor:
    """Images from known latents: DDIM with CFG ω along ``ts`` (the shared sampler, guided view)."""
    with torch.no_grad():
        return ddim(model.with_guidance(omega), x_T, ts, y)


def latent_error(model, x_T, ts, y, method: str, omega: float, **options) -> torch.Tensor:
    """Per row ‖x̂_T − x_T‖/√D after inverting the image generated from ``x_T`` with CFG ω (ground-truth protocol)."""
    x0 = generate(model, x_T, ts, y, omega)
    inv = invert_method(model, x0, ts, y, method, omega, **options)
    return per_row_rmse(inv.x_T, x_T)


EDIT_METHODS = ("asymmetric", "fixed", "polaris", "fixed_point", "null_embedding")


def class_edit(model, x0, ts, y_source, y_target, method: str, omega: float, **options) -> torch.Tensor:
    """Invert ``x0`` with its own labels by ``method``, then regenerate along ``ts`` with ``y_target`` (the class
    label standing in for the prompt, as in prompt-to-prompt editing of a real image): ``asymmetric`` generates
    at fixed ω, the others replay what their inversion recorded (ω, ω_t, null embeddings)."""
    if method not in EDIT_METHODS:
        raise ValueError(f"method must be one of {EDIT_METHODS}, got {method!r}")
    inv = invert_method(model, x0, ts, y_source, method, omega, **options)
    with torch.no_grad():
        return reconstruct(model, inv, ts, y_target, omega=omega if method == "asymmetric" else None).x0


def target_labels(y: torch.Tensor, shift: int = 1, n_classes: int = 10) -> torch.Tensor:
    """The edit's target class (y + shift) mod n_classes."""
    if shift % n_classes == 0:
        raise ValueError("shift must change the class")
    return (y + shift) % n_classes


def tag(omega: float) -> str:
    """A metric-name component for ω: 5 -> 'w5', 7.5 -> 'w7p5'."""
    return "w" + f"{omega:g}".replace(".", "p")


__all__ = [
    "EDIT_METHODS",
    "METHODS",
    "class_edit",
    "tag",
    "target_labels",
    "generate",
    "invert_method",
    "latent_error",
    "round_trip",
    "DEN_TOL",
    "OMEGA_MAX",
    "approx_noise_error",
    "dynamic_exact_omega",
    "invert_polaris",
    "per_row_psnr",
    "per_row_rmse",
    "polaris_omega",
    "ssim_8x8",
]
