"""Empirical neural tangent kernels: the full eNTK, the pseudo-NTK (sum of logits) and kernel regression.

For a network ``f(·; θ): ℝ^d → ℝ^O`` with ``P`` parameters and inputs ``x_1..x_N``:

* **Per-example Jacobians** ``J[n, k, :] = ∂f_k(x_n)/∂θ`` (``N × O × P``), with ``torch.func``
  (``vmap`` over examples of ``jacrev`` over the flattened parameters): :func:`per_example_jacobians`.
* **Empirical NTK** (eNTK) ``Θ(x, x')_{kl} = ⟨∂f_k(x)/∂θ, ∂f_l(x')/∂θ⟩``: an ``O × O`` block per
  pair of inputs, stored here as a 4-D array ``(N1, O, N2, O)``; :func:`flatten_ntk` gives the
  ``N1·O × N2·O`` matrix with row index ``n·O + k`` (example-major). :func:`entk`.
* **Pseudo-NTK** (pNTK; Mohamadi, Bae & Sutherland, ICML 2023, "sum of logits"): the eNTK of the
  scalar function ``g(x) = (1/√O) Σ_k f_k(x)``,

      θ̂(x, x') = ⟨∇_θ g(x), ∇_θ g(x')⟩ = (1/O) Σ_{k,l} Θ(x, x')_{kl},

  an ``N1 × N2`` matrix that stands for the eNTK through ``Θ ≈ θ̂ ⊗ I_O``
  (:func:`pntk`, :func:`pntk_grads`; :func:`kron_identity` expands it). The ``1/√O`` makes θ̂ the
  *average* block entry, so that when the off-diagonal blocks vanish (the paper's theorem for a wide
  readout layer at initialisation) θ̂ equals the common diagonal block.
* **Structured MLP kernels** (:func:`mlp_entk`, :func:`mlp_pntk`): for a linear layer
  ``z = W a + b``, ``∂f_k/∂W = δ_k aᵀ`` with ``δ_k = ∂f_k/∂z``, so the layer's contribution is
  ``(δ_k(x)·δ_l(x')) (a(x)·a(x') + 1)`` (the ``+1`` is the bias). This never forms the ``P``-long
  Jacobian (cost ``N²·n_in + (NO)²·n_out`` per layer instead of ``(NO)²·P``) and gives the same kernel
  exactly (tested against :func:`entk`). It needs an MLP of ``nn.Linear`` layers ``model.layers`` with an
  elementwise ``model.activation`` between them (``common.smallnets.MLP``).
* **Kernel ridge regression** (:func:`kernel_regression`): ``F = K(X*, X) (K(X, X) + λ I)^{-1} Y``
  with ``λ = diag_reg · tr(K)/dim`` (the trace-relative ridge of neural-tangents' ``predict``), solved by
  ``scipy.linalg.solve`` in float64. With the eNTK, ``Y`` is the ``N·O`` vector of one-hot targets
  (:func:`entk_regression`); with the pNTK, the ``N × O`` matrix: one ``N × N`` solve for all outputs
  (:func:`pntk_regression`), which is ``θ̂ ⊗ I_O`` regression exactly.
* **Approximation error** (:func:`relative_error`): ``‖Θ − K ⊗ I_O‖_F / ‖Θ‖_F`` for any ``N × N``
  surrogate ``K`` (the pNTK, the first-logit kernel ``Θ_11``, the trace kernel ``(1/O) Σ_k Θ_kk``). The
  trace kernel is the Frobenius-optimal ``K`` (:func:`trace_kernel`), so its error bounds the others' below.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

__all__ = ["per_example_jacobians", "pntk_grads", "entk", "pntk", "entk_from_jacobians", "pntk_from_grads",
           "mlp_layer_factors", "mlp_pntk_factors", "mlp_entk", "entk_from_factors",
           "pntk_from_factors", "pntk_factors_from_entk_factors", "mlp_pntk", "flatten_ntk", "kron_identity", "trace_kernel",
           "first_logit_kernel", "sum_of_logits", "relative_error", "kernel_regression", "one_hot", "entk_regression",
           "pntk_regression", "explicit_entk", "explicit_pntk"]


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def _flat(tree: dict[str, torch.Tensor], batch_dims: int) -> torch.Tensor:
    """Concatenate ``{name: (*batch, *shape)}`` into ``(*batch, P)`` (parameters in ``named_parameters`` order)."""
    parts = [t.reshape(*t.shape[:batch_dims], -1) for t in tree.values()]
    return torch.cat(parts, dim=-1)


def _check_inputs(X: torch.Tensor, name: str = "X") -> None:
    if not isinstance(X, torch.Tensor) or X.ndim < 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a tensor (N, ...) with N >= 1, got {getattr(X, 'shape', type(X))}")


def per_example_jacobians(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``J[n, k, p] = ∂f_k(x_n)/∂θ_p`` as an ``(N, O, P)`` tensor (``vmap`` of ``jacrev``)."""
    _check_inputs(X)
    params = _params(model)

    def f(p, x):
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    return _flat(jac, 2)


