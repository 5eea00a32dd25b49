"""Turbo-Muon (Boissin, Massena, Mamalet, Serrurier, 2025): AOL-preconditioned Newton–Schulz.

The Newton–Schulz kernels themselves live in :mod:`common.newton_schulz` (Muon's quintic ×5,
per-iteration coefficients ×5, Turbo = AOL rescaling + four steps, and the SVD polar factor);
the optimizer in :mod:`common.muon`. This module holds the paper's experiments:

* **Inputs** (:func:`random_matrices`): Gaussian, uniform and Lévy α-stable (heavy-tailed, the
  families of the official ``benchmark.py``), plus gradient-like *decaying spectra*
  ``σ_k ∝ k^−p`` with Haar-random singular vectors, and real **momentum matrices** collected
  while training a digits MLP with Muon (:func:`collect_momenta`).
* **Polar error** ``‖NS(G) − U Vᵀ‖_F / ‖U Vᵀ‖_F`` over the factorial {Frobenius, AOL} × {fixed
  (Muon), per-iteration (Dion)} coefficients × 1..5 steps (:func:`polar_error_grid`).
* **Timing** (:func:`time_variants`, with :mod:`common.timing`): Muon ×5 vs. Turbo ×4 at
  identical inputs; the algorithmic gain is bounded by the FLOP ratio 5/4 (one iteration
  removed, the AOL Gram matrix reused); the rest of the paper's 2.8× comes from Triton kernels.
* **End-to-end** (:func:`train_muon_mlp`): the same MLP trained with Muon on the standard and on
  the Turbo backend, same seeds and hyperparameters, compared per seed (:func:`compare_backends`:
  paired differences of loss and accuracy, step-time and NS-time ratios, Amdahl's prediction).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from common import newton_schulz as ns
from common import stats
from common.muon import Muon, split_muon_params
from common.smallnets import MLP, evaluate, load_digits_data, train_classifier
from common.timing import compare

FAMILIES = ("gaussian", "uniform", "levy", "decay_0.5", "decay_1")


def levy_stable(shape: Sequence[int], alpha: float = 1.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Symmetric α-stable samples (β = 0) by the Chambers–Mallows–Stuck method.

    ``V ~ U(−π/2, π/2)``, ``W ~ Exp(1)``:
    ``X = sin(αV) / cos(V)^{1/α} · (cos((1 − α)V) / W)^{(1 − α)/α}``.
    """
    if not 0 < alpha <= 2:
        raise ValueError(f"alpha must be in (0, 2], got {alpha}")
    V = (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    W = -torch.log1p(-torch.rand(shape, generator=generator, dtype=torch.float64))
    if alpha == 1:
        return torch.tan(V).float()
    X = torch.sin(alpha * V) / torch.cos(V) ** (1 / alpha) * (torch.cos((1 - alpha) * V) / W) ** ((1 - alpha) / alpha)
    return X.float()


def decaying_spectrum(batch: int, rows: int, cols: int, power: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``U diag(k^−power) Vᵀ`` with Haar-random ``U, V`` (QR of Gaussians, sign-fixed)."""
    r = min(rows, cols)

    def haar(n: int, k: int) -> torch.Tensor:
        Q, R = torch.linalg.qr(torch.randn(batch, n, k, generator=generator, dtype=torch.float64))
        return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)

    sigma = torch.arange(1, r + 1, dtype=torch.float64) ** (-power)
    return ((haar(rows, r) * sigma) @ haar(cols, r).mT).float()


def random_matrices(family: str, batch: int, rows: int, cols: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``(batch, rows, cols)`` float32 stack from one of :data:`FAMILIES`."""
    if min(batch, rows, cols) < 1:
        raise ValueError("batch, rows and cols must be positive")
    shape = (batch, rows, cols)
    if family == "gaussian":
        return torch.randn(shape, generator=generator)
    if family == "uniform":
        return torch.rand(shape, generator=generator) * 2 - 1
    if family == "levy":
        return levy_stable(shape, 1.5, generator)
    if family.startswith("decay_"):
        return decaying_spectrum(batch, rows, cols, float(family.split("_", 1)[1]), generator)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def polar_error_grid(G: torch.Tensor, steps: Sequence[int] = (1, 2, 3, 4, 5),
                     preconditioners: Sequence[str] = ns.PRECONDITIONERS,
                     schedules: Sequence[str] = ns.SCHEDULES, reduce: bool = True) -> dict:
    """Polar error of every (preconditioner, schedule, steps) cell on the stack ``G``.

    ``reduce=True``: the mean over the stack (a float per cell); ``False``: the per-matrix errors
    (a float64 tensor of the stack's batch shape per cell).
    """
    polar = ns.polar_svd(G)
    grid = {}
    for pre in preconditioners:
        for sched in schedules:
            for k in steps:
                err = ns.polar_error(ns.newton_schulz(G, k, sched, pre), G, polar)
                grid[(pre, sched, k)] = float(err.mean()) if reduce else err
    return grid


def aol_win_fraction(grid: dict) -> tuple[int, int]:
    """``(wins, cells)``: how often AOL's error is below Frobenius's at the same schedule and steps.

    ``grid`` is a :func:`polar_error_grid`; with ``reduce=False`` every matrix of the stack is a cell.
    """
    wins = total = 0
    for (pre, sched, k), err in grid.items():
        if pre != "aol" or ("frobenius", sched, k) not in grid:
            continue
        diff = torch.as_tensor(err) < torch.as_tensor(grid[("frobenius", sched, k)])
        wins += int(diff.sum())
        total += diff.numel()
    return wins, total


#: Equal-step companions of the named variants: ``name: (steps, schedule, preconditioner)``.
EQUAL_STEP_VARIANTS = {"muon4": (4, "muon", "frobenius"), "muon_plus4": (4, "dion", "frobenius"),
                       "turbo5": (5, "dion", "aol")}


def variant_errors(G: torch.Tensor) -> dict[str, float]:
    """Mean polar error of the named variants, their equal-step companions and the AOL floor.

    Named: Muon ×5, Muon+ ×5, Turbo ×4. Equal-step companions (:data:`EQUAL_STEP_VARIANTS`):
    ``muon4`` and ``muon_plus4`` (Frobenius ×4, to compare with Turbo ×4) and ``turbo5`` (AOL +
    per-iteration ×5, to compare with Muon ×5 / Muon+ ×5), so that "one step fewer" and "AOL
    instead of Frobenius" can be told apart. ``aol_floor`` is ``‖polar(diag(s)X) − polar(G)‖_F /
    ‖polar(G)‖_F`` (:func:`common.newton_schulz.aol_polar_limit`, short side first): AOL rescales
    the rows, so Newton–Schulz after AOL converges to the polar factor of the *rescaled* matrix.
    """
    polar = ns.polar_svd(G)
    out = {name: float(ns.polar_error(fn(G), G, polar).mean()) for name, fn in ns.VARIANTS.items()}
    for name, (k, sched, pre) in EQUAL_STEP_VARIANTS.items():
        out[name] = float(ns.polar_error(ns.newton_schulz(G, k, sched, pre), G, polar).mean())
    out["aol_floor"] = float(ns.polar_error(ns.aol_polar_limit(G), G, polar).mean())
    return out


def spectrum_profile(G: torch.Tensor, ks: Sequence[int] = (8, 32)) -> dict[str, float]:
    """Median over the stack of ``σ_k / σ_1`` for each ``k`` in ``ks`` (1-based), of the fraction of
    singular values above ``1e-3·σ_1``, and of ``σ_1 / ‖G‖_F`` (how much the Frobenius scaling shrinks).
    """
    sv = torch.linalg.svdvals(_short_side_first(G).double())
    if max(ks) > sv.size(-1) or min(ks) < 1:
        raise ValueError(f"ks must lie in 1..{sv.size(-1)}, got {list(ks)}")
    ratio = sv / sv[..., :1]
    out = {f"sigma{k}_over_sigma1": float(ratio[..., k - 1].median()) for k in ks}
    out["fraction_above_thousandth"] = float((ratio > 1e-3).double().mean(-1).median())
    out["sigma1_over_fro"] = float((sv[..., 0] / sv.norm(dim=-1)).median())
    return out


def tail_error_share(X: torch.Tensor, G: torch.Tensor, head: int) -> float:
    """Mean share of the squared polar error outside the top-``head`` singular directions of ``G``.

    With ``G = U Σ Vᵀ`` (descending σ) and ``E = Uᵀ (X − U Vᵀ) V``, the share is
    ``1 − ‖E[:head, :head]‖²_F / ‖E‖²_F``: near 1 when the error sits in the directions of the small
    singular values (the ill-conditioned part of the polar factor).
    """
    U, _, Vh = torch.linalg.svd(_short_side_first(G).double(), full_matrices=False)
    X = _short_side_first(X).double()
    E = U.mT @ (X - U @ Vh) @ Vh.mT
    total = (E ** 2).sum((-2, -1))
    top = (E[..., :head, :head] ** 2).sum((-2, -1))
    share = torch.where(total > 0, 1 - top / total.clamp_min(1e-300), torch.zeros_like(total))
    return float(share.mean())


def _short_side_first(G: torch.Tensor) -> torch.Tensor:
    return G.mT if G.size(-2) > G.size(-1) else G


def aol_sigma_max(G: torch.Tensor) -> float:
    """Largest spectral norm of ``diag(s) X`` after AOL over the stack (short side first)."""
    X = G.mT if G.size(-2) > G.size(-1) else G
    scaled, _ = ns.aol_rescale(X)
    return float(torch.linalg.matrix_norm(scaled.double(), ord=2).max())


def collect_momenta(epochs: int = 3, hidden: int = 128, every: int = 10, random_state: int = 0,
                    backend: str = "muon") -> torch.Tensor:
    """Momentum matrices of the hidden ``hidden × hidden`` layer of a digits MLP trained with Muon.

    Returns a ``(K, hidden, hidden)`` stack, one snapshot every ``every`` optimizer steps.
    """
    torch.manual_seed(random_state)
    data = load_digits_data(random_state=random_state)
    model = MLP(64, (hidden, hidden), 10)
    muon_params, other = split_muon_params(model, head="layers.2")
    muon = Muon(muon_params, lr=0.02, backend=backend)
    adam = torch.optim.AdamW(other, lr=3e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
    target = model.layers[1].weight
    snapshots = []

    def grab(epoch: int, step: int) -> None:
        if step % every == 0:
            snapshots.append(muon.state[target]["momentum_buffer"].detach().clone())

    train_classifier(model, data.X_train, data.y_train, [muon, adam], epochs=epochs, batch_size=64,
                     generator=torch.Generator().manual_seed(random_state), callback=grab)
    if not snapshots:
        raise ValueError("no momentum snapshot taken; lower `every` or raise `epochs`")
    return torch.stack(snapshots)


def time_variants(G: torch.Tensor, settings: dict[str, tuple[int, str, str]], repeats: int = 15, warmup: int = 3,
                  threads: int | None = 2):
    """:func:`common.timing.compare` over ``{name: (steps, schedule, preconditioner)}`` on ``G``."""
    methods = {name: (lambda k=k, s=s, p=p: ns.newton_schulz(G, k, s, p)) for name, (k, s, p) in settings.items()}
    return compare(methods, repeats=repeats, warmup=warmup, threads=threads)


def aol_overhead_fraction(G: torch.Tensor, repeats: int = 15, threads: int | None = 2) -> float:
    """Median time of AOL's extra work (abs, row sums, rsqrt, two scalings) over one Turbo ×4 call."""
    X = G.mT if G.size(-2) > G.size(-1) else G
    A = X @ X.mT

    def overhead():
        s = torch.rsqrt(A.abs().sum(-1).clamp_min(1e-7))
        return X * s.unsqueeze(-1), A * s.unsqueeze(-1) * s.unsqueeze(-2)

    result = compare({"overhead": overhead, "turbo": lambda: ns.turbo_ns4(G)}, repeats=repeats, warmup=2,
                     threads=threads)
    return result.timings["overhead"].median / result.timings["turbo"].median


def train_muon_mlp(backend: str, seed: int, epochs: int = 15, hidden: int = 128, lr: float = 0.02,
                   adam_lr: float = 3e-3, batch_size: int = 64) -> dict[str, float]:
    """Train a digits MLP ``64 → hidden → hidden → 10``: Muon on the hidden matrices, AdamW elsewhere.

    Identical seeds give identical initialisation and batch order for every backend, so the
    backends differ only in the orthogonalizer. Returns final train/test loss and accuracy,
    seconds per step and the fraction of step time spent in Newton–Schulz.
    """
    torch.manual_seed(seed)
    data = load_digits_data(random_state=0)
    model = MLP(64, (hidden, hidden), 10)
    muon_params, other = split_muon_params(model, head=f"layers.{len(model.layers) - 1}")
    orthogonalize = ns.VARIANTS[backend]
    ns_seconds = [0.0]

    def timed(U: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = orthogonalize(U)
        ns_seconds[0] += time.perf_counter() - start
        return out

    muon = Muon(muon_params, lr=lr, backend=timed)
    adam = torch.optim.AdamW(other, lr=adam_lr, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
    steps = [0]
    start = time.perf_counter()
    train_classifier(model, data.X_train, data.y_train, [muon, adam], epochs=epochs, batch_size=batch_size,
                     generator=torch.Generator().manual_seed(seed),
                     callback=lambda e, s: steps.__setitem__(0, s))
    elapsed = time.perf_counter() - start
    train_loss, train_acc = evaluate(model, data.X_train, data.y_train)
    test_loss, test_acc = evaluate(model, data.X_test, data.y_test)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "step_seconds": elapsed / max(steps[0], 1), "ns_seconds": ns_seconds[0] / max(steps[0], 1),
            "ns_fraction": ns_seconds[0] / elapsed}


def compare_backends(base: Sequence[dict[str, float]], other: Sequence[dict[str, float]],
                     confidence: float = 0.95) -> dict[str, stats.Interval]:
    """Paired comparison of two backends' :func:`train_muon_mlp` runs over the same seeds (``other − base``).

    Returns intervals for ``test_loss`` and ``test_acc`` (paired differences, Student t), for the
    end-to-end step-time ratio ``step = base / other`` and the Newton–Schulz time ratio ``ns``
    (ratios of means, paired bootstrap), and ``amdahl``: the end-to-end speed-up the NS ratio
    predicts, ``1 / (1 − f·(1 − 1/r_ns))`` with ``f`` the base's NS fraction of the step (its
    interval maps the NS ratio's bounds at the mean ``f``).
    """
    if len(base) != len(other) or len(base) < 2:
        raise ValueError("need the same seeds (at least 2) for both backends")
    col = {key: (np.array([r[key] for r in other]), np.array([r[key] for r in base]))
           for key in ("test_loss", "test_acc", "step_seconds", "ns_seconds")}
    out = {key: stats.paired_difference(*col[key], confidence=confidence) for key in ("test_loss", "test_acc")}
    out["step"] = stats.ratio_of_means(col["step_seconds"][1], col["step_seconds"][0], confidence=confidence)
    ns_ratio = out["ns"] = stats.ratio_of_means(col["ns_seconds"][1], col["ns_seconds"][0], confidence=confidence)
    f = float(np.mean([r["ns_seconds"] / r["step_seconds"] for r in base]))
    out["amdahl"] = stats.Interval(amdahl_speedup(f, ns_ratio.estimate), amdahl_speedup(f, ns_ratio.lo),
                                   amdahl_speedup(f, ns_ratio.hi), ns_ratio.n, confidence, "bootstrap (mapped)")
    return out


def amdahl_speedup(ns_share: float, ns_ratio: float) -> float:
    """End-to-end speed-up when a share ``ns_share`` of the step gets ``ns_ratio`` times faster (Amdahl's law)."""
    if not 0 <= ns_share <= 1 or ns_ratio <= 0:
        raise ValueError(f"need 0 <= ns_share <= 1 and ns_ratio > 0, got {ns_share}, {ns_ratio}")
    return 1.0 / (1.0 - ns_share * (1.0 - 1.0 / ns_ratio))


def update_rms(X: torch.Tensor) -> float:
    """Mean over the stack of ``‖X‖_F / √min(rows, cols)``: 1 for an exact polar factor of a full-rank input."""
    return float((torch.linalg.matrix_norm(X.double()) / min(X.shape[-2:]) ** 0.5).mean())


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (ddof = 1) of a sample."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("need at least one value")
    se = float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else 0.0
    return float(arr.mean()), se


def gpu_compiled_timing(shapes: Sequence[tuple[int, int, int]] = ((8, 1024, 1024), (8, 4096, 4096), (1, 768, 3072)),
                        repeats: int = 20, warmup: int = 5, random_state: int = 0) -> dict[str, dict[str, float]]:
    """GPU bfloat16 timing of ``torch.compile``-d Muon ×5 and Turbo ×4 (``dynamic=False``), per shape.

    Both variants are pure PyTorch, so the ratio is the algorithmic part only (ideal 1.25×).
    Returns ``{"BxMxN": {"muon_ms", "turbo_ms", "ratio", "ratio_iqr", "muon_perr", "turbo_perr"}}``.
    Requires CUDA; raises ``RuntimeError`` otherwise.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_compiled_timing needs a CUDA device")
    muon = torch.compile(lambda G: ns.muon_ns5(G, dtype=torch.bfloat16), dynamic=False)
    turbo = torch.compile(lambda G: ns.turbo_ns4(G, dtype=torch.bfloat16), dynamic=False)
    gen = torch.Generator(device="cuda").manual_seed(random_state)
    out = {}
    for b, m, n in shapes:
        G = torch.randn(b, m, n, device="cuda", generator=gen)
        result = compare({"muon": lambda G=G: muon(G), "turbo": lambda G=G: turbo(G)}, repeats=repeats, warmup=warmup)
        polar = ns.polar_svd(G[:1].cpu())
        out[f"{b}x{m}x{n}"] = {
            "muon_ms": 1e3 * result.timings["muon"].median, "turbo_ms": 1e3 * result.timings["turbo"].median,
            "ratio": result.ratio("muon", "turbo"), "ratio_iqr": result.ratio_iqr("muon", "turbo"),
            "muon_perr": float(ns.polar_error(muon(G[:1]).float().cpu(), G[:1].cpu(), polar).mean()),
            "turbo_perr": float(ns.polar_error(turbo(G[:1]).float().cpu(), G[:1].cpu(), polar).mean()),
        }
    return out
