r"""DDIM inversion under classifier-free guidance (CFG): fixed ω, asymmetric ω = 1 → ω, fixed-point, null-embedding.

The model protocol of :mod:`common.diffusion.views` (``eps(x, t, y)``, ``.schedule``; label 10 = null).
CFG (Ho & Salimans 2022) mixes the unconditional and conditional noise predictions,

.. math::  \tilde\varepsilon_\omega(x, t) = \varepsilon_u(x, t) + \omega\,(\varepsilon_c(x, t) - \varepsilon_u(x, t)),   (1)

and the deterministic DDIM step (Song et al. 2021, Eq. 12 with η = 0) from time t to time s is

.. math::  x_s = \alpha_s \frac{x_t - \sigma_t\tilde\varepsilon}{\alpha_t} + \sigma_s\tilde\varepsilon.   (2)

**DDIM inversion** runs (2) along *increasing* times but must evaluate ε̃ at the state it starts from,
:math:`x_{t_{i+1}} = \mathrm{step}_{t_i\to t_{i+1}}(x_{t_i}, \tilde\varepsilon(x_{t_i}, t_i))`, while the generation
step it should undo uses :math:`\tilde\varepsilon(x_{t_{i+1}}, t_{i+1})`: the *approximate-noise error*
:math:`\tilde\varepsilon(x_{t_{i+1}}) - \tilde\varepsilon(x_{t_i})` (Mokady et al. 2023, Sec. 3; POLARIS, Sec. 3) is
what makes a round trip inexact, and CFG with ω > 1 amplifies it: :math:`\Delta\tilde\varepsilon_\omega =
(1 - \omega)\Delta\varepsilon_u + \omega\Delta\varepsilon_c`.

Every inversion here has the same signature ``invert_*(model, x0, ts, y, omega, ...) -> Inversion``, with
``ts`` the **decreasing** generation grid (the inversion walks it backwards, from ``ts[-1]`` to ``ts[0]``), and
:func:`reconstruct` replays an :class:`Inversion` along ``ts``:

* :func:`invert_fixed` — DDIM inversion with a fixed ω; reconstructing with the same ω is the *symmetric*
  scheme, inverting with ω = 1 and reconstructing with ω the *asymmetric* one (the editing default,
  Mokady et al. 2023, Sec. 3.1: "DDIM inversion with w = 1 ... then w = 7.5").
* :func:`invert_fixed_point` — each inversion step solved as the implicit equation
  :math:`x_{t_{i+1}} = \mathrm{step}_{t_i\to t_{i+1}}(x_{t_i}, \tilde\varepsilon(x_{t_{i+1}}, t_{i+1}))` by K fixed-point
  iterations (ReNoise, Garibi et al. 2024, Eq. 5, without its averaging and noise regularisation; also
  Pan et al. 2023 "AIDI"). When it converges the generation step undoes it exactly: an accuracy reference.
* :func:`invert_null_embedding` — null-text inversion (Mokady et al. 2023, Algorithm 1) with the null
  *label embedding* of the class-conditional MLP in place of the null text embedding: pivot = the ω = 1
  DDIM-inversion trajectory :math:`x^*_{t}`; per generation step k, minimise
  :math:`\|x^*_{t_{k+1}} - \mathrm{step}_{t_k\to t_{k+1}}(\bar x_{t_k}, \tilde\varepsilon_\omega(\bar x_{t_k}; \varnothing_k))\|^2`
  over :math:`\varnothing_k` with Adam (initialised at :math:`\varnothing_{k-1}`), then take the step.

Cost is counted in **network passes**: one conditional *or* unconditional evaluation of the batch is one
pass (a guided pair is two passes; :class:`common.diffusion.Denoiser` would count that pair as one NFE);
backward passes of the null-embedding optimisation are counted separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.diffusion.data import NULL_LABEL
from common.diffusion.model import timestep_embedding
from common.diffusion.samplers import check_times, grid_coefficients
from common.diffusion.views import batch_times, null_labels

REPLAY_ORDERS = ("time_matched", "inversion_order")


@dataclass
class Inversion:
    """The result of an inversion along the decreasing grid ``ts`` (length T + 1).

    ``x_T``: the latent at ``ts[0]`` [B, D]. ``omegas``: [T, B], the guidance used on each *generation*
    interval ``ts[k] -> ts[k+1]`` (k = 0 the noisiest), i.e. the inversion step over the same interval.
    ``null_embeddings``: [T, B, C] per generation step (null-embedding inversion only), else None.
    ``eps_used``: [T, B, D] the guided noise each inversion step used, indexed like ``omegas``.
    ``passes`` / ``backward_passes``: the network evaluations spent (see the module docstring).
    """

    x_T: torch.Tensor
    omegas: torch.Tensor
    eps_used: torch.Tensor
    passes: int
    backward_passes: int = 0
    null_embeddings: torch.Tensor | None = None
    trajectory: list = field(default_factory=list)


def _check(x0: torch.Tensor, ts, y) -> torch.Tensor:
    ts = check_times(ts)
    if float(ts[-1]) == 0.0:
        raise ValueError("the grid must end at t > 0 (use schedule.t_min for clean data)")
    if x0.ndim != 2:
        raise ValueError(f"x0 must be [B, D], got {tuple(x0.shape)}")
    if y is None or torch.as_tensor(y).shape != (x0.shape[0],):
        raise ValueError("CFG inversion needs one label per row (y of shape [B])")
    return ts


def guided_pair(model, x: torch.Tensor, t, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε_u, ε_c) at (x, t) from one stacked batch of 2B (two passes)."""
    tt = batch_times(t, x)
    both = model.eps(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null_labels(x.shape[0], x.device)]))
    eps_c, eps_u = both.chunk(2)
    return eps_u, eps_c


