r"""BDIA-DDIM: exact diffusion inversion by bi-directional integration approximation (Zhang, Lewis, Kleijn, ECCV 2024).

**DDIM** (Song et al. 2021) integrates the probability-flow ODE from t to s with one network call,

.. math:: \mathrm{DDIM}_{t\to s}(z) = \alpha_s\,\hat x_0(z, t) + \sigma_s\,\hat\varepsilon(z, t),
   \qquad \hat x_0 = (z - \sigma_t\hat\varepsilon)/\alpha_t .

Running it backwards (DDIM inversion) evaluates :math:`\hat\varepsilon` at the *lower* time, so inverting
and regenerating does not return to the start: the error is the solver's local error, summed.

**BDIA.** On a decreasing grid :math:`t_N > \dots > t_1 > t_0`, with one network call at
:math:`(z_i, t_i)`, BDIA applies the DDIM step twice: forward over :math:`[t_i, t_{i-1}]`,
:math:`F_i(z_i) = \mathrm{DDIM}_{t_i\to t_{i-1}}(z_i)`, and *backward* over :math:`[t_i, t_{i+1}]`,
:math:`B_i(z_i) = \mathrm{DDIM}_{t_i\to t_{i+1}}(z_i)`, and uses the backward one to re-estimate the
integral over the previous slot (paper, Sec. 4, the BDIA-DDIM update; official code
``image-editing/bdia_edict_functions.py``, ``BDIA_stablediffusion``, and
``text-to-image/.../BDIAddim.py``, ``p_sample_bdiaddim``, commit d4c9518):

.. math:: z_{i-1} = z_{i+1} - (1-\gamma)(z_{i+1} - z_i) - \gamma\,(B_i(z_i) - z_i) + (F_i(z_i) - z_i)
   = \gamma\,\big(z_{i+1} - B_i(z_i)\big) + F_i(z_i).

:math:`\gamma = 0` is plain DDIM; :math:`\gamma = 1` is the paper's original BDIA
:math:`z_{i-1} = z_{i+1} - \Delta(t_i\to t_{i+1}|z_i) + \Delta(t_i\to t_{i-1}|z_i)`. The update is linear
in :math:`(z_{i+1}, z_i, \hat\varepsilon(z_i, t_i))`, so for :math:`\gamma > 0` it can be solved for
:math:`z_{i+1}` given the pair :math:`(z_i, z_{i-1})` with the *same* network call (code lines 1294-1296):

.. math:: z_{i+1} = \big(z_{i-1} - F_i(z_i)\big)/\gamma + B_i(z_i).

Conventions (checked against the official code, which we follow):

* γ multiplies :math:`z_{i+1}` and :math:`B_i` as above (the README at commit 01514cd swaps γ and 1 - γ;
  the code and the γ = 0 -> DDIM reduction fix this reading).
* First sampling step (no :math:`z_{i+1}` yet): a plain DDIM step (the code's ``t_prev is None`` branch).
  First inversion step (from the clean image, no :math:`z_{-1}`): a plain DDIM-inversion step; from then
  on every state is an exact algebraic function of the pair, so regenerating from the *pair*
  :math:`(z_N, z_{N-1})` that the inversion returns reproduces :math:`z_0` up to rounding.
* ``BDIAddim.py`` at d4c9518 stores the previous state as ``x_last = x`` (no 0.5/0.5 averaging there);
  the EDICT-style mixing layer that ``BDIA_stablediffusion`` inherits from EDICT's code is not part of
  BDIA and is not used here.

**EDICT** (Wallace, Gokul, Naik, CVPR 2023, Eqs. 14-15) keeps two coupled sequences (x, y), each step
updating one with the noise predicted from the other, followed by mixing layers with weight p = 0.93;
every step is invertible in closed form but costs **two** network calls.

Every function only calls ``model.eps(x, t, y)`` and reads ``model.schedule`` (the repository's model
protocol), so the digits model, the analytic twins and a linear toy model all run through it.
"""

from __future__ import annotations

import torch

from common.diffusion.samplers import check_times, ddim, ddim_invert, grid_coefficients


