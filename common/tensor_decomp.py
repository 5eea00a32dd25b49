"""CP and Tucker-2 tools for small dense tensors (NumPy, float64).

Notation (Kolda & Bader, 2009). A CP (canonical polyadic) decomposition of rank ``R`` of an order-``N``
tensor ``Y ∈ ℝ^{I_1×…×I_N}`` is a list of factor matrices ``A^{(n)} ∈ ℝ^{I_n×R}``,

    [[A^{(1)}, …, A^{(N)}]] = Σ_r a_r^{(1)} ∘ … ∘ a_r^{(N)},

with the mode-``n`` unfolding ``Y_(n) ≈ A^{(n)} (⊙_{m≠n} A^{(m)})ᵀ`` (Khatri–Rao product over the other
modes, in increasing ``m``, matching the C-order unfolding below).

* :func:`unfold`, :func:`khatri_rao`, :func:`cp_to_tensor`: the algebra;
* :func:`cp_als`: alternating least squares (Harshman 1970; Carroll & Chang 1970) with a seeded
  random Gaussian start, our implementation (tensorly's ``parafac`` is the peer cross-check);
* :func:`cp_sensitivity`: the sensitivity of Tichavský, Phan & Cichocki (IEEE SPL 2019),
  ``ss = lim_{σ→0} E‖[[A+δA, …]] − [[A, …]]‖²_F / σ²`` for i.i.d. ``N(0, σ²)`` perturbations of
  every factor entry, which has the closed form ``ss = Σ_n I_n Σ_r Π_{m≠n} ‖a_r^{(m)}‖²``;
* :func:`degeneracy_index`: ``Σ_r ‖a_r^{(1)} ∘ … ∘ a_r^{(N)}‖² / ‖Y‖²`` (1 for orthogonal terms, large
  when rank-one terms diverge and cancel);
* :func:`tucker2_hosvd`: Tucker-2 (core over two modes, the other modes kept) by the truncated HOSVD,
  optionally refined by HOOI sweeps.

All functions take and return float64 NumPy arrays and raise ``ValueError`` on bad shapes or ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["unfold", "fold", "khatri_rao", "cp_to_tensor", "cp_relative_error", "cp_als", "cp_sensitivity",
           "degeneracy_index", "rank_one_norms", "cp_balance", "tucker2_hosvd", "tucker2_to_tensor", "mode_product"]


def unfold(tensor: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding ``Y_(n) ∈ ℝ^{I_n × Π_{m≠n} I_m}`` (remaining modes in C order)."""
    tensor = np.asarray(tensor)
    if not 0 <= mode < tensor.ndim:
        raise ValueError(f"mode must be in [0, {tensor.ndim}), got {mode}")
    return np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def fold(matrix: np.ndarray, mode: int, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`unfold`."""
    shape = tuple(shape)
    moved = (shape[mode],) + shape[:mode] + shape[mode + 1:]
    return np.moveaxis(np.asarray(matrix).reshape(moved), 0, mode)


def khatri_rao(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Column-wise Kronecker product ``M_1 ⊙ M_2 ⊙ …`` (row index of ``M_1`` varies slowest)."""
    matrices = [np.asarray(m, dtype=float) for m in matrices]
    if not matrices:
        raise ValueError("khatri_rao needs at least one matrix")
    rank = matrices[0].shape[1]
    if any(m.ndim != 2 or m.shape[1] != rank for m in matrices):
        raise ValueError(f"all matrices need {rank} columns, got shapes {[m.shape for m in matrices]}")
    out = matrices[0]
    for m in matrices[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, rank)
    return out


def _check_factors(factors: Sequence[np.ndarray]) -> list[np.ndarray]:
    factors = [np.asarray(f, dtype=float) for f in factors]
    if len(factors) < 2:
        raise ValueError("a CP decomposition needs at least two factor matrices")
    rank = factors[0].shape[1] if factors[0].ndim == 2 else -1
    if any(f.ndim != 2 or f.shape[1] != rank for f in factors):
        raise ValueError(f"factors must be matrices with the same number of columns, got {[f.shape for f in factors]}")
    return factors


def _others(factors: Sequence[np.ndarray], mode: int) -> np.ndarray:
    """``⊙_{m≠n} A^{(m)}`` in the order that matches :func:`unfold`: ``Y_(n) = A^{(n)} (that)ᵀ``."""
    return khatri_rao([f for m, f in enumerate(factors) if m != mode])


def cp_to_tensor(factors: Sequence[np.ndarray]) -> np.ndarray:
    """``[[A^{(1)}, …, A^{(N)}]] = Σ_r a_r^{(1)} ∘ … ∘ a_r^{(N)}``."""
    factors = _check_factors(factors)
    shape = tuple(f.shape[0] for f in factors)
    return fold(factors[0] @ _others(factors, 0).T, 0, shape)


def cp_relative_error(tensor: np.ndarray, factors: Sequence[np.ndarray]) -> float:
    """``‖Y − [[A^{(1)}, …]]‖_F / ‖Y‖_F``."""
    tensor = np.asarray(tensor, dtype=float)
    return float(np.linalg.norm(tensor - cp_to_tensor(factors)) / np.linalg.norm(tensor))


def rank_one_norms(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Frobenius norms of the rank-one terms, ``‖a_r^{(1)} ∘ … ∘ a_r^{(N)}‖ = Π_n ‖a_r^{(n)}‖``."""
    factors = _check_factors(factors)
    return np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)


def degeneracy_index(tensor: np.ndarray, factors: Sequence[np.ndarray]) -> float:
    """``Σ_r ‖rank-one term r‖²_F / ‖Y‖²_F``.

    About 1 when the terms are (nearly) orthogonal and fit ``Y``; it grows without bound when two or
    more terms diverge while cancelling each other (the degeneracy of CP-ALS, Krijnen et al. 2008).
    """
    return float(np.sum(rank_one_norms(factors) ** 2) / np.linalg.norm(np.asarray(tensor, dtype=float)) ** 2)


def cp_sensitivity(factors: Sequence[np.ndarray]) -> float:
    """Sensitivity ``ss = Σ_n I_n Σ_r Π_{m≠n} ‖a_r^{(m)}‖²`` (Tichavský, Phan & Cichocki, 2019).

    It is ``E‖[[A^{(1)}+δA^{(1)}, …]] − [[A^{(1)}, …]]‖²_F / σ²`` to first order in σ for i.i.d.
    ``N(0, σ²)`` entries of every ``δA^{(n)}``: the first-order change is ``Σ_n δA^{(n)} K_nᵀ`` (unfolded),
    whose terms are uncorrelated with ``E‖δA K_nᵀ‖² = σ² I_n ‖K_n‖²_F``, ``‖K_n‖²_F = Σ_r Π_{m≠n} ‖a_r^{(m)}‖²``.
    For order 3, ``ss = Σ_r (I‖b_r‖²‖c_r‖² + J‖a_r‖²‖c_r‖² + K‖a_r‖²‖b_r‖²)``.
    """
    factors = _check_factors(factors)
    sq = np.array([np.sum(f ** 2, axis=0) for f in factors])          # (N, R): ‖a_r^{(n)}‖²
    total = 0.0
    for n, f in enumerate(factors):
        total += f.shape[0] * float(np.sum(np.prod(np.delete(sq, n, axis=0), axis=0)))
    return total


def cp_balance(factors: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Rescale every rank-one term to minimise :func:`cp_sensitivity` (the tensor is unchanged).

    Term ``r`` may be rescaled as ``a_r^{(n)} → s_n a_r^{(n)}`` with ``Π_n s_n = 1``. With
    ``p_n = I_n Π_{m≠n} ‖a_r^{(m)}‖²`` and ``u_n = s_n²``, its sensitivity is ``Σ_n p_n / u_n`` (``Π u_n = 1``),
    minimal by AM–GM when every ``p_n / u_n`` equals ``g = (Π_n p_n)^{1/N}``: then
    ``ss_r = N (Π_n I_n)^{1/N} ‖term_r‖^{2(N−1)/N}``. Zero columns stay zero.
    """
    factors = [np.array(f, dtype=float) for f in _check_factors(factors)]
    sq = np.array([np.sum(f ** 2, axis=0) for f in factors])          # (N, R)
    out = []
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.array([f.shape[0] * np.prod(np.delete(sq, n, axis=0), axis=0) for n, f in enumerate(factors)])
        g = np.exp(np.mean(np.log(p), axis=0))
        for n, f in enumerate(factors):
            scale = np.sqrt(p[n] / g)                                    # s_n = √(p_n / g), Π_n s_n = 1
            out.append(f * np.where(np.isfinite(scale) & (scale > 0), scale, 1.0))
    return out


def cp_als(tensor: np.ndarray, rank: int, *, n_iter: int = 500, tol: float = 0.0, init: Sequence[np.ndarray] | None = None,
           random_state: int | np.random.Generator | None = 0) -> tuple[list[np.ndarray], list[float]]:
    """CP by alternating least squares; returns ``(factors, relative_errors per sweep)``.

    Each sweep updates every mode in turn by the exact least-squares solution
    ``A^{(n)} ← Y_(n) K_n (K_nᵀ K_n)^† ``, ``K_nᵀ K_n = ⊛_{m≠n} A^{(m)ᵀ} A^{(m)}`` (Hadamard product of Gram
    matrices; pseudo-inverse through ``lstsq`` so a rank-deficient Gram matrix does not fail). The start
    is i.i.d. standard normal factors from ``random_state`` (or ``init``). No normalisation, no line
    search, no regularisation: plain ALS, which is what drifts into degenerate (diverging and cancelling)
    terms when the best rank-``R`` approximation does not exist. Stops early when the relative error
    improves by less than ``tol`` (``tol=0``: run all ``n_iter`` sweeps).
    """
    tensor = np.asarray(tensor, dtype=float)
    if tensor.ndim < 2:
        raise ValueError(f"tensor must have order >= 2, got shape {tensor.shape}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if init is None:
        rng = np.random.default_rng(random_state)
        factors = [rng.standard_normal((size, rank)) for size in tensor.shape]
    else:
        factors = [np.array(f, dtype=float) for f in _check_factors(init)]
        if tuple(f.shape[0] for f in factors) != tensor.shape or factors[0].shape[1] != rank:
            raise ValueError("init does not match the tensor's shape and rank")
    unfoldings = [unfold(tensor, n) for n in range(tensor.ndim)]
    norm = np.linalg.norm(tensor)
    errors: list[float] = []
    for _ in range(n_iter):
        for n in range(tensor.ndim):
            gram = np.ones((rank, rank))
            for m, f in enumerate(factors):
                if m != n:
                    gram *= f.T @ f
            rhs = unfoldings[n] @ _others(factors, n)                  # Y_(n) K_n  (MTTKRP)
            factors[n] = np.linalg.lstsq(gram, rhs.T, rcond=None)[0].T
        errors.append(float(np.linalg.norm(tensor - cp_to_tensor(factors)) / norm))
        if tol > 0 and len(errors) > 1 and errors[-2] - errors[-1] < tol:
            break
    return factors, errors


def mode_product(tensor: np.ndarray, matrix: np.ndarray, mode: int) -> np.ndarray:
    """``Y ×_n M``: multiply mode ``n`` by ``M`` (``M`` has ``I_n`` columns)."""
    tensor = np.asarray(tensor, dtype=float)
    shape = list(tensor.shape)
    shape[mode] = matrix.shape[0]
    return fold(matrix @ unfold(tensor, mode), mode, shape)


def tucker2_hosvd(tensor: np.ndarray, modes: tuple[int, int], ranks: tuple[int, int], *,
                  n_iter: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Tucker-2 over ``modes``: ``Y ≈ G ×_{m1} U_1 ×_{m2} U_2`` with orthonormal ``U_i`` (``I_{m_i} × R_i``).

    Truncated HOSVD (De Lathauwer et al. 2000): ``U_i`` = leading left singular vectors of ``Y_(m_i)``,
    core ``G = Y ×_{m1} U_1ᵀ ×_{m2} U_2ᵀ``; ``n_iter`` HOOI sweeps then refine each ``U_i`` from the
    tensor projected on the other. Returns ``(core, [U_1, U_2])``.
    """
    tensor = np.asarray(tensor, dtype=float)
    if len(modes) != 2 or len(ranks) != 2 or modes[0] == modes[1]:
        raise ValueError(f"Tucker-2 needs two distinct modes and two ranks, got {modes}, {ranks}")
    for mode, rank in zip(modes, ranks, strict=True):
        if not 0 <= mode < tensor.ndim or not 1 <= rank <= tensor.shape[mode]:
            raise ValueError(f"bad mode/rank ({mode}, {rank}) for shape {tensor.shape}")
    us = [np.linalg.svd(unfold(tensor, m), full_matrices=False)[0][:, :r] for m, r in zip(modes, ranks, strict=True)]
    for _ in range(n_iter):
        for i in (0, 1):
            other = 1 - i
            projected = mode_product(tensor, us[other].T, modes[other])
            us[i] = np.linalg.svd(unfold(projected, modes[i]), full_matrices=False)[0][:, :ranks[i]]
    core = mode_product(mode_product(tensor, us[0].T, modes[0]), us[1].T, modes[1])
    return core, us


def tucker2_to_tensor(core: np.ndarray, modes: tuple[int, int], us: Sequence[np.ndarray]) -> np.ndarray:
    """``G ×_{m1} U_1 ×_{m2} U_2``."""
    return mode_product(mode_product(core, us[0], modes[0]), us[1], modes[1])
