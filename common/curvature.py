"""Curvature of small layers: per-example gradients, Gauss–Newton, Adagrad and Kronecker factors.

Notation: a weight ``W`` is ``m × n`` (``out × in``); ``vec`` is row-major (``torch.flatten``),
so ``vec(W)`` has index ``(i, j) ↦ i·n + j`` and ``A ⊗ B`` (``torch.kron``) with ``A`` ``m × m``
and ``B`` ``n × n`` acts on it as ``(A ⊗ B) vec(G) = vec(A G Bᵀ)``.

Target matrices (``mn × mn``):

* **Gauss–Newton** for softmax cross-entropy with logits ``f(x)`` and ``p = softmax(f)``:
  ``H_GN = E_x[J_xᵀ (diag(p) − p pᵀ) J_x]``, ``J_x = ∂f/∂vec(W)``. Writing
  ``diag(p) − p pᵀ = S Sᵀ`` with ``S = diag(√p) − p √pᵀ`` (:func:`fisher_sqrt`) turns it into a
  sum of outer products of ``C`` "pseudo-gradients" per example, ``g̃_c = J_xᵀ S_{:,c}``
  (:func:`gauss_newton_pseudo_grads`); it equals the Fisher ``E_x E_{y∼p(·|x)}[g gᵀ]`` with
  labels *sampled from the model*.
* **Adagrad** (gradient covariance): ``H_Ada = E[vec(G) vec(G)ᵀ]`` over (batch) gradients.
* **Empirical Fisher**: the same with per-example gradients at the *true* labels.

Kronecker approximations of ``H = E[vec(G) vec(G)ᵀ]``:

* **Optimal** ``min ‖H − A ⊗ B‖_F`` (Van Loan & Pitsianis, 1993): with the rearrangement
  ``ℛ(H)[(i,i'), (j,j')] = H[(i,j), (i',j')]`` (:func:`rearrange`) one has
  ``‖H − A ⊗ B‖_F = ‖ℛ(H) − vec(A) vec(B)ᵀ‖_F``, so the optimum is the top singular pair of
  ``ℛ(H)``, found by power iteration (:func:`optimal_kronecker`).
* **Shampoo²** ``L ⊗ R`` with ``L = E[G Gᵀ]``, ``R = E[Gᵀ G]`` (:func:`shampoo_factors`).
  Morwani et al. (ICLR 2025) observe ``ℛ(H) vec(I_n) = vec(E[G Gᵀ])`` and
  ``ℛ(H)ᵀ vec(I_m) = vec(E[Gᵀ G])``: **one step of power iteration from (I, I)**
  (:func:`power_iteration_step`) gives exactly Shampoo's factors, and Shampoo's own
  approximation is their square root ``L^{1/2} ⊗ R^{1/2}``.
* **K-FAC**: for a linear layer ``G = δ aᵀ`` (output gradient ``δ``, input ``a``), and
  ``H ≈ E[δ δᵀ] ⊗ E[a aᵀ]`` (:func:`kfac_factors`).

Quality is the scale-free cosine ``⟨H, M⟩_F / (‖H‖_F ‖M‖_F)`` (:func:`kronecker_cosine`, which
never forms ``A ⊗ B``: ``⟨H, A ⊗ B⟩ = vec(A)ᵀ ℛ(H) vec(B)`` and ``‖A ⊗ B‖ = ‖A‖ ‖B‖``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.nn import functional as F


def _split_params(model: nn.Module, names: Sequence[str]) -> tuple[dict, dict]:
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"unknown parameter name(s) {missing}; the model has {sorted(params)}")
    wrt = {n: params[n].detach() for n in names}
    rest = {n: p.detach() for n, p in params.items() if n not in wrt}
    return wrt, rest


def per_example_grads(model: nn.Module, X: torch.Tensor, y: torch.Tensor, names: Sequence[str]) -> dict:
    """Per-example cross-entropy gradients ``{name: (N, *shape)}`` with ``torch.func``."""
    wrt, rest = _split_params(model, names)

    def loss(p, x, t):
        logits = functional_call(model, {**rest, **p}, (x.unsqueeze(0),))
        return F.cross_entropy(logits, t.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(wrt, X, y)


def per_example_jacobians(model: nn.Module, X: torch.Tensor, names: Sequence[str]) -> tuple[dict, torch.Tensor]:
    """Jacobians of the logits ``{name: (N, C, *shape)}`` and the logits ``(N, C)``."""
    wrt, rest = _split_params(model, names)

    def logits(p, x):
        out = functional_call(model, {**rest, **p}, (x.unsqueeze(0),)).squeeze(0)
        return out, out

    jac, out = vmap(jacrev(logits, has_aux=True), in_dims=(None, 0))(wrt, X)
    return jac, out.detach()


def fisher_sqrt(probs: torch.Tensor) -> torch.Tensor:
    """``S = diag(√p) − p √pᵀ`` per row of ``probs (N, C)``, so ``S Sᵀ = diag(p) − p pᵀ``."""
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got {tuple(probs.shape)}")
    root = probs.clamp_min(0).sqrt()
    return torch.diag_embed(root) - probs.unsqueeze(-1) * root.unsqueeze(-2)


def gauss_newton_pseudo_grads(jac: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``g̃[i, c] = J_iᵀ S_i[:, c]``, shape ``(N, C, *param)``; ``H_GN = mean_i Σ_c g̃ g̃ᵀ``."""
    S = fisher_sqrt(probs).to(jac.dtype)
    return torch.einsum("nkc,nk...->nc...", S, jac)