def cfg(eps_u: torch.Tensor, eps_c: torch.Tensor, omega) -> torch.Tensor:
    """Eq. (1): ε_u + ω (ε_c − ε_u); ``omega`` a float or a per-row [B] tensor."""
    w = torch.as_tensor(omega, dtype=eps_u.dtype)
    if w.ndim == 1:
        w = w[:, None]
    return eps_u + w * (eps_c - eps_u)


def ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: float, s_from: float, a_to: float, s_to: float) -> torch.Tensor:
    """Eq. (2): the DDIM step from (α, σ)_from to (α, σ)_to with noise estimate ``eps`` (either direction)."""
    return a_to * (x - s_from * eps) / a_from + s_to * eps


def omega_schedule(omega, n_steps: int, batch: int, dtype=torch.float64) -> torch.Tensor:
    """ω as a [T, B] table indexed by generation interval: a float (fixed ω), a [T] or a [T, B] tensor
    (e.g. another inversion's recorded ``omegas``, to invert along the same guidance path)."""
    w = torch.as_tensor(omega, dtype=dtype)
    if w.ndim == 0:
        return w.expand(n_steps, batch).clone()
    if w.ndim == 1 and w.shape[0] == n_steps:
        return w[:, None].expand(n_steps, batch).clone()
    if w.shape == (n_steps, batch):
        return w.clone()
    raise ValueError(f"omega must be a float, [T] or [T, B] with T = {n_steps}, B = {batch}; got {tuple(w.shape)}")