def _ddim_map(x: torch.Tensor, eps: torch.Tensor, c: dict, i: int, j: int) -> torch.Tensor:
    """DDIM_{t_i -> t_j}(x) given eps = eps(x, t_i): alpha_j x0 + sigma_j eps."""
    x0 = (x - c["sigma"][i] * eps) / c["alpha"][i]
    return c["alpha"][j] * x0 + c["sigma"][j] * eps


def bdia_step(z_next: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, c: dict, i: int, gamma: float) -> torch.Tensor:
    r"""One BDIA-DDIM update on a decreasing grid: z_{i-1} = gamma (z_{i+1} - B_i(z_i)) + F_i(z_i).

    Indices refer to the decreasing sampling grid ``ts`` (``c`` = :func:`grid_coefficients` of it):
    ``z_next`` is the state at ``ts[i-1]`` (the noisier one, :math:`z_{i+1}` in the paper's numbering),
    ``z`` the state at ``ts[i]`` with ``eps`` = eps(z, ts[i]); the result lives at ``ts[i+1]``.
    """
    forward = _ddim_map(z, eps, c, i, i + 1)
    backward = _ddim_map(z, eps, c, i, i - 1)
    return gamma * (z_next - backward) + forward


def bdia_inverse_step(z_prev: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, c: dict, i: int, gamma: float) -> torch.Tensor:
    r"""The exact inverse of :func:`bdia_step`: z_{i+1} = (z_{i-1} - F_i(z_i)) / gamma + B_i(z_i).

    Same indexing as :func:`bdia_step` (``ts`` decreasing): ``z_prev`` at ``ts[k+1]`` (less noisy),
    ``z`` at ``ts[k]``, the result at ``ts[k-1]``.
    """
    forward = _ddim_map(z, eps, c, i, i + 1)
    backward = _ddim_map(z, eps, c, i, i - 1)
    return (z_prev - forward) / gamma + backward


def _check_gamma(gamma: float, invertible: bool) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    if invertible and gamma == 0.0:
        raise ValueError("BDIA is invertible only for gamma > 0 (gamma = 0 is DDIM)")


def bdia_sample(model, x: torch.Tensor, ts, y=None, gamma: float = 1.0, x_prev: torch.Tensor | None = None,
                return_pair: bool = False):
    r"""BDIA-DDIM sampling along decreasing ``ts`` (one NFE per step).

    ``x`` lives at ``ts[0]``. Without ``x_prev`` the first step is plain DDIM (``ts[0] -> ts[1]``);
    with ``x_prev`` (a state at ``ts[0]``) and ``x`` at ``ts[1]`` — the pair returned by
    :func:`bdia_invert` — sampling continues from ``ts[1]`` with BDIA steps only. Returns the state at
    ``ts[-1]``, or with ``return_pair=True`` the pair (state at ``ts[-2]``, state at ``ts[-1]``).
    """
    _check_gamma(gamma, invertible=False)
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    if x_prev is None:
        eps = model.eps(x, c["t"][0], y)
        z_next, z = x, _ddim_map(x, eps, c, 0, 1)
    else:
        z_next, z = x_prev, x
    for k in range(1, len(ts) - 1):
        eps = model.eps(z, c["t"][k], y)
        z_next, z = z, bdia_step(z_next, z, eps, c, k, gamma)
    return (z_next, z) if return_pair else z


def bdia_invert(model, x0: torch.Tensor, ts_increasing, y=None, gamma: float = 1.0,
                return_trajectory: bool = False):
    r"""Exact BDIA inversion along increasing ``ts`` (one NFE per step), starting from ``x0`` at ``ts[0]``.

    First step: DDIM inversion ``ts[0] -> ts[1]``; then :func:`bdia_inverse_step`. Returns the pair
    (state at ``ts[-1]``, state at ``ts[-2]``), to be passed to :func:`bdia_sample` as ``(x_prev, x)``
    with the reversed grid; with ``return_trajectory=True`` also the list of all states ``z_0 = x0, ...,
    z_N`` (as a third element).
    """
    _check_gamma(gamma, invertible=True)
    ts_up = check_times(ts_increasing, increasing=True)
    if float(ts_up[0]) == 0.0:
        raise ValueError("inversion must start at t > 0 (use schedule.t_min for clean data)")
    ts = ts_up.flip(0)  # work on the decreasing grid so that the indices match bdia_step
    c = grid_coefficients(model.schedule, ts)
    n = len(ts) - 1  # x0 lives at ts[n]
    eps = model.eps(x0, c["t"][n], y)
    z_prev, z = x0, _ddim_map(x0, eps, c, n, n - 1)
    trajectory = [x0, z]
    for k in range(n - 1, 0, -1):
        eps = model.eps(z, c["t"][k], y)
        z_prev, z = z, bdia_inverse_step(z_prev, z, eps, c, k, gamma)
        trajectory.append(z)
    return (z, z_prev, trajectory) if return_trajectory else (z, z_prev)