def pntk_grads(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``∇_θ g(x_n)`` with ``g = (1/√O) Σ_k f_k`` as an ``(N, P)`` tensor: one backward pass per example."""
    _check_inputs(X)
    params = _params(model)

    def g(p, x):
        out = functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)
        return out.sum() / math.sqrt(out.numel())

    return _flat(vmap(grad(g), in_dims=(None, 0))(params, X), 1)


def entk_from_jacobians(J1: torch.Tensor, J2: torch.Tensor | None = None) -> torch.Tensor:
    """``Θ[n, k, m, l] = ⟨J1[n, k], J2[m, l]⟩`` as an ``(N1, O, N2, O)`` tensor."""
    J2 = J1 if J2 is None else J2
    if J1.ndim != 3 or J2.ndim != 3 or J1.shape[1:] != J2.shape[1:]:
        raise ValueError(f"Jacobians must be (N, O, P) with equal O and P, got {tuple(J1.shape)} and {tuple(J2.shape)}")
    n1, o, p = J1.shape
    gram = J1.reshape(n1 * o, p) @ J2.reshape(-1, p).T
    return gram.reshape(n1, o, J2.shape[0], o)


def pntk_from_grads(G1: torch.Tensor, G2: torch.Tensor | None = None) -> torch.Tensor:
    """``θ̂[n, m] = ⟨G1[n], G2[m]⟩`` for sum-of-logits gradients ``(N, P)``."""
    G2 = G1 if G2 is None else G2
    if G1.ndim != 2 or G2.ndim != 2 or G1.shape[1] != G2.shape[1]:
        raise ValueError(f"gradients must be (N, P) with equal P, got {tuple(G1.shape)} and {tuple(G2.shape)}")
    return G1 @ G2.T


def entk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor | None = None) -> torch.Tensor:
    """The full empirical NTK ``(N1, O, N2, O)`` from per-example Jacobians (any ``nn.Module``)."""
    J1 = per_example_jacobians(model, X1)
    return entk_from_jacobians(J1, None if X2 is None else per_example_jacobians(model, X2))


def pntk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor | None = None) -> torch.Tensor:
    """The pseudo-NTK ``(N1, N2)``: the eNTK of ``(1/√O) Σ_k f_k`` (any ``nn.Module``)."""
    G1 = pntk_grads(model, X1)
    return pntk_from_grads(G1, None if X2 is None else pntk_grads(model, X2))


# --- structured kernels of MLPs (exact, without the P-long Jacobian) ---------------------------------------

def _mlp_parts(model: nn.Module) -> tuple[list[nn.Linear], Callable]:
    layers = getattr(model, "layers", None)
    activation = getattr(model, "activation", None)
    if layers is None or activation is None or not all(isinstance(layer, nn.Linear) for layer in layers):
        raise ValueError("structured kernels need an MLP with `layers` (nn.Linear) and an elementwise `activation`")
    return list(layers), activation


def mlp_layer_factors(model: nn.Module, X: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Per linear layer ``l``: its inputs ``A_l (N, n_in)``, output sensitivities ``D_l (N, O, n_out)``, has-bias.

    ``D_l[n, k] = ∂f_k(x_n)/∂z_l`` is the Jacobian of the outputs with respect to the layer's
    pre-activation ``z_l = W_l a_l + b_l``, found by ``jacrev`` with respect to a zero perturbation added
    to ``z_l`` (one backward pass per output, as for the full Jacobian, but only ``n_out`` long).
    """
    _check_inputs(X)
    layers, activation = _mlp_parts(model)

    def forward(taps, x):
        return _tapped_forward(layers, activation, taps, x)

    with torch.no_grad():
        D, A = vmap(jacrev(forward, has_aux=True), in_dims=(None, 0))(_zero_taps(layers, X.dtype), X)
    return [(a, d, layer.bias is not None) for a, d, layer in zip(A, D, layers, strict=True)]


def _tapped_forward(layers: list[nn.Linear], activation: Callable, taps: list, x: torch.Tensor):
    """One example through the MLP with ``tap_l`` added to each pre-activation ``z_l``; returns ``(f(x), [a_l])``.

    Differentiating with respect to zero taps gives ``∂f/∂z_l`` without forming the weight Jacobian.
    """
    a, inputs = x.flatten(), []
    for index, (layer, tap) in enumerate(zip(layers, taps, strict=True)):
        inputs.append(a)
        z = layer(a) + tap
        a = z if index == len(layers) - 1 else activation(z)
    return a, inputs


def _zero_taps(layers: list[nn.Linear], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.zeros(layer.out_features, dtype=dtype) for layer in layers]


def _input_gram(a1: torch.Tensor, a2: torch.Tensor, bias: bool) -> torch.Tensor:
    return a1 @ a2.T + (1.0 if bias else 0.0)


def mlp_entk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor | None = None) -> torch.Tensor:
    """Exact eNTK ``(N1, O, N2, O)`` of an MLP: ``Σ_l (D_l D_lᵀ) ∘ (A_l A_lᵀ + 1) ⊗ 1_{O×O}``."""
    f1 = mlp_layer_factors(model, X1)
    return entk_from_factors(f1, f1 if X2 is None else mlp_layer_factors(model, X2))


