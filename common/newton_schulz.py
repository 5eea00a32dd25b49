"""Newton–Schulz orthogonalization: Muon's quintic, per-iteration coefficients and Turbo (AOL).

Muon replaces a gradient (or momentum) matrix ``G = U Σ Vᵀ`` by (an approximation of) its
**polar factor** ``polar(G) = U Vᵀ``. Computing it with an SVD is slow on accelerators, so
Muon runs a few steps of an odd matrix polynomial that pushes every singular value towards 1:

    A = X Xᵀ,   B = b·A + c·A²,   X ← a·X + B·X        (one quintic step)          (1)

which maps each singular value ``σ ↦ a·σ + b·σ³ + c·σ⁵`` and leaves ``U, V`` untouched. The
iteration only converges for ``σ ≤ 1`` (roughly ``σ < 1.2`` for these coefficients), so the
input must first be scaled so that ``‖X‖₂ ≤ 1``. The variants differ in that scaling and in
the coefficients:

* **Muon** (Keller Jordan): ``X ← X / (‖X‖_F + 1e-7)`` (the Frobenius norm bounds the
  spectral norm), then five steps of (1) with the fixed ``(a, b, c) = (3.4445, −4.7750,
  2.0315)``, chosen to maximise the slope at 0. It does **not** converge to ``U Vᵀ``: the
  output's singular values oscillate in roughly ``(0.7, 1.2)`` by design.
* **Per-iteration coefficients** ("Muon+", the five triples by @YouJiacheng used in Dion and
  Megatron): step ``k`` uses its own ``(a_k, b_k, c_k)`` (:data:`DION_COEFFICIENTS`); with
  ``k`` steps the *last* ``k`` triples are used.
* **Turbo-Muon** (Boissin et al., 2025, arXiv 2512.04632): the Frobenius scaling is replaced by
  **AOL** rescaling (Almost-Orthogonal Layers, Prach & Lampert 2022). With ``A = X Xᵀ``,

      s_i = 1 / sqrt(max(Σ_j |A_ij|, ε)),   X ← diag(s)·X,   A ← diag(s)·A·diag(s)        (2)

  (ε = 1e-7). The AOL theorem gives ``‖diag(s) X‖₂ ≤ 1``: since ``diag(s) A diag(s)`` is
  symmetric, its spectral norm is at most its max row sum, and
  ``Σ_j s_i |A_ij| s_j ≤ ½ Σ_j (s_i² + s_j²)|A_ij| ≤ 1`` (Schur test). The rescaled Gram
  matrix is **reused** as the first step's ``A`` (no extra matmul), and four steps follow with
  the last four per-iteration triples. The scaling is much tighter than ``‖X‖_F``, which shrinks
  every singular value by up to ``√rank``, so fewer steps reach the same error.

Cost per step (1) for an ``m × n`` input with ``m ≤ n`` (the short side goes first, so ``A`` is
``m × m``; wide/tall inputs are transposed as in Muon): ``2m²n`` for ``X Xᵀ``, ``2m³`` for ``A²``
and ``2m²n`` for ``B X``, i.e. ``4m²n + 2m³`` FLOPs. Turbo ×4 therefore does 4/5 of the matmul
FLOPs of Muon ×5 (:func:`ns_flops`); the AOL overhead (abs, row sums, rsqrt, two scalings) is
``O(m² + mn)``.

Every function works on a single matrix or a batch ``(..., rows, cols)``, in float32 or
bfloat16, on CPU or CUDA. :func:`polar_svd` is the exact reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Coefficients = tuple[float, float, float]

#: Keller Jordan's fixed quintic coefficients (Muon, ``zeropower_via_newtonschulz5``).
MUON_COEFFICIENTS: Coefficients = (3.4445, -4.7750, 2.0315)

#: Per-iteration coefficients (@YouJiacheng; Dion; Megatron "quintic_new"); ``k`` steps use the
#: last ``k`` rows. Turbo-Muon's four steps drop the first row.
DION_COEFFICIENTS: tuple[Coefficients, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

PRECONDITIONERS = ("frobenius", "aol")
SCHEDULES = ("muon", "dion")


def coefficient_schedule(schedule: str | Sequence[Coefficients], steps: int) -> list[Coefficients]:
    """The ``(a, b, c)`` triple of each of ``steps`` iterations.

    ``"muon"`` repeats :data:`MUON_COEFFICIENTS`; ``"dion"`` takes the last ``steps`` rows of
    :data:`DION_COEFFICIENTS` (beyond five steps the last row is repeated first); an explicit
    sequence of triples must have exactly ``steps`` entries.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(schedule, str):
        if schedule == "muon":
            return [MUON_COEFFICIENTS] * steps
        if schedule == "dion":
            table = list(DION_COEFFICIENTS)
            if steps > len(table):
                table = [table[-1]] * (steps - len(table)) + table
            return table[len(table) - steps:] if steps else []
        raise ValueError(f"unknown coefficient schedule {schedule!r}; use one of {SCHEDULES} or a list of triples")
    triples = [tuple(float(v) for v in t) for t in schedule]
    if len(triples) != steps or any(len(t) != 3 for t in triples):
        raise ValueError(f"need exactly {steps} (a, b, c) triples, got {len(triples)}")
    return triples  # type: ignore[return-value]