# --- why gamma < 1 diverges ---------------------------------------------------------------------------


def inverse_mode_roots(gamma: float) -> tuple[float, float]:
    r"""Roots of the BDIA *inversion* recurrence in the small-step limit.

    With :math:`F_i(z) \approx B_i(z) \approx z` (both DDIM maps tend to the identity as the step shrinks),
    :math:`z_{i+1} = (z_{i-1} - F_i(z_i))/\gamma + B_i(z_i)` becomes
    :math:`z_{i+1} = z_{i-1}/\gamma + (1 - 1/\gamma) z_i`, whose characteristic polynomial
    :math:`r^2 - (1 - 1/\gamma) r - 1/\gamma = (r - 1)(r + 1/\gamma)` has the roots 1 (the ODE's own,
    slowly varying solution) and :math:`-1/\gamma` (a sign-alternating parasitic mode). The first inversion
    step is a plain DDIM-inversion step, whose local error is not the BDIA-consistent state, so it excites the
    parasitic mode with an O(h^2) amplitude; for gamma < 1 that mode grows like :math:`(1/\gamma)^N` **in
    exact arithmetic** (gamma = 1: it oscillates with constant amplitude). Regeneration runs the recurrence
    backwards, where the same mode decays like gamma^N, so the round trip is still exact algebraically; in
    floating point it subtracts numbers of size :math:`|z_N|` and its error is about
    :math:`\epsilon_{mach}\,|z_N|`.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return 1.0, -1.0 / gamma


def max_abs_trajectory(trajectory) -> list[float]:
    """max |z_k| over all entries, for each state of a trajectory (inf where a state is not finite)."""
    out = []
    for z in trajectory:
        v = float(z.abs().max())
        out.append(v if v == v else float("inf"))
    return out


def growth_factor(values, tail: float = 0.5) -> float:
    r"""Per-step growth factor :math:`\exp(\text{slope})` of a least-squares line through
    :math:`\log v_k` over the last ``tail`` fraction of the steps (at least 3 points)."""
    import math

    v = [float(x) for x in values]
    k0 = min(len(v) - 3, int(len(v) * (1.0 - tail)))
    ks = list(range(max(k0, 0), len(v)))
    if len(ks) < 3 or any(not (v[k] > 0 and math.isfinite(v[k])) for k in ks):
        raise ValueError("need at least 3 positive finite values in the tail")
    xs, ys = ks, [math.log(v[k]) for k in ks]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(slope)


# --- baselines ----------------------------------------------------------------------------------------


def ddim_round_trip(model, x0: torch.Tensor, ts, y=None) -> torch.Tensor:
    """DDIM inversion along reversed ``ts`` (decreasing), then DDIM sampling back along ``ts``."""
    ts = check_times(ts)
    latent = ddim_invert(model, x0, ts.flip(0), y)
    return ddim(model, latent, ts, y)


def bdia_round_trip(model, x0: torch.Tensor, ts, y=None, gamma: float = 1.0, return_latents: bool = False):
    """BDIA inversion (keeping the last two states), then BDIA regeneration from that pair.

    With ``return_latents=True`` returns ``(regenerated, max_abs)`` where ``max_abs[k]`` is max |z_k| over the
    inversion's states k = 0..N (see :func:`max_abs_trajectory`)."""
    ts = check_times(ts)
    top, below, trajectory = bdia_invert(model, x0, ts.flip(0), y, gamma, return_trajectory=True)
    out = bdia_sample(model, below, ts, y, gamma, x_prev=top)
    return (out, max_abs_trajectory(trajectory)) if return_latents else out


