"""Stable low-rank CP decomposition of convolutional kernels (Phan et al., ECCV 2020): CPD-EPC.

**Setting.** A conv kernel ``W ∈ ℝ^{T×S×D×D}`` (``T`` output, ``S`` input channels, ``D×D`` filter) is
reshaped to the order-3 tensor ``Y ∈ ℝ^{D²×S×T}``, ``Y[(h,w), s, t] = W[t, s, h, w]``, and approximated by a
rank-``R`` CPD ``Y ≈ [[A, B, C]] = Σ_r a_r ∘ b_r ∘ c_r`` (``A ∈ ℝ^{D²×R}``, ``B ∈ ℝ^{S×R}``, ``C ∈ ℝ^{T×R}``).
The layer becomes three convolutions (Section 3, Fig. 1 of the paper): a 1×1 conv ``S → R`` with weights
``Bᵀ``, a depthwise ``D×D`` conv of ``R`` channels with filters ``a_r``, and a 1×1 conv ``R → T`` with
weights ``C`` (and the original bias): :class:`CPConv2d`. Its cost is ``R(S + D² + T)`` parameters (and
multiply-adds per output pixel) instead of ``T S D²``.

**Degeneracy** (Section 2). Fitting the CPD by ALS often ends with *diverging components*: rank-one
terms with huge norms that cancel each other, so ``‖Y − [[A,B,C]]‖`` is fine but the decomposition is
fragile: measured by the **sensitivity** (Tichavský, Phan & Cichocki, 2019; ``common.tensor_decomp``)

    ss([[A,B,C]]) = Σ_r ( D²‖b_r‖²‖c_r‖² + S‖a_r‖²‖c_r‖² + T‖a_r‖²‖b_r‖² ),             (Eq. 2)

the expected squared change of the reconstruction per unit variance of an i.i.d. perturbation of the
factor entries (fine-tuning and float rounding are such perturbations).

**EPC, the error-preserving correction** (Section 3, Eq. 3). Starting from a CPD with error
``δ = ‖Y − [[A₀,B₀,C₀]]‖_F`` (the ALS result), solve

    min_{A,B,C} ss([[A,B,C]])   subject to   ‖Y − [[A,B,C]]‖²_F ≤ δ²,

by alternating over the factors. With ``B, C`` fixed, ``ss = Σ_r w_r ‖a_r‖² + const`` with
``w_r = S‖c_r‖² + T‖b_r‖²`` (in general ``w_r = Σ_{m≠n} I_m Π_{k∉{m,n}} ‖a_r^{(k)}‖²``), and the factor
subproblem is a quadratically constrained least-squares problem

    min_A Σ_r w_r ‖a_r‖²   s.t.   ‖Y_(1) − A Kᵀ‖²_F ≤ δ²,     K = C ⊙ B (our unfolding: B ⊙ C),

solved exactly (:func:`epc_factor_update`): with ``Ã = A diag(√w)``, ``K̃ = K diag(√w)^{-1}`` and the
SVD ``K̃ = P Σ Qᵀ``, the Lagrange conditions give ``Ã(μ) = Y_(1) K̃ (K̃ᵀK̃ + μ I)^{-1}`` whose residual

    ρ(μ) = ‖Y_(1)‖² − ‖Z‖² + Σ_i ‖z_i‖² (μ / (σ_i² + μ))²,    Z = Y_(1) P,

increases monotonically in ``μ ≥ 0``; the root ``ρ(μ) = δ²`` is found by bisection on ``log μ``. The current
factor is feasible, so ss never increases and the error stays ``≤ δ`` ("equal error").

**Our solver** (:func:`cp_epc`). The paper's solver (MATLAB/TensorBox) is not public, so the algorithm is
ours, the objective and constraint are the paper's. The alternating exact updates above (:func:`epc_sweeps`)
move slowly out of a degeneracy: shrinking two cancelling terms needs every factor to move at once. So
:func:`cp_epc` first runs a joint augmented-Lagrangian stage over all factors
(:func:`epc_augmented_lagrangian`), then the exact alternating sweeps, which also make the error ``≤ δ``
hold exactly.

Baselines at the same layer: CP-ALS (``common.tensor_decomp.cp_als``; tensorly's ``parafac`` side by
side), Tucker-2 over the channel modes (HOSVD + HOOI, :class:`Tucker2Conv2d`: 1×1 ``S→R₁``, ``D×D``
``R₁→R₂``, 1×1 ``R₂→T``) and truncated SVD of ``W`` as a ``T × (S D²)`` matrix (:class:`SVDConv2d`:
``D×D`` ``S→q`` then 1×1 ``q→T``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.tensor_decomp import (
    cp_als,
    cp_balance,
    cp_relative_error,
    cp_sensitivity,
    cp_to_tensor,
    degeneracy_index,
    khatri_rao,
    tucker2_hosvd,
    tucker2_to_tensor,
    unfold,
)

__all__ = ["kernel_to_tensor", "tensor_to_kernel", "epc_weights", "epc_factor_update", "cp_epc", "CPConv2d",
           "Tucker2Conv2d", "SVDConv2d", "cp_params", "tucker2_params", "svd_params", "matched_tucker2_rank",
           "matched_svd_rank", "svd_kernel", "train_digits_cnn", "replace_conv2", "finetune", "run_seed", "epc_sweeps",
           "epc_augmented_lagrangian"]


# ----------------------------------------------------------------------------------------------- reshapes

def kernel_to_tensor(weight: np.ndarray) -> np.ndarray:
    """``W[t, s, h, w] → Y[(h, w), s, t]`` of shape ``(D², S, T)`` (the paper's order-3 CPD of a kernel)."""
    weight = np.asarray(weight, dtype=float)
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be (T, S, D, D), got {weight.shape}")
    t, s, d, _ = weight.shape
    return weight.reshape(t, s, d * d).transpose(2, 1, 0).copy()


def tensor_to_kernel(tensor: np.ndarray) -> np.ndarray:
    """Inverse of :func:`kernel_to_tensor`: ``(D², S, T) → (T, S, D, D)``."""
    tensor = np.asarray(tensor, dtype=float)
    d = int(round(np.sqrt(tensor.shape[0])))
    if tensor.ndim != 3 or d * d != tensor.shape[0]:
        raise ValueError(f"tensor must be (D², S, T), got {tensor.shape}")
    return tensor.transpose(2, 1, 0).reshape(tensor.shape[2], tensor.shape[1], d, d).copy()


# ----------------------------------------------------------------------------------------------- EPC

def epc_weights(factors: Sequence[np.ndarray], mode: int) -> np.ndarray:
    """``w_r`` with ``ss = Σ_r w_r ‖a_r^{(n)}‖² + (terms free of A^{(n)})`` (the factor-``n`` form of Eq. 2).

    ``w_r = Σ_{m≠n} I_m Π_{k∉{m,n}} ‖a_r^{(k)}‖²``; for order 3 and ``n = 0``: ``S‖c_r‖² + T‖b_r‖²``.
    """
    sq = [np.sum(np.asarray(f, dtype=float) ** 2, axis=0) for f in factors]
    w = np.zeros_like(sq[0])
    for m, f in enumerate(factors):
        if m == mode:
            continue
        prod = np.ones_like(sq[0])
        for k in range(len(factors)):
            if k not in (m, mode):
                prod = prod * sq[k]
        w += f.shape[0] * prod
    return w


def epc_factor_update(unfolded: np.ndarray, others: np.ndarray, w: np.ndarray, delta_sq: float, *,
                      n_bisect: int = 100) -> tuple[np.ndarray, float]:
    """Solve ``min_A Σ_r w_r ‖a_r‖²  s.t.  ‖Y_(n) − A Kᵀ‖²_F ≤ δ²`` exactly; returns ``(A, μ)``.

    ``unfolded`` is ``Y_(n)`` (``I_n × J``), ``others`` is ``K`` (``J × R``), ``w > 0``. When the least-squares
    minimum already exceeds ``δ²`` (the constraint cannot hold) the least-squares solution (``μ = 0``) is
    returned; when ``δ² ≥ ‖Y_(n)‖²`` the minimum-norm solution is ``A = 0``.
    """
    if delta_sq < 0:
        raise ValueError(f"delta_sq must be >= 0, got {delta_sq}")
    w = np.maximum(np.asarray(w, dtype=float), 1e-300)
    root = np.sqrt(w)
    k_tilde = others / root                                     # K̃ = K diag(√w)^{-1}
    p, sig, qt = np.linalg.svd(k_tilde, full_matrices=False)
    z = unfolded @ p                                            # Z = Y P
    z_sq = np.sum(z ** 2, axis=0)
    total = float(np.sum(unfolded ** 2))
    base = total - float(z_sq.sum())                            # residual outside range(K̃)
    sig_sq = sig ** 2

    def residual(mu: float) -> float:
        return base + float(np.sum(z_sq * (mu / (sig_sq + mu)) ** 2))

    if delta_sq >= total:
        return np.zeros((unfolded.shape[0], others.shape[1])), np.inf
    positive = sig_sq > sig_sq.max() * 1e-14 if sig_sq.size else sig_sq
    if residual(0.0) >= delta_sq:
        mu = 0.0
    else:
        lo, hi = -60.0, 60.0                                    # log10 μ bracket relative to σ_max²
        scale = float(sig_sq.max())
        for _ in range(n_bisect):
            mid = 0.5 * (lo + hi)
            if residual(scale * 10.0 ** mid) > delta_sq:
                hi = mid
            else:
                lo = mid
        mu = scale * 10.0 ** lo                                 # feasible side of the root
    coef = np.where(positive, sig / (sig_sq + mu), 0.0)
    a_tilde = (z * coef) @ qt                                   # Ã = Z diag(σ/(σ²+μ)) Qᵀ
    return a_tilde / root, mu


def epc_sweeps(tensor: np.ndarray, factors: Sequence[np.ndarray], delta: float, *, n_iter: int = 20,
               balance: bool = True) -> tuple[list[np.ndarray], dict]:
    """The paper's alternating EPC: ``n_iter`` sweeps of exact factor updates (:func:`epc_factor_update`).

    With ``balance`` each sweep starts by rescaling the rank-one terms to their least-sensitive scaling
    (``common.tensor_decomp.cp_balance``: the tensor, hence the error, is unchanged and ss can only fall).
    From a feasible start (error ``≤ δ``) ss never increases and the error stays ``≤ δ``; from an infeasible
    start the updates are least-squares (ALS) steps until the error drops below ``δ``.
    """
    tensor = np.asarray(tensor, dtype=float)
    factors = [np.array(f, dtype=float) for f in factors]
    delta_sq = float(delta) ** 2
    unfoldings = [unfold(tensor, n) for n in range(tensor.ndim)]
    history = {"ss": [cp_sensitivity(factors)], "error": [cp_relative_error(tensor, factors)]}
    for _ in range(n_iter):
        if balance:
            factors = cp_balance(factors)
        for n in range(tensor.ndim):
            others = khatri_rao([f for m, f in enumerate(factors) if m != n])
            factors[n], _ = epc_factor_update(unfoldings[n], others, epc_weights(factors, n), delta_sq)
        history["ss"].append(cp_sensitivity(factors))
        history["error"].append(cp_relative_error(tensor, factors))
    return factors, history


def epc_augmented_lagrangian(tensor: np.ndarray, factors: Sequence[np.ndarray], delta: float, *, n_outer: int = 8,
                             n_inner: int = 150, rho: float = 10.0, rho_growth: float = 4.0) -> list[np.ndarray]:
    """Joint stage of our EPC solver: min ss s.t. ``‖Y − [[…]]‖² ≤ δ²`` over all factors at once.

    Augmented Lagrangian for the inequality ``c = ‖Y − [[…]]‖²/δ² − 1 ≤ 0`` with the objective scaled by the
    start's ss: ``L = ss/ss₀ + (max(0, λ + ρc)² − λ²)/(2ρ)``, minimised by L-BFGS (``n_inner`` steps, analytic
    gradients ``∂ss/∂A^{(n)} = 2 A^{(n)} diag(w)`` and ``∂‖Y − [[…]]‖²/∂A^{(n)} = −2 (Y_(n) − A^{(n)} K_nᵀ) K_n``),
    then ``λ ← max(0, λ + ρc)``, ``ρ ← ρ · rho_growth``. Moving every factor together follows the valley along
    which diverging, cancelling terms shrink, where single-factor updates zig-zag (measured in the notebook).
    """
    from scipy.optimize import minimize

    tensor = np.asarray(tensor, dtype=float)
    factors = [np.array(f, dtype=float) for f in factors]
    shapes = [f.shape for f in factors]
    bounds = np.cumsum([0] + [f.size for f in factors])
    unfoldings = [unfold(tensor, n) for n in range(tensor.ndim)]
    delta_sq = float(delta) ** 2
    ss0 = cp_sensitivity(factors)

    def split(x):
        return [x[bounds[i]:bounds[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]

    def constraint(fs):
        return (float(np.sum((tensor - cp_to_tensor(fs)) ** 2)) - delta_sq) / delta_sq

    lam, x = 0.0, np.concatenate([f.ravel() for f in factors])
    for _ in range(n_outer):
        def objective(x, lam=lam, rho=rho):
            fs = split(x)
            grads_ss, grads_fit = [], []
            for n, f in enumerate(fs):
                k = khatri_rao([g for m, g in enumerate(fs) if m != n])
                resid = unfoldings[n] - f @ k.T
                grads_fit.append(-2.0 * resid @ k / delta_sq)
                grads_ss.append(2.0 * f * epc_weights(fs, n) / ss0)
            c = float(np.sum(resid ** 2)) / delta_sq - 1.0
            t = max(0.0, lam + rho * c)
            value = cp_sensitivity(fs) / ss0 + (t * t - lam * lam) / (2.0 * rho)
            grad = np.concatenate([(gs + t * gf).ravel() for gs, gf in zip(grads_ss, grads_fit, strict=True)])
            return value, grad

        x = minimize(objective, x, jac=True, method="L-BFGS-B", options={"maxiter": n_inner}).x
        lam = max(0.0, lam + rho * constraint(split(x)))
        rho *= rho_growth
    return [f.copy() for f in split(x)]


def cp_epc(tensor: np.ndarray, factors: Sequence[np.ndarray], *, delta: float | None = None, n_outer: int = 8,
           n_inner: int = 150, n_sweeps: int = 60, margin: float = 1e-3) -> tuple[list[np.ndarray], dict]:
    """CPD-EPC (Eq. 3): min ss subject to ``‖Y − [[A^{(1)},…]]‖_F ≤ δ``, from the CPD ``factors``.

    ``δ`` defaults to the error of ``factors`` (the ALS error: "error preserving"). Our solver: the joint
    augmented-Lagrangian stage (:func:`epc_augmented_lagrangian`) aims at the slightly tighter
    ``δ √(1 − margin)`` (its constraint holds only in the limit of its penalty), then ``n_sweeps`` of the
    paper's exact alternating updates (:func:`epc_sweeps`) at ``δ`` itself. The result is the last feasible
    sweep (error ``≤ δ``); when no sweep is feasible the (rescaled) start is returned and
    ``history["fallback"]`` is True. ``n_outer = 0`` runs the paper's alternating updates alone.
    """
    tensor = np.asarray(tensor, dtype=float)
    start = cp_balance(factors)
    if tuple(f.shape[0] for f in start) != tensor.shape:
        raise ValueError(f"factors {[f.shape for f in start]} do not match tensor {tensor.shape}")
    if min(n_outer, n_inner, n_sweeps) < 0 or not 0 <= margin < 1:
        raise ValueError("n_outer, n_inner and n_sweeps must be >= 0 and margin in [0, 1)")
    if delta is None:
        delta = float(np.linalg.norm(tensor - cp_to_tensor(start)))
    history = {"delta": float(delta), "ss_start": cp_sensitivity(start)}
    current = start
    if n_outer:
        current = epc_augmented_lagrangian(tensor, start, delta * np.sqrt(1 - margin), n_outer=n_outer, n_inner=n_inner)
    history["ss_joint"] = cp_sensitivity(current)
    norm = float(np.linalg.norm(tensor))
    best, best_ss = start, history["ss_start"]
    history["fallback"] = True
    for sweep in range(n_sweeps + 1):
        if sweep:
            current, _ = epc_sweeps(tensor, current, delta, n_iter=1)
        if np.linalg.norm(tensor - cp_to_tensor(current)) <= delta * (1 + 1e-12) + 1e-15 * norm:
            ss = cp_sensitivity(current)
            if ss <= best_ss:
                best, best_ss, history["fallback"] = [f.copy() for f in current], ss, False
    history["ss_end"] = best_ss
    history["error_end"] = cp_relative_error(tensor, best)
    return best, history


# ----------------------------------------------------------------------------------------------- layers

class CPConv2d(nn.Module):
    """CPD layer (float32): 1×1 conv ``S→R`` (``Bᵀ``) → depthwise ``D×D`` (``a_r``) → 1×1 conv ``R→T`` (``C``) + bias."""

    def __init__(self, factors: Sequence[np.ndarray], bias: torch.Tensor | None, padding: int = 1):
        super().__init__()
        a, b, c = (torch.as_tensor(np.asarray(f), dtype=torch.float32) for f in factors)
        d = int(round(a.shape[0] ** 0.5))
        rank = a.shape[1]
        self.first = nn.Parameter(b.T.reshape(rank, b.shape[0], 1, 1).contiguous())
        self.depthwise = nn.Parameter(a.T.reshape(rank, 1, d, d).contiguous())
        self.last = nn.Parameter(c.reshape(c.shape[0], rank, 1, 1).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.first)
        x = F.conv2d(x, self.depthwise, padding=self.padding, groups=self.depthwise.shape[0])
        return F.conv2d(x, self.last, self.bias)


class Tucker2Conv2d(nn.Module):
    """Tucker-2 layer: 1×1 ``S→R₁`` (``U_Sᵀ``) → ``D×D`` conv ``R₁→R₂`` (core) → 1×1 ``R₂→T`` (``U_T``) + bias."""

    def __init__(self, core: np.ndarray, us: Sequence[np.ndarray], bias: torch.Tensor | None, padding: int = 1):
        super().__init__()
        u_s, u_t = (torch.as_tensor(u, dtype=torch.float32) for u in us)
        core_kernel = torch.as_tensor(tensor_to_kernel(core), dtype=torch.float32)      # (R₂, R₁, D, D)
        self.first = nn.Parameter(u_s.T[:, :, None, None].contiguous())
        self.core = nn.Parameter(core_kernel)
        self.last = nn.Parameter(u_t[:, :, None, None].contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.conv2d(x, self.first), self.core, padding=self.padding)
        return F.conv2d(x, self.last, self.bias)


class SVDConv2d(nn.Module):
    """Truncated SVD of ``W`` as ``T × (S D²)``: ``D×D`` conv ``S→q`` (``V_qᵀ``) → 1×1 ``q→T`` (``U_q Σ_q``) + bias."""

    def __init__(self, first: np.ndarray, last: np.ndarray, bias: torch.Tensor | None, padding: int = 1):
        super().__init__()
        self.first = nn.Parameter(torch.as_tensor(first, dtype=torch.float32))
        self.last = nn.Parameter(torch.as_tensor(last, dtype=torch.float32)[:, :, None, None].contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, self.first, padding=self.padding), self.last, self.bias)


def svd_kernel(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-``q`` factors of ``W`` unfolded to ``T × (S D²)`` (Eckart–Young): ``(first (q,S,D,D), last (T,q))``."""
    weight = np.asarray(weight, dtype=float)
    t = weight.shape[0]
    u, s, vt = np.linalg.svd(weight.reshape(t, -1), full_matrices=False)
    if not 1 <= rank <= s.size:
        raise ValueError(f"rank must be in [1, {s.size}], got {rank}")
    return vt[:rank].reshape((rank,) + weight.shape[1:]), u[:, :rank] * s[:rank]


def cp_params(shape: tuple[int, int, int, int], rank: int) -> int:
    """Weights of :class:`CPConv2d` for a ``(T, S, D, D)`` kernel: ``R (S + D² + T)`` (= MACs per pixel)."""
    t, s, d, _ = shape
    return rank * (s + d * d + t)


def tucker2_params(shape, r1: int, r2: int) -> int:
    """Weights of :class:`Tucker2Conv2d`: ``S R₁ + D² R₁ R₂ + R₂ T``."""
    t, s, d, _ = shape
    return s * r1 + d * d * r1 * r2 + r2 * t


def svd_params(shape, rank: int) -> int:
    """Weights of :class:`SVDConv2d`: ``q (S D² + T)``."""
    t, s, d, _ = shape
    return rank * (s * d * d + t)


def matched_tucker2_rank(shape, budget: int) -> tuple[int, int]:
    """Largest ``(R₁, R₂)`` with ``R₁/R₂ = S/T`` (rounded) and at most ``budget`` weights (at least 1 each)."""
    t, s, d, _ = shape
    best = (1, 1)
    for r2 in range(1, t + 1):
        r1 = max(1, min(s, int(round(r2 * s / t))))
        if tucker2_params(shape, r1, r2) <= budget:
            best = (r1, r2)
    return best


def matched_svd_rank(shape, budget: int) -> int:
    """Largest ``q`` with at most ``budget`` weights (at least 1)."""
    t, s, d, _ = shape
    return max(1, min(min(t, s * d * d), budget // (s * d * d + t)))


# ----------------------------------------------------------------------------------------------- the network

def train_digits_cnn(seed: int, channels: tuple[int, int] = (16, 32), epochs: int = 8, lr: float = 3e-3,
                     batch_size: int = 128, threads: int | None = 1):
    """Train ``common.smallnets.SmallCNN2d`` on scikit-learn digits (8×8); returns ``(model, data)``.

    The split, the initialisation and the batch order all follow ``seed`` (Adam, ``epochs`` passes).
    """
    from common.harness.seeding import seeded_training
    from common.smallnets import SmallCNN2d, load_digits_data, train_classifier

    data = load_digits_data(image=True, random_state=seed)
    generator = seeded_training(seed, threads=threads)
    model = SmallCNN2d(channels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_classifier(model, data.X_train, data.y_train, [opt], epochs=epochs, batch_size=batch_size, generator=generator)
    model.eval()
    return model, data


def replace_conv2(model: nn.Module, layer: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``conv2`` is ``layer`` (the other weights shared, no fine-tuning)."""
    import copy

    new = copy.copy(model)
    new._modules = dict(model._modules)
    new._modules["conv2"] = layer
    return new


def finetune(model: nn.Module, data, epochs: int, *, lr: float = 1e-3, seed: int = 0, batch_size: int = 128) -> list[float]:
    """Fine-tune every weight of ``model`` (Adam, ``lr``) for ``epochs`` passes; returns the epoch losses."""
    from common.smallnets import train_classifier

    if epochs <= 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = train_classifier(model, data.X_train, data.y_train, [opt], epochs=epochs, batch_size=batch_size,
                              generator=generator)
    model.eval()
    return losses


def run_seed(seed: int, ranks: Sequence[int], *, train_epochs: int = 6, channels: tuple[int, int] = (16, 32),
             als_iter: int = 300, epc_outer: int = 8, epc_inner: int = 150, epc_sweeps: int = 60,
             finetune_epochs: int = 0, finetune_lr: float = 1e-3, threads: int | None = 1) -> dict:
    """One seed of the experiment on ``conv2`` of the digits CNN: every method at every CP rank.

    The seed sets the data split, the network's training and the ALS start. Per rank ``R``: CP-ALS
    (``als_iter`` sweeps from a Gaussian start, terms rescaled to their least-sensitive scaling, which changes
    neither the tensor nor the accuracy), CPD-EPC from it at the ALS error, Tucker-2 (HOSVD + 10 HOOI sweeps)
    and SVD with at most the CP layer's weights ``R (S + D² + T)``. Per method: relative error, accuracy
    drop of the network with the layer replaced (float32, no fine-tuning), and for CP: ss and the
    degeneracy index; with ``finetune_epochs > 0``, the accuracy after fine-tuning the whole network.
    """
    import copy

    from common.smallnets import evaluate

    model, data = train_digits_cnn(seed, channels=channels, epochs=train_epochs, threads=threads)
    base = evaluate(model, data.X_test, data.y_test)[1]
    weight = model.conv2.weight.detach().double().numpy()
    bias = model.conv2.bias
    tensor = kernel_to_tensor(weight)
    shape = weight.shape
    out: dict = {"base_accuracy": base, "ranks": {}, "tensor": tensor}

    def assess(layer):
        net = replace_conv2(model, layer)
        acc = evaluate(net, data.X_test, data.y_test)[1]
        res = {"drop": base - acc}
        if finetune_epochs > 0:
            tuned = copy.deepcopy(net)
            finetune(tuned, data, finetune_epochs, lr=finetune_lr, seed=seed)
            res["finetuned_accuracy"] = evaluate(tuned, data.X_test, data.y_test)[1]
        return res

    for rank in ranks:
        raw, _ = cp_als(tensor, rank, n_iter=als_iter, random_state=seed)
        als = cp_balance(raw)
        epc, hist = cp_epc(tensor, als, n_outer=epc_outer, n_inner=epc_inner, n_sweeps=epc_sweeps)
        cell = {}
        for name, fac in (("als", als), ("epc", epc)):
            cell[name] = {"error": cp_relative_error(tensor, fac), "ss": cp_sensitivity(fac),
                          "degeneracy": degeneracy_index(tensor, fac), **assess(CPConv2d(fac, bias))}
        cell["als"]["ss_unbalanced"] = cp_sensitivity(raw)
        cell["epc"]["fallback"] = hist["fallback"]
        budget = cp_params(shape, rank)
        r1, r2 = matched_tucker2_rank(shape, budget)
        core, us = tucker2_hosvd(tensor, (1, 2), (r1, r2), n_iter=10)
        cell["tucker2"] = {"error": float(np.linalg.norm(tensor - tucker2_to_tensor(core, (1, 2), us)) / np.linalg.norm(tensor)),
                           "params": tucker2_params(shape, r1, r2), "ranks": [r1, r2], **assess(Tucker2Conv2d(core, us, bias))}
        q = matched_svd_rank(shape, budget)
        first, last = svd_kernel(weight, q)
        approx = np.einsum("tq,qshw->tshw", last, first)
        cell["svd"] = {"error": float(np.linalg.norm(weight - approx) / np.linalg.norm(weight)), "params": svd_params(shape, q),
                       "rank": q, **assess(SVDConv2d(first, last, bias))}
        cell["cp_params"] = budget
        out["ranks"][rank] = cell
    return out