def label_grads(jac: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy gradients from Jacobians: ``g_i = J_iᵀ (p_i − e_{y_i})``."""
    residual = probs - F.one_hot(labels, probs.size(1)).to(probs.dtype)
    return torch.einsum("nk,nk...->n...", residual.to(jac.dtype), jac)


def sample_labels(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One label per row drawn from the model's predictive distribution."""
    return torch.multinomial(probs.to(torch.float64), 1, generator=generator).squeeze(1)


def batch_means(grads: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean gradient of each of ``⌊N / batch_size⌋`` disjoint random mini-batches, ``(K, *param)``."""
    n = grads.size(0)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    order = torch.randperm(n, generator=generator)
    k = n // batch_size
    return grads[order[: k * batch_size]].reshape(k, batch_size, *grads.shape[1:]).mean(1)


def second_moment(grads: torch.Tensor) -> torch.Tensor:
    """``E[vec(G) vec(G)ᵀ]`` over the leading axis (or the two leading axes summed over the 2nd).

    ``grads``: ``(K, m, n)`` gives the mean over ``K``; ``(N, C, m, n)`` sums over ``C`` and
    averages over ``N`` (the Gauss–Newton pseudo-gradients).
    """
    if grads.ndim == 4:
        n = grads.size(0)
        flat = grads.reshape(-1, grads.size(-2) * grads.size(-1))
    elif grads.ndim == 3:
        n = grads.size(0)
        flat = grads.reshape(n, -1)
    else:
        raise ValueError(f"grads must be (K, m, n) or (N, C, m, n), got {tuple(grads.shape)}")
    return flat.mT @ flat / n


def shampoo_factors(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shampoo's ``L = E[G Gᵀ]`` (m × m) and ``R = E[Gᵀ G]`` (n × n), same averaging as :func:`second_moment`."""
    if grads.ndim == 4:
        n = grads.size(0)
        grads = grads.reshape(-1, *grads.shape[-2:])
    elif grads.ndim == 3:
        n = grads.size(0)
    else:
        raise ValueError(f"grads must be (K, m, n) or (N, C, m, n), got {tuple(grads.shape)}")
    k, rows, cols = grads.shape
    left = grads.transpose(0, 1).reshape(rows, k * cols)  # [G_1 … G_K] side by side: L = Σ_k G_k G_kᵀ
    right = grads.reshape(k * rows, cols)                  # stacked: R = Σ_k G_kᵀ G_k
    return left @ left.mT / n, right.mT @ right / n        # one GEMM each (an einsum here is ~7x slower)


def kfac_factors(deltas: torch.Tensor, activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K-FAC's ``(E[δ δᵀ], E[a aᵀ])`` for a linear layer.

    ``deltas``: ``(N, m)`` or ``(N, C, m)`` (summed over ``C``, e.g. Gauss–Newton pseudo-deltas);
    ``activations``: ``(N, n)``, the layer's inputs.
    """
    n = deltas.size(0)
    flat = deltas.reshape(-1, deltas.size(-1))
    return flat.mT @ flat / n, activations.mT @ activations / activations.size(0)


def rearrange(H: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement ``ℛ(H)`` (``m² × n²``) with ``‖H − A⊗B‖ = ‖ℛ(H) − vec A vec Bᵀ‖``."""
    if H.shape != (m * n, m * n):
        raise ValueError(f"H must be ({m * n}, {m * n}) for a {m}×{n} weight, got {tuple(H.shape)}")
    return H.reshape(m, n, m, n).permute(0, 2, 1, 3).reshape(m * m, n * n)


def power_iteration_step(H: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One (simultaneous) power step on ``ℛ(H)``: ``A' = ℛ(H) vec(B)``, ``B' = ℛ(H)ᵀ vec(A)``.

    From ``(I_m, I_n)`` it returns Shampoo's ``(E[G Gᵀ], E[Gᵀ G])`` exactly (Morwani et al.).
    """
    m, n = A.size(0), B.size(0)
    R = rearrange(H, m, n)
    return (R @ B.reshape(-1)).reshape(m, m), (R.mT @ A.reshape(-1)).reshape(n, n)


def optimal_kronecker(H: torch.Tensor, m: int, n: int, max_iter: int = 500, tol: float = 1e-12,
                      A0: torch.Tensor | None = None, B0: torch.Tensor | None = None) -> tuple:
    """Best Frobenius Kronecker approximation ``σ·A ⊗ B`` by alternating power iteration on ``ℛ(H)``.

    Starts from ``(I_m, I_n)`` unless given; stops when ``vec(B)`` (unit norm) moves less than
    ``tol``. Returns ``(A, B, sigma, iterations)`` with ``‖A‖ = ‖B‖ = 1`` and ``sigma`` the top
    singular value, so ``H ≈ sigma·A ⊗ B`` and ``cos(H, A⊗B) = sigma/‖H‖_F`` (for PSD ``H`` the
    factors come out PSD with a positive sign).
    """
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    R = rearrange(H, m, n)
    a = (torch.eye(m, dtype=H.dtype, device=H.device) if A0 is None else A0).reshape(-1)
    b = (torch.eye(n, dtype=H.dtype, device=H.device) if B0 is None else B0).reshape(-1)
    b = b / b.norm()
    sigma = torch.zeros((), dtype=H.dtype)
    iterations = 0
    for step in range(1, max_iter + 1):
        iterations = step
        a = R @ b
        a = a / a.norm()
        b_new = R.mT @ a
        sigma = b_new.norm()
        b_new = b_new / sigma
        moved = (b_new - b).norm()
        b = b_new
        if moved < tol:
            break
    return a.reshape(m, m), b.reshape(n, n), float(sigma), iterations


def kronecker_cosine(H: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> float:
    """Cosine ``⟨H, A⊗B⟩_F / (‖H‖_F ‖A⊗B‖_F)`` without forming ``A ⊗ B``."""
    R = rearrange(H, A.size(0), B.size(0))
    inner = A.reshape(-1) @ R @ B.reshape(-1)
    return float(inner / (H.norm() * A.norm() * B.norm()))


def matrix_cosine(H: torch.Tensor, M: torch.Tensor) -> float:
    """Cosine similarity of two matrices under the Frobenius inner product."""
    return float((H * M).sum() / (H.norm() * M.norm()))


def psd_power(M: torch.Tensor, power: float, eps: float = 0.0) -> torch.Tensor:
    """``M^power`` for a symmetric PSD matrix by eigendecomposition (eigenvalues clamped at ``eps``)."""
    vals, vecs = torch.linalg.eigh((M + M.mT) / 2)
    return (vecs * vals.clamp_min(eps).pow(power)) @ vecs.mT


def layer_inputs(model: nn.Module, layer: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The inputs ``a`` that ``layer`` receives when ``model(X)`` runs (flattened to ``(N, in)``)."""
    captured = []
    handle = layer.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model(X)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def kronecker_max_eigenvalue(A: torch.Tensor, B: torch.Tensor) -> float:
    """``λ_max(A ⊗ B) = λ_max(A)·λ_max(B)`` for symmetric PSD ``A`` and ``B`` (never forms ``A ⊗ B``).

    The eigenvalues of a Kronecker product are the pairwise products of the factors' eigenvalues,
    so for PSD factors the largest is the product of the largest. Used as K-FAC's estimate of a
    layer block's curvature spectral radius.
    """
    if A.ndim != 2 or A.size(0) != A.size(1) or B.ndim != 2 or B.size(0) != B.size(1):
        raise ValueError(f"A and B must be square matrices, got {tuple(A.shape)} and {tuple(B.shape)}")
    A, B = A.double(), B.double()  # float64: robust to the zero rows and columns of pruned units
    top_a = torch.linalg.eigvalsh((A + A.mT) / 2)[-1]
    top_b = torch.linalg.eigvalsh((B + B.mT) / 2)[-1]
    if top_a < 0 or top_b < 0:
        raise ValueError("A and B must be positive semi-definite")
    return float(top_a * top_b)


def hessian_vector_product(loss: torch.Tensor, params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``H v`` of a scalar ``loss`` w.r.t. ``params`` by double back-propagation (Pearlmutter)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))
    return torch.autograd.grad(dot, params)


def hessian_max_eigenvalue(loss_fn, params: Sequence[torch.Tensor], max_iter: int = 100, tol: float = 1e-4,
                           generator: torch.Generator | None = None) -> tuple[float, int]:
    """Dominant Hessian eigenvalue of ``loss_fn()`` w.r.t. ``params`` by power iteration with HVPs.

    ``v ← H v / ‖H v‖`` from a random unit start (drawn with ``generator``); the estimate is the
    Rayleigh quotient ``vᵀ H v``. Stops when it changes by less than ``tol`` relative. Returns
    ``(eigenvalue, iterations)``; the eigenvalue is the one of largest magnitude (at a minimum of
    the loss, the spectral radius ``λ_max``). ``loss_fn`` is re-evaluated at every step, so it may
    be a full-batch loss over a fixed data set.
    """
    if max_iter < 1 or tol <= 0:
        raise ValueError("max_iter must be >= 1 and tol > 0")
    params = list(params)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    estimate, iterations = 0.0, 0
    for step in range(1, max_iter + 1):
        iterations = step
        hv = hessian_vector_product(loss_fn(), params, v)
        new = float(sum((h * x).sum() for h, x in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if norm == 0:
            return 0.0, iterations
        v = [h / norm for h in hv]
        converged = step > 1 and abs(new - estimate) <= tol * max(abs(new), 1e-30)
        estimate = new
        if converged:
            break
    return estimate, iterations
