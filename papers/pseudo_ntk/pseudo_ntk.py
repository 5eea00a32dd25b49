"""A fast, well-founded approximation to the empirical NTK (Mohamadi, Bae & Sutherland, ICML 2023).

For a network ``f: ℝ^d → ℝ^O`` the empirical NTK (eNTK) on ``N`` inputs,
``Θ(x, x')_{kl} = ∇_θ f_k(x) · ∇_θ f_l(x')``, is an ``NO × NO`` matrix: ``O((NO)²)`` memory and up to
``O((NO)³)`` time to use. The **pseudo-NTK** ("sum of logits") is the eNTK of the scalar
``g(x) = (1/√O) Σ_k f_k(x)``,

    θ̂(x, x') = ∇_θ g(x) · ∇_θ g(x') = (1/O) Σ_{k,l} Θ(x, x')_{kl},        (the paper's pNTK definition)

an ``N × N`` matrix standing for ``Θ ≈ θ̂ ⊗ I_O``. The paper proves that, at initialisation and for a
wide final readout layer of width ``n``, the off-diagonal blocks ``Θ_{k≠l}`` vanish and the diagonal
ones agree, so ``‖Θ − θ̂ ⊗ I_O‖_F / ‖Θ‖_F → 0`` (at rate ``n^{-1/2}``), and shows that the
approximation serves its uses (kernel regression, spectra) while being orders of magnitude cheaper.

This module runs the experiment on scikit-learn digits (``O = 10``) with the PyTorch-default
initialisation of a ReLU MLP ``64 → n → … → n → 10`` (``common.smallnets.MLP``); every kernel comes from
``common/ntk.py``:

* :func:`width_point`: for one width and seed, the eNTK and pNTK on ``n_train`` training inputs and
  between the test and training inputs; the relative Frobenius errors of the pNTK and of the two
  baselines (first-logit kernel ``Θ_11``, trace kernel ``(1/O)Σ_k Θ_kk``), the relative error of
  ``λ_max``, and kernel ridge regression on one-hot targets with both kernels (test accuracy,
  prediction agreement).
* :func:`timing_methods`: zero-argument callables that build each kernel from scratch (per-example
  Jacobians with ``torch.func``, or sum-of-logits gradients) and solve its regression, for
  ``common.timing.compare``.
* :func:`train_model`: a few epochs of Adam on the training split (the "after training" kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import linalg as sparse_linalg

from common import ntk
from common.smallnets import MLP, SmallCNN1d, load_digits_data, load_mnist1d_data, train_classifier


@dataclass
class Split:
    """Training inputs/labels for the kernels and held-out inputs/labels for regression."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    X_fit: torch.Tensor  # all training examples (for training the network)
    y_fit: torch.Tensor
    n_classes: int


def load_split(n_train: int, n_test: int, random_state: int, dataset: str = "digits",
               dtype: torch.dtype = torch.float64) -> Split:
    """Stratified digits (or MNIST-1D) split; ``n_train``/``n_test`` examples drawn without replacement."""
    if n_train < 2 or n_test < 1:
        raise ValueError(f"need n_train >= 2 and n_test >= 1, got {n_train}, {n_test}")
    if dataset == "digits":
        data = load_digits_data(test_fraction=0.25, random_state=random_state)
    elif dataset == "mnist1d":
        data = load_mnist1d_data(num_samples=2000, random_state=random_state, channel=True)
    else:
        raise ValueError(f"dataset must be 'digits' or 'mnist1d', got {dataset!r}")
    if n_train > len(data.X_train) or n_test > len(data.X_test):
        raise ValueError(f"the split has only {len(data.X_train)} train / {len(data.X_test)} test examples")
    rng = np.random.default_rng(random_state)
    tr = torch.from_numpy(rng.choice(len(data.X_train), n_train, replace=False))
    te = torch.from_numpy(rng.choice(len(data.X_test), n_test, replace=False))
    return Split(data.X_train[tr].to(dtype), data.y_train[tr], data.X_test[te].to(dtype), data.y_test[te],
                 data.X_train.to(dtype), data.y_train, data.n_classes)


