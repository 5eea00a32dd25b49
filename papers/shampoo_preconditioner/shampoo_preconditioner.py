"""A New Perspective on Shampoo's Preconditioner (Morwani, Shapira, Vyas, Malach, Kakade, Janson; ICLR 2025).

For a weight ``W ∈ ℝ^{m×n}`` with gradients ``G``, Shampoo preconditions with ``L = E[G Gᵀ]``
and ``R = E[Gᵀ G]``; read as a Kronecker approximation of ``H = E[vec(G) vec(G)ᵀ]`` it uses
``H ≈ L^{1/2} ⊗ R^{1/2}`` (**Shampoo**). The paper shows that ``L ⊗ R`` (**Shampoo²**) is exactly
one step of power iteration, started from ``(I_m, I_n)``, for the *optimal* Kronecker
approximation ``argmin ‖H − A ⊗ B‖_F`` (top singular pair of the Van Loan–Pitsianis
rearrangement ``ℛ(H)``), because ``ℛ(H) vec(I_n) = vec(E[G Gᵀ])`` and
``ℛ(H)ᵀ vec(I_m) = vec(E[Gᵀ G])``. Empirically Shampoo² is close to optimal; Shampoo (the
square root) is not. Two targets ``H`` are studied:

* **Gauss–Newton** ``H_GN = E_x[J_xᵀ (diag p − p pᵀ) J_x]``, i.e. the Fisher with labels
  sampled from the model; the "gradients" are ``g̃_c = J_xᵀ S_{:,c}`` with ``S Sᵀ = diag p − p pᵀ``
  (the exact expectation over sampled labels);
* **Adagrad** ``H_Ada = E[vec(G_B) vec(G_B)ᵀ]`` over mini-batch gradients ``G_B`` (true labels).

All linear algebra is in :mod:`common.curvature`. This module assembles, for one linear layer
of a trained MLP, the targets and the approximations compared by cosine similarity:
optimal Kronecker (power iteration to convergence), Shampoo², Shampoo and K-FAC
(``E[δ δᵀ] ⊗ E[a aᵀ]``), and — for the Gauss–Newton view — Shampoo²'s practical variants
(Section 5 of the paper): one sampled label per example, batch gradients (sampled or true
labels) and the empirical Fisher (per-example gradients at the true labels).

:func:`run_seed` trains one net and analyses every layer at every checkpoint; :func:`summarize`
reduces one seed's cells to the numbers the claims are decided on across seeds. The fair baseline
of the empirical Fisher is the **one-sample sampled-label** estimate (the same examples, one label
per example drawn from the model: the same number of gradients and the same kind of sampling noise),
not the exact expectation over labels, which has no sampling noise at all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common import curvature as cv
from common.smallnets import MLP, Dataset, load_digits_data, load_mnist1d_data, train_classifier


def load_data(name: str, random_state: int = 0) -> Dataset:
    """``"digits"`` (scikit-learn, 64 features) or ``"mnist1d"`` (procedural, 40 features)."""
    if name == "digits":
        return load_digits_data(random_state=random_state)
    if name == "mnist1d":
        return load_mnist1d_data(num_samples=4000, random_state=random_state)
    raise ValueError(f"unknown dataset {name!r}; use 'digits' or 'mnist1d'")


def train_with_checkpoints(data: Dataset, hidden: tuple[int, ...], checkpoint_epochs: list[int], lr: float = 3e-3,
                           batch_size: int = 64, random_state: int = 0) -> dict[int, dict]:
    """Train an MLP with Adam; return ``{epoch: state_dict}`` at each checkpoint epoch (0 = initialization)."""
    if sorted(checkpoint_epochs) != list(checkpoint_epochs) or min(checkpoint_epochs) < 0:
        raise ValueError(f"checkpoint_epochs must be sorted and non-negative, got {checkpoint_epochs}")
    torch.manual_seed(random_state)
    model = MLP(data.n_features, hidden, data.n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(random_state)
    checkpoints, done = {}, 0
    for epoch in checkpoint_epochs:
        train_classifier(model, data.X_train, data.y_train, [optimizer], epochs=epoch - done, batch_size=batch_size,
                         generator=generator)
        done = epoch
        checkpoints[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return checkpoints


def _cosines(H: torch.Tensor, L: torch.Tensor, R: torch.Tensor, kfac: tuple[torch.Tensor, torch.Tensor],
             max_iter: int) -> dict[str, float]:
    m, n = L.size(0), R.size(0)
    A, B, sigma, iterations = cv.optimal_kronecker(H, m, n, max_iter=max_iter, tol=1e-10)
    return {
        "optimal": sigma / float(H.norm()),
        "shampoo2": cv.kronecker_cosine(H, L, R),
        "shampoo": cv.kronecker_cosine(H, cv.psd_power(L, 0.5), cv.psd_power(R, 0.5)),
        "kfac": cv.kronecker_cosine(H, *kfac),
        "power_iterations": float(iterations),
    }


def identity_error(H: torch.Tensor, L: torch.Tensor, R: torch.Tensor) -> float:
    """``max(‖A₁ − L‖, ‖B₁ − R‖) / ‖·‖`` with ``(A₁, B₁)`` one power step on ``ℛ(H)`` from ``(I, I)``."""
    eye_m = torch.eye(L.size(0), dtype=H.dtype)
    eye_n = torch.eye(R.size(0), dtype=H.dtype)
    A1, B1 = cv.power_iteration_step(H, eye_m, eye_n)
    return max(float((A1 - L).norm() / L.norm()), float((B1 - R).norm() / R.norm()))


def analyze_layer(model: nn.Module, layer_index: int, X: torch.Tensor, y: torch.Tensor, batch_size: int = 8,
                  adagrad_passes: int = 4, max_iter: int = 300, generator: torch.Generator | None = None) -> dict:
    """Cosine similarities of every approximation to ``H_GN`` and ``H_Ada`` for ``model.layers[layer_index]``.

    Returns ``{"gn": {...}, "ada": {...}, "gn_variants": {...}, "identity_error": float}``; all
    matrices are float64. ``batch_size`` is the mini-batch size of the Adagrad gradients and of the
    batch-gradient variants; ``adagrad_passes`` reshuffles of the examples give the Adagrad stream.
    """
    model = model.double()
    X = X.double()
    layer = model.layers[layer_index]
    names = [f"layers.{layer_index}.weight", f"layers.{layer_index}.bias"]
    jac, logits = cv.per_example_jacobians(model, X, names)
    J_w, J_b = jac[names[0]], jac[names[1]]
    probs = logits.softmax(-1)
    acts = cv.layer_inputs(model, layer, X)

    # Gauss–Newton view: exact expectation over sampled labels via S Sᵀ = diag p − p pᵀ.
    pseudo = cv.gauss_newton_pseudo_grads(J_w, probs)
    H_gn = cv.second_moment(pseudo)
    L_gn, R_gn = cv.shampoo_factors(pseudo)
    kfac_gn = cv.kfac_factors(cv.gauss_newton_pseudo_grads(J_b, probs), acts)
    out = {"gn": _cosines(H_gn, L_gn, R_gn, kfac_gn, max_iter), "identity_error": identity_error(H_gn, L_gn, R_gn)}

    # Adagrad view: second moment of mini-batch gradients at the true labels.
    true_grads = cv.label_grads(J_w, probs, y)
    batches = torch.cat([cv.batch_means(true_grads, batch_size, generator) for _ in range(adagrad_passes)])
    H_ada = cv.second_moment(batches)
    L_ada, R_ada = cv.shampoo_factors(batches)
    deltas = cv.label_grads(J_b, probs, y)
    out["ada"] = _cosines(H_ada, L_ada, R_ada, cv.kfac_factors(deltas, acts), max_iter)
    out["identity_error"] = max(out["identity_error"], identity_error(H_ada, L_ada, R_ada))

    # Practical Shampoo² estimates of the Gauss–Newton factors (paper, Section 5).
    sampled = cv.sample_labels(probs, generator)
    sampled_grads = cv.label_grads(J_w, probs, sampled)
    variants = {
        "exact": (L_gn, R_gn),
        "sampled": cv.shampoo_factors(sampled_grads),
        "empirical_fisher": cv.shampoo_factors(true_grads),
        "batch_sampled": cv.shampoo_factors(torch.cat([cv.batch_means(sampled_grads, batch_size, generator)
                                                       for _ in range(adagrad_passes)])),
        "batch_true": cv.shampoo_factors(batches),
    }
    out["gn_variants"] = {k: cv.kronecker_cosine(H_gn, L, R) for k, (L, R) in variants.items()}
    return out


METHODS = ("optimal", "shampoo2", "shampoo", "kfac")
VARIANTS = ("exact", "sampled", "batch_sampled", "batch_true", "empirical_fisher")


def run_seed(dataset: str, hidden: tuple[int, ...], checkpoint_epochs: list[int], n_examples: int,
             batch_size: int = 8, random_state: int = 0) -> dict[tuple[int, int], dict]:
    """One seed: data split, training, example subset and label sampling all drawn from ``random_state``.

    Returns ``{(epoch, layer): analyze_layer(...)}`` for every checkpoint and every linear layer.
    """
    data = load_data(dataset, random_state=random_state)
    checkpoints = train_with_checkpoints(data, tuple(hidden), checkpoint_epochs, random_state=random_state)
    gen = torch.Generator().manual_seed(random_state)
    idx = torch.randperm(len(data.X_train), generator=gen)[:n_examples]
    X, y = data.X_train[idx], data.y_train[idx]
    results = {}
    for epoch, state in checkpoints.items():
        model = MLP(data.n_features, tuple(hidden), data.n_classes)
        model.load_state_dict(state)
        for layer in range(len(model.layers)):
            results[(epoch, layer)] = analyze_layer(model, layer, X, y, batch_size=batch_size, generator=gen)
    return results


def summarize(results: dict[tuple[int, int], dict]) -> dict[str, float]:
    """One seed's cells reduced to scalars (means over cells, extremes, fractions of cells).

    ``gap.*``: cos(optimal) − cos(Shampoo²) over (layer, checkpoint, view) cells; ``mean.<view>.<method>``;
    ``gn_variants.mean.<variant>``; ``sampled_minus_ef``: one-sample sampled labels minus empirical Fisher
    (mean over cells, and the fraction of cells where the sampled estimate is closer); ``exact_minus_ef``:
    the exact expectation minus the empirical Fisher (reported only: not a like-for-like comparison);
    ``batch_sampled_minus_true``: batch gradients with sampled minus true labels.
    """
    if not results:
        raise ValueError("no cells to summarize")
    cells = [r[view] for r in results.values() for view in ("gn", "ada")]
    gaps = np.array([c["optimal"] - c["shampoo2"] for c in cells])
    out = {
        "identity_error": max(r["identity_error"] for r in results.values()),
        "gap.max": float(gaps.max()), "gap.mean": float(gaps.mean()), "gap.min": float(gaps.min()),
        "shampoo2_beats_shampoo": float(np.mean([c["shampoo2"] > c["shampoo"] for c in cells])),
        "shampoo2_beats_kfac": float(np.mean([c["shampoo2"] >= c["kfac"] for c in cells])),
    }
    for view in ("gn", "ada"):
        for m in METHODS:
            out[f"mean.{view}.{m}"] = float(np.mean([r[view][m] for r in results.values()]))
    gv = [r["gn_variants"] for r in results.values()]
    for v in VARIANTS:
        out[f"gn_variants.mean.{v}"] = float(np.mean([g[v] for g in gv]))
    sampled_ef = np.array([g["sampled"] - g["empirical_fisher"] for g in gv])
    out["sampled_minus_ef.mean"] = float(sampled_ef.mean())
    out["sampled_minus_ef.fraction"] = float(np.mean(sampled_ef > 0))
    exact_ef = np.array([g["exact"] - g["empirical_fisher"] for g in gv])
    out["exact_minus_ef.mean"] = float(exact_ef.mean())
    out["exact_minus_ef.fraction"] = float(np.mean(exact_ef > 0))
    out["batch_sampled_minus_true.mean"] = float(np.mean([g["batch_sampled"] - g["batch_true"] for g in gv]))
    return out