def editing_grid(n_steps: int = 40, strength: float = 0.8, kind: str = "uniform_t") -> torch.Tensor:
    """The decreasing grid of an SDEdit-style edit: the last ``round(strength * n_steps)`` steps of an
    ``n_steps`` grid, i.e. inversion only up to t ~ strength (the official editing setting: 40 steps, 0.8)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    from common.diffusion.samplers import time_grid

    ts = time_grid(n_steps, kind)
    return ts[n_steps - round(strength * n_steps):]


def _edict_coefficients(c: dict, i: int) -> tuple[float, float]:
    """(a, b) of the DDIM step t_i -> t_{i+1} written as a x + b eps (EDICT Eq. 14)."""
    a = c["alpha"][i + 1] / c["alpha"][i]
    b = c["sigma"][i + 1] - a * c["sigma"][i]
    return a, b


def edict_step(model, x: torch.Tensor, y_seq: torch.Tensor, c: dict, i: int, p: float, cond=None):
    r"""One EDICT denoising step t_i -> t_{i+1} (Wallace et al. 2023, Eqs. 14-15), two NFE:

    x^inter = a x + b eps(y, t);  y^inter = a y + b eps(x^inter, t);
    x' = p x^inter + (1 - p) y^inter;  y' = p y^inter + (1 - p) x'.
    """
    a, b = _edict_coefficients(c, i)
    t = c["t"][i]
    x_inter = a * x + b * model.eps(y_seq, t, cond)
    y_inter = a * y_seq + b * model.eps(x_inter, t, cond)
    x_new = p * x_inter + (1 - p) * y_inter
    y_new = p * y_inter + (1 - p) * x_new
    return x_new, y_new


def edict_inverse_step(model, x_new: torch.Tensor, y_new: torch.Tensor, c: dict, i: int, p: float, cond=None):
    """The exact inverse of :func:`edict_step` (EDICT Eq. 16): undo the mixing, then the two updates."""
    a, b = _edict_coefficients(c, i)
    t = c["t"][i]
    y_inter = (y_new - (1 - p) * x_new) / p
    x_inter = (x_new - (1 - p) * y_inter) / p
    y_seq = (y_inter - b * model.eps(x_inter, t, cond)) / a
    x = (x_inter - b * model.eps(y_seq, t, cond)) / a
    return x, y_seq


def edict_sample(model, x: torch.Tensor, y_seq: torch.Tensor, ts, cond=None, p: float = 0.93):
    """EDICT sampling along decreasing ``ts`` from the pair (x, y_seq); returns the pair at ``ts[-1]``."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"mixing weight p must lie in (0, 1], got {p}")
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    for i in range(len(ts) - 1):
        x, y_seq = edict_step(model, x, y_seq, c, i, p, cond)
    return x, y_seq


def edict_invert(model, x0: torch.Tensor, ts, cond=None, p: float = 0.93):
    """EDICT inversion of a clean ``x0`` (pair (x0, x0) at ``ts[-1]``) up to ``ts[0]``; ``ts`` decreasing."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"mixing weight p must lie in (0, 1], got {p}")
    ts = check_times(ts)
    c = grid_coefficients(model.schedule, ts)
    x, y_seq = x0, x0.clone()
    for i in range(len(ts) - 2, -1, -1):
        x, y_seq = edict_inverse_step(model, x, y_seq, c, i, p, cond)
    return x, y_seq


def edict_round_trip(model, x0: torch.Tensor, ts, y=None, p: float = 0.93) -> torch.Tensor:
    """EDICT inversion then EDICT regeneration; returns the x sequence's final state."""
    latent_x, latent_y = edict_invert(model, x0, ts, y, p)
    return edict_sample(model, latent_x, latent_y, ts, y, p)[0]


class LinearEpsModel:
    r"""A toy model with eps(x, t) = A(t) x + b(t) (smooth in t), for exact-arithmetic tests of inversion."""

    def __init__(self, schedule, dim: int = 4, random_state: int = 0, dtype=torch.float64):
        g = torch.Generator().manual_seed(random_state)
        self.schedule = schedule
        self.a0 = 0.3 * torch.randn(dim, dim, generator=g, dtype=dtype)
        self.a1 = 0.3 * torch.randn(dim, dim, generator=g, dtype=dtype)
        self.b = torch.randn(dim, generator=g, dtype=dtype)
        self.nfe = 0

    def eps(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        self.nfe += 1
        t = float(t)
        return x @ (self.a0 + t * self.a1).T.to(x.dtype) + (t * self.b).to(x.dtype)