def make_model(width: int, depth: int, n_inputs: int, n_outputs: int, random_state: int,
               arch: str = "mlp", dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """ReLU MLP ``n_inputs → width (×depth) → n_outputs`` (or a 1-D CNN with ``width`` channels) at
    PyTorch's default initialisation, seeded by ``random_state`` without touching the global RNG."""
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got {width}, {depth}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        if arch == "mlp":
            model = MLP(n_inputs, (width,) * depth, n_outputs)
        elif arch == "cnn1d":
            model = SmallCNN1d(channels=(width // 2, width), n_classes=n_outputs, length=n_inputs)
        else:
            raise ValueError(f"arch must be 'mlp' or 'cnn1d', got {arch!r}")
    return model.to(dtype)


def train_model(model: torch.nn.Module, split: Split, epochs: int, random_state: int, lr: float = 1e-3,
                batch_size: int = 64) -> list[float]:
    """Adam on all training examples of the split (the network is trained in place)."""
    if epochs == 0:
        return []
    gen = torch.Generator().manual_seed(random_state)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train_classifier(model, split.X_fit, split.y_fit, [opt], epochs=epochs, batch_size=batch_size,
                            generator=gen)


def top_eigenvalue(matrix: np.ndarray) -> float:
    """Largest eigenvalue of a symmetric PSD matrix (Lanczos)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    v0 = np.ones(matrix.shape[0])
    return float(sparse_linalg.eigsh(matrix, k=1, which="LA", v0=v0,
                                     return_eigenvectors=False)[0])


def kernels(model: torch.nn.Module, split: Split) -> dict[str, torch.Tensor]:
    """eNTK and pNTK on (train, train) and (test, train).

    For an MLP the exact layer-wise formulas, with each input set's factors computed once and the pNTK's
    from the same factors (``Σ_k δ_k/√O``); otherwise per-example Jacobians and sum-of-logits gradients.
    """
    if isinstance(model, MLP):
        f_tr, f_te = ntk.mlp_layer_factors(model, split.X_train), ntk.mlp_layer_factors(model, split.X_test)
        p_tr, p_te = ntk.pntk_factors_from_entk_factors(f_tr), ntk.pntk_factors_from_entk_factors(f_te)
        return {"entk_train": ntk.entk_from_factors(f_tr, f_tr), "entk_cross": ntk.entk_from_factors(f_te, f_tr),
                "pntk_train": ntk.pntk_from_factors(p_tr, p_tr), "pntk_cross": ntk.pntk_from_factors(p_te, p_tr)}
    J_tr, J_te = ntk.per_example_jacobians(model, split.X_train), ntk.per_example_jacobians(model, split.X_test)
    G_tr, G_te = ntk.pntk_grads(model, split.X_train), ntk.pntk_grads(model, split.X_test)
    return {"entk_train": ntk.entk_from_jacobians(J_tr), "entk_cross": ntk.entk_from_jacobians(J_te, J_tr),
            "pntk_train": ntk.pntk_from_grads(G_tr), "pntk_cross": ntk.pntk_from_grads(G_te, G_tr)}


def width_point(model: torch.nn.Module, split: Split, diag_reg: float = 1e-6) -> dict[str, float]:
    """Approximation quality of the pNTK for one network (the paper's Figures on error, spectrum, regression).

    Returns the relative Frobenius error ``‖Θ − K ⊗ I_O‖_F/‖Θ‖_F`` on the training kernel for
    ``K`` = pNTK, first-logit kernel, trace kernel; the relative error of ``λ_max`` (``λ_max(θ̂ ⊗ I) =
    λ_max(θ̂)``); test accuracy of eNTK and pNTK kernel regression and their agreement (fraction of equal
    argmax predictions); and ``|pNTK − sum_of_logits(eNTK)|`` as a consistency check of the two paths.
    """
    k = kernels(model, split)
    theta, p = k["entk_train"], k["pntk_train"]
    o = theta.shape[1]
    lam_e = top_eigenvalue(ntk.flatten_ntk(theta).numpy())
    lam_p = top_eigenvalue(p.numpy())
    pred_e = ntk.entk_regression(theta.numpy(), k["entk_cross"].numpy(), split.y_train.numpy(), diag_reg).argmax(1)
    pred_p = ntk.pntk_regression(p.numpy(), k["pntk_cross"].numpy(), split.y_train.numpy(), o, diag_reg).argmax(1)
    y = split.y_test.numpy()
    consistency = float((ntk.sum_of_logits(theta) - p).abs().max() / p.abs().max())
    return {
        "rel_pntk": ntk.relative_error(theta, p),
        "rel_first_logit": ntk.relative_error(theta, ntk.first_logit_kernel(theta)),
        "rel_trace": ntk.relative_error(theta, ntk.trace_kernel(theta)),
        "lambda_max_rel": abs(lam_p - lam_e) / lam_e,
        "acc_entk": float((pred_e == y).mean()),
        "acc_pntk": float((pred_p == y).mean()),
        "agreement": float((pred_e == pred_p).mean()),
        "consistency": consistency,
    }


def timing_methods(model: torch.nn.Module, split: Split, diag_reg: float = 1e-6,
                   path: str = "jacobian") -> dict[str, Callable[[], object]]:
    """Build-and-solve callables ``{"entk": ..., "pntk": ...}`` for ``common.timing.compare``.

    Both use the same model, inputs, ridge and kernel path. ``path="jacobian"`` (any network): per-example
    Jacobians ``(N, O, P)`` (``vmap(jacrev)``) against sum-of-logits gradients ``(N, P)`` (``vmap(grad)``),
    then the Gram matrices. ``path="mlp"``: the exact layer-wise MLP formulas (``ntk.mlp_entk`` against
    ``ntk.mlp_pntk``), which never form the ``P``-long Jacobian: the cheapest eNTK we have, so the harder
    baseline for a speed claim. Then one ``NO × NO`` solve (eNTK) against one ``N × N`` solve shared by the
    ``O`` outputs (pNTK), and the test predictions.
    """
    o = split.n_classes
    labels = split.y_train.numpy()
    if path == "jacobian":
        def build_entk():
            J, Jt = ntk.per_example_jacobians(model, split.X_train), ntk.per_example_jacobians(model, split.X_test)
            return ntk.entk_from_jacobians(J), ntk.entk_from_jacobians(Jt, J)

        def build_pntk():
            G, Gt = ntk.pntk_grads(model, split.X_train), ntk.pntk_grads(model, split.X_test)
            return ntk.pntk_from_grads(G), ntk.pntk_from_grads(Gt, G)
    elif path == "mlp":
        def build_entk():
            return ntk.mlp_entk(model, split.X_train), ntk.mlp_entk(model, split.X_test, split.X_train)

        def build_pntk():
            return ntk.mlp_pntk(model, split.X_train), ntk.mlp_pntk(model, split.X_test, split.X_train)
    else:
        raise ValueError(f"path must be 'jacobian' or 'mlp', got {path!r}")

    def entk():
        train, cross = build_entk()
        return ntk.entk_regression(train.numpy(), cross.numpy(), labels, diag_reg)

    def pntk():
        train, cross = build_pntk()
        return ntk.pntk_regression(train.numpy(), cross.numpy(), labels, o, diag_reg)

    return {"entk": entk, "pntk": pntk}
