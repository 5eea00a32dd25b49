"""The ground truth of the paper: a Monte Carlo random walk in a homogeneous unit sphere ("PT").

Leonard, Höhlein and Westermann (Eurographics 2021) learn the statistics of one canonical experiment
(Section 3 of the paper; ``Scattering.cs: GetVPTSampleInSphere`` in the official code):

    A photon is scattered at the centre of a unit sphere filled with a homogeneous medium of
    extinction ``σ`` (per unit radius), single-scattering albedo ``φ`` and Henyey-Greenstein (HG)
    phase function with anisotropy ``g``; its incoming direction is ``+z``. It then alternates

    1. sample a new direction from the HG phase function around the current one,
    2. count one scattering event (``N += 1``),
    3. fly a distance ``t ~ Exp(σ)`` (``t = -log(1-ξ)/σ``); if ``t`` is at least the distance ``d``
       to the boundary, the photon leaves at ``x + d·w`` in direction ``w``.

The walk never terminates by absorption: the albedo enters as the path weight ``φ^N`` (every event,
the first at the centre included, keeps a fraction ``φ``), so the distribution of ``N`` depends on
``(σ, g)`` only and the absorption probability is ``1 - E[φ^N]`` (the "absorption identity": an analog
walk that is killed with probability ``1-φ`` at each event escapes with probability ``E[φ^N]``).

Scale invariance: a sphere of radius ``r`` and extinction ``σ`` is the unit sphere with extinction
``σ·r`` scaled by ``r``; this is what lets a sphere tracer use the unit-sphere statistics for the
largest empty sphere around any point (:mod:`.sphere_tracing`).

Henyey-Greenstein sampling (the official ``invertcdf``): with ``ξ ~ U(0,1)``,

    cos θ = (1 + g² − ((1 − g²)/(1 − g + 2gξ))²) / (2g),     E[cos θ] = g,            (HG inverse CDF)

isotropic (uniform on the sphere) when ``|g| < 0.001``, and the azimuth uniform in ``[0, 2π)``.

Encoding of the exit (``Program.cs``, the targets of the path generator): ``cos θ = x_z`` for the exit
point ``x``; with ``B = normalize(x × ẑ)`` and ``T = x × B`` (an orthonormal tangent frame of ``x``)
the exit direction ``w`` is coded by ``β = w·T`` and ``α = w·B``; its normal component
``√(1 − α² − β²)`` is non-negative because the photon leaves the sphere.

Training-set prior (``Program.cs: GenerateNewSettings``): ``σ = σ_max·u³`` (``σ_max = 300`` in the
paper), ``φ = min(1, 1.000001 − u⁶)``, ``g = clamp(2u − 1, ±0.999)``, independent uniforms ``u``.

Everything here is vectorised NumPy over walkers; every function takes an explicit ``rng``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ISOTROPIC_G = 1e-3      # |g| below this samples the uniform sphere, as the official SamplePhase


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _broadcast(value, n: int, name: str) -> np.ndarray:
    array = np.broadcast_to(np.asarray(value, dtype=float), (n,)).copy()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def sample_hg_cosine(g, rng) -> np.ndarray:
    """Cosine of the HG scattering angle by the inverse CDF (isotropic where ``|g| < 0.001``)."""
    g = np.asarray(g, dtype=float)
    if np.any(np.abs(g) >= 1):
        raise ValueError("the HG anisotropy g must lie in (-1, 1)")
    rng = _as_rng(rng)
    xi = rng.random(g.shape)
    iso = np.abs(g) < ISOTROPIC_G
    gs = np.where(iso, 0.5, g)                                     # any non-zero value; masked below
    t = (1.0 - gs * gs) / (1.0 - gs + 2.0 * gs * xi)
    cos = 0.5 * (1.0 + gs * gs - t * t) / gs
    return np.clip(np.where(iso, 2.0 * xi - 1.0, cos), -1.0, 1.0)


def orthonormal_basis(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors ``t0, t1`` with ``(t0, t1, w)`` a right-handed orthonormal frame (rows of ``w``)."""
    helper = np.where(np.abs(w[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    t0 = np.cross(w, helper)
    t0 /= np.linalg.norm(t0, axis=1, keepdims=True)
    t1 = np.cross(w, t0)
    return t0, t1


def to_world(local: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Rotate vectors given in a frame whose ``z`` is ``axis`` (any azimuth) into world coordinates."""
    t0, t1 = orthonormal_basis(axis)
    return local[:, :1] * t0 + local[:, 1:2] * t1 + local[:, 2:3] * axis


def sample_hg_direction(w: np.ndarray, g, rng) -> np.ndarray:
    """A new unit direction around ``w`` (rows) from the HG phase function with anisotropy ``g``."""
    rng = _as_rng(rng)
    cos = sample_hg_cosine(np.broadcast_to(g, (len(w),)), rng)
    sin = np.sqrt(np.maximum(0.0, 1.0 - cos * cos))
    psi = 2.0 * np.pi * rng.random(len(w))
    local = np.stack([sin * np.cos(psi), sin * np.sin(psi), cos], axis=1)
    out = to_world(local, w)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def distance_to_sphere(x: np.ndarray, w: np.ndarray, radius=1.0) -> np.ndarray:
    """Distance from ``x`` (inside) along unit ``w`` to a centred sphere: the positive root of
    ``|x + t·w|² = radius²``."""
    b = np.einsum("ij,ij->i", x, w)
    c = np.einsum("ij,ij->i", x, x) - np.asarray(radius, dtype=float) ** 2
    disc = np.maximum(b * b - c, 0.0)
    return np.maximum(0.0, -b + np.sqrt(disc))


@dataclass
class Walks:
    """Outcome of random walks started at the centre: events ``n``, exit point ``x``, direction ``w``."""

    n: np.ndarray               # int64, number of scattering events (>= 1)
    x: np.ndarray               # (m, 3) exit points on the unit sphere
    w: np.ndarray               # (m, 3) exit directions
    escaped: np.ndarray         # bool; all True unless an analog absorbing walk was asked for

    @property
    def events(self) -> int:
        """Total scattering events simulated (the cost of the ground truth)."""
        return int(self.n.sum())


def walk_in_unit_sphere(sigma, g, n_walks: int, rng, *, absorb_albedo=None, max_events: int = 10**6) -> Walks:
    """Random walks of ``GetVPTSampleInSphere`` for ``n_walks`` photons (``sigma``/``g`` scalars or per walker).

    With ``absorb_albedo=φ`` the walk is *analog*: after each event it is killed with probability
    ``1-φ`` (``escaped`` False); used only to check the absorption identity ``P(escape) = E[φ^N]``.
    """
    if n_walks < 1:
        raise ValueError(f"n_walks must be positive, got {n_walks}")
    rng = _as_rng(rng)
    sigma = _broadcast(sigma, n_walks, "sigma")
    g = _broadcast(g, n_walks, "g")
    if np.any(sigma < 0):
        raise ValueError("the extinction sigma must be non-negative")
    albedo = None if absorb_albedo is None else _broadcast(absorb_albedo, n_walks, "absorb_albedo")
    if albedo is not None and np.any((albedo < 0) | (albedo > 1)):
        raise ValueError("the albedo must lie in [0, 1]")
    n = np.zeros(n_walks, dtype=np.int64)
    x_out = np.zeros((n_walks, 3))
    w_out = np.zeros((n_walks, 3))
    escaped = np.ones(n_walks, dtype=bool)
    idx = np.arange(n_walks)
    x = np.zeros((n_walks, 3))
    w = np.tile([0.0, 0.0, 1.0], (n_walks, 1))
    for _ in range(max_events):
        if idx.size == 0:
            break
        if albedo is not None:                                        # analog absorption at this event
            alive = rng.random(idx.size) < albedo[idx]
            dead = idx[~alive]
            n[dead] += 1
            escaped[dead] = False
            x_out[dead], w_out[dead] = x[~alive], w[~alive]
            idx, x, w = idx[alive], x[alive], w[alive]
        w = sample_hg_direction(w, g[idx], rng)
        n[idx] += 1
        d = distance_to_sphere(x, w)
        s = sigma[idx]
        with np.errstate(divide="ignore"):
            t = np.where(s < 1e-5, np.inf, -np.log(np.maximum(1e-9, 1.0 - rng.random(idx.size))) / np.maximum(s, 1e-300))
        leave = t >= d
        out = idx[leave]
        x_out[out] = x[leave] + w[leave] * d[leave, None]
        w_out[out] = w[leave]
        keep = ~leave
        idx, x, w = idx[keep], x[keep] + w[keep] * t[keep, None], w[keep]
    else:
        raise RuntimeError(f"{idx.size} walks did not leave the sphere within {max_events} events")
    return Walks(n=n, x=x_out, w=w_out, escaped=escaped)


def encode_exit(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(cos θ, β, α)`` of exit points/directions (rows), the official compact encoding."""
    z = np.array([0.0, 0.0, 1.0])
    b = np.cross(x, z)
    norm = np.linalg.norm(b, axis=1, keepdims=True)
    polar = np.abs(x[:, 2]) > 0.999
    b = np.where(polar[:, None], np.array([[1.0, 0.0, 0.0]]), b / np.where(norm > 0, norm, 1.0))
    t = np.cross(x, b)
    return np.stack([x[:, 2], np.einsum("ij,ij->i", w, t), np.einsum("ij,ij->i", w, b)], axis=1)


def decode_exit(code: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Exit point and direction from ``(cos θ, β, α)`` with a uniform azimuth (the walk is symmetric
    about ``z``); out-of-range codes are projected back (``|cos θ| ≤ 1``, ``α² + β² ≤ 1``)."""
    rng = _as_rng(rng)
    cos = np.clip(code[:, 0], -1.0, 1.0)
    beta, alpha = code[:, 1].copy(), code[:, 2].copy()
    tangential = np.hypot(alpha, beta)
    scale = np.where(tangential > 1.0, 1.0 / np.maximum(tangential, 1e-12), 1.0)
    beta, alpha = beta * scale, alpha * scale
    sin = np.sqrt(np.maximum(0.0, 1.0 - cos * cos))
    psi = 2.0 * np.pi * rng.random(len(code))
    x = np.stack([sin * np.cos(psi), sin * np.sin(psi), cos], axis=1)
    z = np.array([0.0, 0.0, 1.0])
    b = np.cross(x, z)
    norm = np.linalg.norm(b, axis=1, keepdims=True)
    polar = np.abs(cos) > 0.999
    b = np.where(polar[:, None], np.array([[1.0, 0.0, 0.0]]), b / np.where(norm > 0, norm, 1.0))
    t = np.cross(x, b)
    normal = np.sqrt(np.maximum(0.0, 1.0 - alpha * alpha - beta * beta))
    w = alpha[:, None] * b + beta[:, None] * t + normal[:, None] * x
    return x, w / np.linalg.norm(w, axis=1, keepdims=True)


def sample_settings(n: int, rng, *, sigma_max: float = 300.0) -> dict:
    """Medium settings from the official training prior ``GenerateNewSettings`` (σ_max = 300 there)."""
    if sigma_max <= 0:
        raise ValueError("sigma_max must be positive")
    rng = _as_rng(rng)
    u = rng.random((3, n))
    return {"sigma": sigma_max * u[0] ** 3,
            "phi": np.minimum(1.0, 1.000001 - u[1] ** 6),
            "g": np.clip(2.0 * u[2] - 1.0, -0.999, 0.999)}


def generate_dataset(n: int, rng, *, sigma_max: float = 300.0) -> dict:
    """``n`` walks under the training prior: settings, ``N``, ``log N`` and the exit code ``(cos θ, β, α)``."""
    rng = _as_rng(rng)
    settings = sample_settings(n, rng, sigma_max=sigma_max)
    walks = walk_in_unit_sphere(settings["sigma"], settings["g"], n, rng)
    return {**settings, "n": walks.n, "log_n": np.log(walks.n), "exit": encode_exit(walks.x, walks.w),
            "events": walks.events}