def entk_from_factors(f1: list, f2: list) -> torch.Tensor:
    """The eNTK ``(N1, O, N2, O)`` from two inputs' :func:`mlp_layer_factors`."""
    theta = None
    for (a1, d1, bias), (a2, d2, _) in zip(f1, f2, strict=True):
        n1, o, width = d1.shape
        block = (d1.reshape(n1 * o, width) @ d2.reshape(-1, width).T).reshape(n1, o, a2.shape[0], o)
        block = block * _input_gram(a1, a2, bias)[:, None, :, None]
        theta = block if theta is None else theta + block
    return theta


def pntk_factors_from_entk_factors(factors: list) -> list:
    """Sum-of-logits factors ``(A_l, Σ_k D_l[:, k]/√O, bias)`` from :func:`mlp_layer_factors` (exact)."""
    return [(a, d.sum(1) / math.sqrt(d.shape[1]), bias) for a, d, bias in factors]


def pntk_from_factors(f1: list, f2: list) -> torch.Tensor:
    """The pNTK ``(N1, N2)`` from two inputs' :func:`mlp_pntk_factors`: ``Σ_l (d_l d_lᵀ) ∘ (A_l A_lᵀ + 1)``."""
    kernel = None
    for (a1, d1, bias), (a2, d2, _) in zip(f1, f2, strict=True):
        block = (d1 @ d2.T) * _input_gram(a1, a2, bias)
        kernel = block if kernel is None else kernel + block
    return kernel


def mlp_pntk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor | None = None) -> torch.Tensor:
    """Exact pNTK ``(N1, N2)`` of an MLP from :func:`mlp_pntk_factors` (one backward pass per example)."""
    f1 = mlp_pntk_factors(model, X1)
    return pntk_from_factors(f1, f1 if X2 is None else mlp_pntk_factors(model, X2))