def _as_matrix_batch(G: torch.Tensor) -> torch.Tensor:
    if G.ndim < 2:
        raise ValueError(f"expected a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    return G


def frobenius_normalize(X: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Muon's scaling ``X / (‖X‖_F + eps)`` per matrix; guarantees ``‖X‖₂ ≤ 1``."""
    X = _as_matrix_batch(X)
    return X / (torch.linalg.matrix_norm(X, ord="fro", keepdim=True) + eps)


def aol_rescale(X: torch.Tensor, eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """AOL rescaling, Eq. (2): returns ``(diag(s) X, diag(s) A diag(s))`` with ``A = X Xᵀ``.

    ``X`` is ``(..., m, n)`` and the rows (the ``m`` side) are rescaled; call it with ``m ≤ n``
    (as :func:`newton_schulz` does) so the Gram matrix is the small one. The returned Gram
    matrix is exactly ``X' X'ᵀ`` of the returned ``X'`` and is reused as the first iteration's
    ``A``. The rescaled matrix has spectral norm at most 1 (in exact arithmetic).
    """
    X = _as_matrix_batch(X)
    A = X @ X.mT
    row_sums = A.abs().sum(dim=-1)
    s = torch.rsqrt(row_sums.clamp_min(eps))
    X = X * s.unsqueeze(-1)
    A = A * s.unsqueeze(-1) * s.unsqueeze(-2)
    return X, A


def aol_polar_limit(G: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The limit of Newton–Schulz after AOL: ``polar(diag(s)·X)`` on the short side, in float64.

    AOL rescales the rows of the short-side matrix (tall inputs are transposed first, as in
    :func:`newton_schulz`), so a converging iteration ends at the polar factor of the *rescaled*
    matrix, not at ``polar(G)``. Returned in ``G``'s orientation (tall inputs transposed back).
    """
    X = _as_matrix_batch(G).to(torch.float64)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    scaled, _ = aol_rescale(X, eps)
    P = polar_svd(scaled)
    return P.mT if transposed else P


def newton_schulz(G: torch.Tensor, steps: int = 5, schedule: str | Sequence[Coefficients] = "muon",
                  preconditioner: str = "frobenius", *, dtype: torch.dtype | None = None,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximate ``polar(G) = U Vᵀ`` by ``steps`` quintic Newton–Schulz iterations, Eq. (1).

    Args:
        G: ``(..., rows, cols)``; tall inputs are transposed so the short side comes first
            (as Muon does) and transposed back at the end.
        steps: number of iterations (Muon: 5; Turbo: 4).
        schedule: ``"muon"`` (fixed coefficients), ``"dion"`` (per-iteration) or explicit triples.
        preconditioner: ``"frobenius"`` (Muon) or ``"aol"`` (Turbo, Eq. 2; its Gram matrix is
            reused by the first iteration).
        dtype: compute dtype (default: ``G``'s dtype; ``torch.bfloat16`` as in Muon on GPU).
    Returns:
        A tensor of ``G``'s shape in the compute dtype.
    """
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"unknown preconditioner {preconditioner!r}; use one of {PRECONDITIONERS}")
    coefficients = coefficient_schedule(schedule, steps)
    X = _as_matrix_batch(G).to(dtype or G.dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    A = None
    if preconditioner == "aol":
        X, A = aol_rescale(X, eps)
    else:
        X = frobenius_normalize(X, eps)
    for a, b, c in coefficients:
        if A is None:
            A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
        A = None
    return X.mT if transposed else X


def muon_ns5(G: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Muon's reference: Frobenius scaling + five steps of the fixed quintic."""
    return newton_schulz(G, 5, "muon", "frobenius", dtype=dtype)


def muon_plus_ns5(G: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Frobenius scaling + five steps with per-iteration coefficients ("Muon+")."""
    return newton_schulz(G, 5, "dion", "frobenius", dtype=dtype)


def turbo_ns4(G: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Turbo-Muon: AOL rescaling (Gram matrix reused) + the last four per-iteration steps."""
    return newton_schulz(G, 4, "dion", "aol", dtype=dtype)


def polar_svd(G: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The exact polar factor ``U Vᵀ`` from a thin SVD (computed in ``dtype``, default float64)."""
    U, _, Vh = torch.linalg.svd(_as_matrix_batch(G).to(dtype), full_matrices=False)
    return U @ Vh


#: The named variants, each ``f(G, dtype=None) -> approximately polar(G)``.
VARIANTS = {"muon": muon_ns5, "muon_plus": muon_plus_ns5, "turbo": turbo_ns4}


def polar_error(X: torch.Tensor, G: torch.Tensor, polar: torch.Tensor | None = None) -> torch.Tensor:
    """Relative polar error ``‖X − U Vᵀ‖_F / ‖U Vᵀ‖_F`` per matrix (float64)."""
    P = polar_svd(G) if polar is None else polar.to(torch.float64)
    X = X.to(torch.float64)
    return torch.linalg.matrix_norm(X - P) / torch.linalg.matrix_norm(P)


def orthogonality_error(X: torch.Tensor) -> torch.Tensor:
    """``‖X Xᵀ − I‖_F / √m`` on the short side ``m`` (0 for an exactly orthogonal ``X``)."""
    X = _as_matrix_batch(X).to(torch.float64)
    if X.size(-2) > X.size(-1):
        X = X.mT
    m = X.size(-2)
    eye = torch.eye(m, dtype=X.dtype, device=X.device)
    return torch.linalg.matrix_norm(X @ X.mT - eye) / m ** 0.5


def ns_flops(rows: int, cols: int, steps: int, preconditioner: str = "frobenius") -> dict[str, int]:
    """FLOP count of :func:`newton_schulz` on one ``rows × cols`` matrix.

    ``matmul``: ``steps·(4m²n + 2m³)`` with ``m = min(rows, cols)``, ``n = max`` (AOL's Gram
    matrix is the first step's ``A``, so it adds none). ``overhead``: the elementwise scaling
    (Frobenius: square-sum and divide, ``3mn``; AOL: abs + row sums ``2m²``, rescaling ``mn + 2m²``)
    plus the polynomial's additions and scalings (``3m² + 2mn`` per step).
    """
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"unknown preconditioner {preconditioner!r}")
    if rows <= 0 or cols <= 0 or steps < 0:
        raise ValueError("rows and cols must be positive and steps non-negative")
    m, n = min(rows, cols), max(rows, cols)
    matmul = steps * (4 * m * m * n + 2 * m ** 3)
    scaling = 3 * m * n if preconditioner == "frobenius" else 4 * m * m + m * n + m
    overhead = scaling + steps * (3 * m * m + 2 * m * n)
    return {"matmul": matmul, "overhead": overhead, "total": matmul + overhead}
