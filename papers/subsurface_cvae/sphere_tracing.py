"""Path tracing (PT) and sphere tracing (ST) of subsurface scattering in a homogeneous sphere object.

The scene (our offline proxy for the paper's renderer, Section 5): a sphere of radius ``R`` centred at
the origin, filled with a medium ``(σ, φ, g)``, lit by a parallel beam travelling along ``−z`` that
hits it uniformly over its projected disk. A path ends when it leaves the object; its energy is its
weight ``φ^{#scatters}``. We score the **reflectance** ``R`` (weight leaving with ``w_z > 0``) and the
**transmittance** ``T`` (the rest), per incident photon.

**PT** (the ground truth): free flights ``t ~ Exp(σ)`` to the next scattering event or the boundary,
HG scattering, weight ``×φ`` per event. Its cost is the number of scattering events.

**ST** (Section 4.4, "sphere tracing"): at a scattering event at ``x`` with incoming direction ``w``,
the largest empty sphere inside the object has radius ``r = R − |x|`` (the signed distance to the
boundary). If its optical radius ``σ·r`` reaches ``min_optical_radius``, one *jump* replaces the whole
walk inside that sphere: by scale invariance the walk is the unit-sphere experiment with extinction
``σ·r``, so a sampler draws ``(N, exit point, exit direction)`` in the frame whose ``z`` is ``w``, the
weight is multiplied by ``φ^N``, and the photon continues with a free flight from ``x + r·x_exit`` in
direction ``w_exit``. Otherwise (close to the boundary) it scatters as in PT. Its cost is the
PT events plus the network evaluations (two per jump: length and path generator).

A jump sampler is any ``sampler(sigma_r, g, rng) -> (n, x_local, w_local)``: :func:`exact_jump` runs the
ground-truth walk (then ST is exact in distribution, a check of the tracer itself);
:func:`cvae_jump` and :func:`table_jump` use the learned and the tabulated statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .models import Conditioning, counts_from_log, sample_model
from .scattering import decode_exit, distance_to_sphere, sample_hg_direction, to_world, walk_in_unit_sphere


@dataclass
class TraceResult:
    reflectance: float          # mean weight leaving with w_z > 0 per incident photon
    transmittance: float        # mean weight leaving with w_z <= 0
    reflectance_se: float       # standard errors over photons
    transmittance_se: float
    scatter_events: float       # mean PT scattering events per path
    jumps: float                # mean sphere-tracing jumps per path (0 for PT)
    network_evaluations: float  # 2 per jump for the CVAE sampler

    @property
    def cost(self) -> float:
        """Machine-independent cost per path: scattering events + network evaluations."""
        return self.scatter_events + self.network_evaluations


def exact_jump(sigma_r, g, rng):
    """Ground-truth jump: the unit-sphere random walk with extinction ``σ·r`` (per row)."""
    walks = walk_in_unit_sphere(sigma_r, g, len(np.atleast_1d(sigma_r)), rng)
    return walks.n, walks.x, walks.w


def cvae_jump(length_model, path_model, conditioning: Conditioning):
    """Jump sampler from the two CVAEs: ``log N ~ lenGen(σr, g)``, ``(cos θ, β, α) ~ pathGen(σr, g, log N)``."""
    def sampler(sigma_r, g, rng):
        sigma_r = np.atleast_1d(sigma_r)
        seed = int(rng.integers(2**31))
        log_n = conditioning.log_n_scale * sample_model(length_model, conditioning.length(sigma_r, g), seed)[:, 0]
        n = counts_from_log(log_n)
        code = sample_model(path_model, conditioning.path(sigma_r, g, np.log(n)), seed + 1)
        x, w = decode_exit(code, rng)
        return n, x, w
    sampler.network_evaluations = 2
    return sampler


def table_jump(table):
    """Jump sampler from a :class:`~.models.TabulatedSampler` whose values are rows ``(log N, cos θ, β, α)``."""
    def sampler(sigma_r, g, rng):
        sigma_r, g = np.atleast_1d(sigma_r), np.broadcast_to(g, np.shape(np.atleast_1d(sigma_r)))
        rows = table.sample_many(sigma_r, g, rng)
        x, w = decode_exit(rows[:, 1:], rng)
        return counts_from_log(rows[:, 0]), x, w
    sampler.network_evaluations = 0
    return sampler


def trace_sphere(sigma: float, g: float, phi: float, n_paths: int, rng, *, radius: float = 1.0, sampler=None,
                 min_optical_radius: float = 1.0, max_steps: int = 10**6) -> TraceResult:
    """PT (``sampler=None``) or ST (with a jump ``sampler``) of ``n_paths`` photons through the sphere."""
    if sigma < 0 or radius <= 0 or n_paths < 1 or not 0 <= phi <= 1:
        raise ValueError("need sigma >= 0, radius > 0, n_paths >= 1 and 0 <= phi <= 1")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    rho = radius * np.sqrt(rng.random(n_paths))
    ang = 2.0 * np.pi * rng.random(n_paths)
    x = np.stack([rho * np.cos(ang), rho * np.sin(ang), np.sqrt(np.maximum(radius ** 2 - rho ** 2, 0.0))], 1)
    w = np.tile([0.0, 0.0, -1.0], (n_paths, 1))
    log_weight = np.zeros(n_paths)
    events = np.zeros(n_paths)
    jumps = np.zeros(n_paths)
    energy_r = np.zeros(n_paths)
    energy_t = np.zeros(n_paths)
    idx = np.arange(n_paths)
    log_phi = np.log(phi) if phi > 0 else -np.inf
    for _ in range(max_steps):
        if idx.size == 0:
            break
        # free flight to the next event or the boundary
        d = distance_to_sphere(x, w, radius)
        t = -np.log(np.maximum(1e-12, 1.0 - rng.random(idx.size))) / sigma if sigma > 0 else np.full(idx.size, np.inf)
        leave = t >= d
        out = idx[leave]
        energy = np.exp(log_weight[out])
        up = w[leave, 2] > 0
        energy_r[out] = np.where(up, energy, 0.0)
        energy_t[out] = np.where(up, 0.0, energy)
        keep = ~leave
        idx, x, w = idx[keep], x[keep] + w[keep] * t[keep, None], w[keep]
        if idx.size == 0:
            break
        r = np.maximum(radius - np.linalg.norm(x, axis=1), 0.0)
        jump = (sigma * r >= min_optical_radius) if sampler is not None else np.zeros(idx.size, bool)
        step = ~jump
        if step.any():                                                 # a PT scattering event
            ids = idx[step]
            log_weight[ids] += log_phi
            events[ids] += 1
            w[step] = sample_hg_direction(w[step], g, rng)
        if jump.any():                                                 # one sphere-tracing jump
            ids = idx[jump]
            n, x_loc, w_loc = sampler(sigma * r[jump], g, rng)
            log_weight[ids] += n * log_phi
            jumps[ids] += 1
            axis = w[jump]
            x[jump] = x[jump] + r[jump, None] * to_world(x_loc, axis)
            w_new = to_world(w_loc, axis)
            w[jump] = w_new / np.linalg.norm(w_new, axis=1, keepdims=True)
    else:
        raise RuntimeError(f"{idx.size} paths did not leave within {max_steps} steps")
    net = getattr(sampler, "network_evaluations", 0) if sampler is not None else 0
    sq = np.sqrt(n_paths)
    return TraceResult(reflectance=float(energy_r.mean()), transmittance=float(energy_t.mean()),
                       reflectance_se=float(energy_r.std(ddof=1) / sq), transmittance_se=float(energy_t.std(ddof=1) / sq),
                       scatter_events=float(events.mean()), jumps=float(jumps.mean()),
                       network_evaluations=float(net * jumps.mean()))