def _guided(model, x, t, y, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """ε̃_w(x, t) and its passes: the conditional model alone (1 pass) when w == 1 for every row, else a pair."""
    if bool((w == 1.0).all()):
        return model.eps(x, t, y), 1
    return cfg(*guided_pair(model, x, t, y), w), 2


def _coefficients(model, ts):
    c = grid_coefficients(model.schedule, ts)
    return c["t"], c["alpha"], c["sigma"]


def invert_fixed(model, x0: torch.Tensor, ts, y: torch.Tensor, omega=1.0) -> Inversion:
    """DDIM inversion with guidance ω along reversed ``ts`` (Eq. 2 with ε̃_ω of Eq. 1 at the start state).

    ``omega``: a fixed ω, or a per-step table (see :func:`omega_schedule`). A step with ω = 1 evaluates only
    the conditional model (one pass); otherwise a guided pair (two passes).
    """
    ts = _check(x0, ts, y)
    t, a, s = _coefficients(model, ts)
    n = len(ts) - 1
    omegas = omega_schedule(omega, n, x0.shape[0], x0.dtype)
    x, eps_used, traj, passes = x0, [None] * n, [x0], 0
    for k in range(n - 1, -1, -1):  # generation interval k: ts[k+1] (low noise) -> ts[k] (high noise)
        eps, p = _guided(model, x, t[k + 1], y, omegas[k])
        passes += p
        eps_used[k] = eps
        x = ddim_move(x, eps, a[k + 1], s[k + 1], a[k], s[k])
        traj.append(x)
    return Inversion(x, omegas, torch.stack(eps_used), passes, trajectory=traj)


def invert_fixed_point(model, x0: torch.Tensor, ts, y: torch.Tensor, omega=1.0, n_iter: int = 3) -> Inversion:
    r"""Fixed-point (ReNoise-style) inversion: per step, :math:`x^{(0)}` = the DDIM-inversion step, then
    :math:`x^{(j+1)} = \mathrm{step}_{t_i\to t_{i+1}}(x_{t_i}, \tilde\varepsilon_\omega(x^{(j)}, t_{i+1}))`, ``n_iter`` times.
    ``omega`` as in :func:`invert_fixed`. Passes: 2 (1 + n_iter) per step (1 + n_iter when ω = 1)."""
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    ts = _check(x0, ts, y)
    t, a, s = _coefficients(model, ts)
    n = len(ts) - 1
    omegas = omega_schedule(omega, n, x0.shape[0], x0.dtype)
    x, eps_used, traj, passes = x0, [None] * n, [x0], 0
    for k in range(n - 1, -1, -1):
        eps, p = _guided(model, x, t[k + 1], y, omegas[k])
        passes += p
        z = ddim_move(x, eps, a[k + 1], s[k + 1], a[k], s[k])
        for _ in range(n_iter):
            eps, p = _guided(model, z, t[k], y, omegas[k])
            passes += p
            z = ddim_move(x, eps, a[k + 1], s[k + 1], a[k], s[k])
        eps_used[k] = eps
        x = z
        traj.append(x)
    return Inversion(x, omegas, torch.stack(eps_used), passes, trajectory=traj)


# --- null-embedding (null-text) inversion ---------------------------------------------------------------


def _eps_with_condition(net, x: torch.Tensor, t: torch.Tensor, label_part: torch.Tensor) -> torch.Tensor:
    """The EpsMLP body with the label embedding replaced by ``label_part`` [B, C] (c = time MLP + label_part)."""
    dtype = net.input.weight.dtype
    c = net.time_mlp(timestep_embedding(t, net.config["t_embed_dim"]).to(dtype)) + label_part.to(dtype)
    h = net.input(x.to(dtype))
    for block in net.blocks:
        h = block(h, c)
    return net.output(net.out_norm(h)).to(x.dtype)


def null_embedding(net) -> torch.Tensor:
    """The trained null label's embedding row E[10] [C] (a copy)."""
    return net.label_embedding.weight[NULL_LABEL].detach().clone()


def eps_uncond_with(model, x: torch.Tensor, t, embeddings: torch.Tensor) -> torch.Tensor:
    """ε_u(x, t) with a per-row null embedding ``embeddings`` [B, C] (needs ``model.net``, an EpsMLP)."""
    net = getattr(model, "net", None)
    if net is None:
        raise ValueError("null-embedding inversion needs model.net (an EpsMLP, as load_digits_eps returns)")
    return _eps_with_condition(net, x, batch_times(t, x), embeddings)


def invert_null_embedding(model, x0: torch.Tensor, ts, y: torch.Tensor, omega: float = 7.5, n_iter: int = 10,
                          lr: float = 1e-2, tol: float = 0.0) -> Inversion:
    r"""Null-text inversion (Mokady et al. 2023, Alg. 1) with the null label embedding as the optimised variable.

    1. pivot: :math:`x^*` = ω = 1 DDIM inversion trajectory (T passes);
    2. :math:`\bar x_{t_0} = x^*_{t_0}`; for k = 0..T-1: ε_c(x̄, t_k) once (1 pass); Adam on
       :math:`\varnothing_k` (init :math:`\varnothing_{k-1}`, the trained null embedding for k = 0) for ``n_iter``
       iterations of :math:`\|x^*_{t_{k+1}} - \mathrm{step}(\bar x_{t_k}, \varepsilon_u(\bar x;\varnothing_k) + \omega(\varepsilon_c - \varepsilon_u))\|^2`
       (mean over the row; one unconditional pass and one backward each; stop early when every row's loss < ``tol``);
       then the step with the final :math:`\varnothing_k` (1 pass).

    Returns the pivot's x_T with ``omegas`` = ω and the per-step ``null_embeddings``; :func:`reconstruct`
    must use them (with ε_u from those embeddings), which makes the round trip match the pivot.
    """
    if n_iter < 1 or lr <= 0:
        raise ValueError(f"need n_iter >= 1 and lr > 0, got {n_iter}, {lr}")
    pivot = invert_fixed(model, x0, ts, y, 1.0)
    ts = check_times(ts)
    t, a, s = _coefficients(model, ts)
    n = len(ts) - 1
    targets = pivot.trajectory[::-1]  # targets[k] = x*_{ts[k]}
    x = pivot.x_T
    emb = null_embedding(model.net).to(x.dtype).expand(x.shape[0], -1).clone()
    embeddings, passes, backward = [], pivot.passes, 0
    for k in range(n):
        with torch.no_grad():
            eps_c = model.eps(x, t[k], y)
        passes += 1
        var = emb.clone().requires_grad_(True)
        opt = torch.optim.Adam([var], lr=lr)
        for _ in range(n_iter):
            with torch.enable_grad():
                eps = cfg(eps_uncond_with(model, x, t[k], var), eps_c, omega)
                loss = (targets[k + 1] - ddim_move(x, eps, a[k], s[k], a[k + 1], s[k + 1])).pow(2).mean(1)
                opt.zero_grad()
                loss.sum().backward()
            opt.step()
            passes += 1
            backward += 1
            if tol > 0 and bool((loss < tol).all()):
                break
        emb = var.detach()
        embeddings.append(emb)
        with torch.no_grad():
            eps = cfg(eps_uncond_with(model, x, t[k], emb), eps_c, omega)
        passes += 1
        x = ddim_move(x, eps, a[k], s[k], a[k + 1], s[k + 1])
    return Inversion(pivot.x_T, torch.full((n, x0.shape[0]), float(omega), dtype=x0.dtype), pivot.eps_used, passes,
                     backward, torch.stack(embeddings), pivot.trajectory)


# --- reconstruction -------------------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """``x0`` [B, D]; ``eps_used`` [T, B, D] the guided noise of each generation step; ``passes``."""

    x0: torch.Tensor
    eps_used: torch.Tensor
    passes: int


def reconstruct(model, inversion: Inversion, ts, y: torch.Tensor, omega: float | None = None,
                replay: str = "time_matched") -> Reconstruction:
    """DDIM generation along decreasing ``ts`` from ``inversion.x_T`` with guidance per step.

    ``omega`` given: that fixed ω at every step (the asymmetric scheme uses an ω = 1 inversion with
    ``omega=ω`` here). ``omega=None``: replay ``inversion.omegas``; ``replay="time_matched"`` uses on the
    generation interval ``ts[k] -> ts[k+1]`` the ω its inversion step used on the same interval;
    ``"inversion_order"`` uses the k-th ω *recorded* (the cleanest interval's ω first), as an index-by-step
    replay does. Null embeddings, if present, replace the null label's embedding step by step.
    Passes: 2 per step (1 when the step's ω is 1 for every row).
    """
    if replay not in REPLAY_ORDERS:
        raise ValueError(f"replay must be one of {REPLAY_ORDERS}, got {replay!r}")
    ts = check_times(ts)
    t, a, s = _coefficients(model, ts)
    n = len(ts) - 1
    if inversion.omegas.shape[0] != n:
        raise ValueError(f"the inversion has {inversion.omegas.shape[0]} steps, the grid {n}")
    omegas = inversion.omegas if replay == "time_matched" else inversion.omegas.flip(0)
    x, eps_all, passes = inversion.x_T, [], 0
    for k in range(n):
        w = omegas[k] if omega is None else torch.full_like(omegas[k], float(omega))
        if inversion.null_embeddings is not None:
            eps_c = model.eps(x, t[k], y)
            eps = cfg(eps_uncond_with(model, x, t[k], inversion.null_embeddings[k]), eps_c, w)
            passes += 2
        else:
            eps, p = _guided(model, x, t[k], y, w)
            passes += p
        eps_all.append(eps)
        x = ddim_move(x, eps, a[k], s[k], a[k + 1], s[k + 1])
    return Reconstruction(x, torch.stack(eps_all), passes)


__all__ = [
    "REPLAY_ORDERS",
    "Inversion",
    "cfg",
    "ddim_move",
    "eps_uncond_with",
    "guided_pair",
    "invert_fixed",
    "invert_fixed_point",
    "invert_null_embedding",
    "null_embedding",
    "omega_schedule",
    "Reconstruction",
    "reconstruct",
]