def mlp_pntk_factors(model: nn.Module, X: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Per layer: inputs ``A_l (N, n_in)`` and ``d_l = ∂g/∂z_l (N, n_out)`` for ``g = (1/√O) Σ_k f_k`` (one backward pass)."""
    _check_inputs(X)
    layers, activation = _mlp_parts(model)

    def g(taps, x):
        out, inputs = _tapped_forward(layers, activation, taps, x)
        return out.sum() / math.sqrt(out.numel()), inputs

    with torch.no_grad():
        D, A = vmap(grad(g, has_aux=True), in_dims=(None, 0))(_zero_taps(layers, X.dtype), X)
    return [(a, d, layer.bias is not None) for a, d, layer in zip(A, D, layers, strict=True)]


# --- reshaping, surrogates and errors --------------------------------------------------------------------

def flatten_ntk(theta: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``(N1, O, N2, O) → (N1·O, N2·O)``, row ``n·O + k``."""
    if theta.ndim != 4:
        raise ValueError(f"an eNTK is (N1, O, N2, O), got shape {tuple(theta.shape)}")
    n1, o, n2, o2 = theta.shape
    return theta.reshape(n1 * o, n2 * o2)


def kron_identity(kernel: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """``K ⊗ I_O`` in the eNTK's 4-D layout ``(N1, O, N2, O)``."""
    if kernel.ndim != 2 or n_outputs < 1:
        raise ValueError("kernel must be (N1, N2) and n_outputs >= 1")
    eye = torch.eye(n_outputs, dtype=kernel.dtype)
    return kernel[:, None, :, None] * eye[None, :, None, :]


def sum_of_logits(theta: torch.Tensor) -> torch.Tensor:
    """``(1/O) Σ_{k,l} Θ_{kl}``: the pNTK computed from a full eNTK (equal to :func:`pntk`)."""
    return theta.sum(dim=(1, 3)) / theta.shape[1]


def trace_kernel(theta: torch.Tensor) -> torch.Tensor:
    """``(1/O) Σ_k Θ_{kk}``: the ``K`` minimising ``‖Θ − K ⊗ I_O‖_F`` (the block diagonal's mean)."""
    return torch.diagonal(theta, dim1=1, dim2=3).mean(-1)


def first_logit_kernel(theta: torch.Tensor) -> torch.Tensor:
    """``Θ_{11}``: the eNTK of the first output alone (a common single-logit approximation)."""
    return theta[:, 0, :, 0]


def relative_error(theta: torch.Tensor, kernel: torch.Tensor) -> float:
    """``‖Θ − K ⊗ I_O‖_F / ‖Θ‖_F`` without forming ``K ⊗ I_O``."""
    if theta.ndim != 4 or kernel.shape != (theta.shape[0], theta.shape[2]):
        raise ValueError(f"need Θ (N1, O, N2, O) and K (N1, N2), got {tuple(theta.shape)} and {tuple(kernel.shape)}")
    diag = torch.diagonal(theta, dim1=1, dim2=3)  # (N1, N2, O)
    sq_err = (theta.pow(2).sum() - diag.pow(2).sum()) + (diag - kernel[..., None]).pow(2).sum()
    return float(torch.sqrt(sq_err.clamp_min(0)) / torch.linalg.norm(theta))


# --- kernel ridge regression -----------------------------------------------------------------------------

def kernel_regression(K_train, K_cross, targets, diag_reg: float = 1e-6) -> np.ndarray:
    """``K_cross (K_train + λ I)^{-1} targets``, ``λ = diag_reg · tr(K_train)/dim``, in float64.

    ``K_train`` is ``(n, n)`` (symmetric PSD), ``K_cross`` ``(m, n)``, ``targets`` ``(n,)`` or ``(n, c)``.
    """
    K = np.asarray(K_train, dtype=np.float64)
    C = np.asarray(K_cross, dtype=np.float64)
    Y = np.asarray(targets, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or C.ndim != 2 or C.shape[1] != K.shape[0] or Y.shape[0] != K.shape[0]:
        raise ValueError(f"shapes do not match: K_train {K.shape}, K_cross {C.shape}, targets {Y.shape}")
    if diag_reg < 0:
        raise ValueError(f"diag_reg must be >= 0, got {diag_reg}")
    from scipy import linalg

    ridge = diag_reg * np.trace(K) / K.shape[0]
    alpha = linalg.solve(K + ridge * np.eye(K.shape[0]), Y, assume_a="pos")
    return C @ alpha


def one_hot(labels, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    return np.eye(n_classes)[labels]


def entk_regression(theta_train, theta_cross, labels, diag_reg: float = 1e-6) -> np.ndarray:
    """Predictions ``(m, O)`` of eNTK regression on one-hot targets: one ``NO × NO`` solve."""
    n, o = theta_train.shape[:2]
    Y = one_hot(labels, o).reshape(n * o)
    return kernel_regression(flatten_ntk(theta_train), flatten_ntk(theta_cross), Y, diag_reg).reshape(-1, o)


def pntk_regression(kernel_train, kernel_cross, labels, n_outputs: int, diag_reg: float = 1e-6) -> np.ndarray:
    """Predictions ``(m, O)`` of ``θ̂ ⊗ I_O`` regression: one ``N × N`` solve shared by the ``O`` outputs."""
    return kernel_regression(kernel_train, kernel_cross, one_hot(labels, n_outputs), diag_reg)


# --- references by explicit loops (tests) ------------------------------------------------------------------

def _autograd_flat(model: nn.Module, scalar: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params, retain_graph=True)])


def explicit_entk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor) -> torch.Tensor:
    """Reference eNTK by a double loop of ``torch.autograd.grad`` (slow; for tests)."""
    def grads(X):
        rows = []
        for x in X:
            out = model(x.unsqueeze(0)).squeeze(0)
            rows.append(torch.stack([_autograd_flat(model, out[k]) for k in range(out.numel())]))
        return rows

    g1, g2 = grads(X1), grads(X2)
    o = g1[0].shape[0]
    theta = torch.zeros(len(g1), o, len(g2), o, dtype=g1[0].dtype)
    for n, a in enumerate(g1):
        for m, b in enumerate(g2):
            for k in range(o):
                for j in range(o):
                    theta[n, k, m, j] = torch.dot(a[k], b[j])
    return theta


def explicit_pntk(model: nn.Module, X1: torch.Tensor, X2: torch.Tensor) -> torch.Tensor:
    """Reference pNTK by a double loop of ``torch.autograd.grad`` of ``(1/√O) Σ_k f_k`` (for tests)."""
    def grads(X):
        rows = []
        for x in X:
            out = model(x.unsqueeze(0)).squeeze(0)
            rows.append(_autograd_flat(model, out.sum() / math.sqrt(out.numel())))
        return rows

    g1, g2 = grads(X1), grads(X2)
    kernel = torch.zeros(len(g1), len(g2), dtype=g1[0].dtype)
    for n, a in enumerate(g1):
        for m, b in enumerate(g2):
            kernel[n, m] = torch.dot(a, b)
    return kernel
