"""Neuron pruning during training with K-FAC saliencies and a K-FAC spectral-radius (flatness) term.

Ebrahimi & Klabjan (arXiv 2111.08577, IJCNN 2023) prune whole *neurons* while training from scratch
(no pre-trained network) and steer the pruned network toward a flatter minimum by "exploring the
spectral radius of the Hessian", with a Kronecker-factored (K-FAC) curvature approximation. Only the
abstract and the opening of the introduction could be retrieved (no official code exists), so the
algorithm below is our reading of it, built from the standard K-FAC pieces the paper names:

* **K-FAC block** of a linear layer ``z = W ã`` (``ã = [a; 1]`` with the bias as a last column):
  ``H_l ≈ S_l ⊗ A_l`` with ``S_l = E[δ δᵀ]`` (``δ = ∂ℓ/∂z``, labels sampled from the model, i.e. the
  Fisher) and ``A_l = E[ã ãᵀ]`` (Martens & Grosse, 2015; :func:`kfac_statistics`).
* **Neuron saliency** (OBD on the K-FAC block): removing neuron ``j`` of layer ``l`` zeroes row
  ``w̃_j`` of ``[W b]``; the quadratic model gives ``ΔL_j ≈ ½ vec(ΔW)ᵀ (S ⊗ A) vec(ΔW) =
  ½ S_jj · w̃_jᵀ A w̃_j`` (:func:`kfac_saliency`). ``w̃_jᵀ A w̃_j = E[z_j²]``, so it is the product
  of the neuron's output-gradient energy and its pre-activation energy.
* **Spectral radius** of the block-diagonal K-FAC curvature:
  ``ρ ≈ max_l λ_max(S_l ⊗ A_l) = max_l λ_max(S_l) λ_max(A_l)`` (:func:`kfac_spectral_radius`).
* **Flatness term** (:func:`flatness_penalty`): for the layer ``l*`` with the largest block eigenvalue,
  with ``v*`` and ``u*`` the top eigenvectors of ``S_l*`` and ``A_l*`` (refreshed every epoch and held
  fixed in between), the loss adds ``μ · (v*ᵀ S_l*(batch) v*) · (u*ᵀ A_l*(batch) u*)``, the Rayleigh
  quotient of the block ``S_l* ⊗ A_l*`` in the direction ``v* ⊗ u*``. By Danskin's theorem its gradient
  at the refresh point is ``∂ρ = λ_max(A)·∂λ_max(S) + λ_max(S)·∂λ_max(A)``. ``v*ᵀ S v* = E[(v*ᵀδ)²]``
  with ``δ = ∂ℓ/∂z`` (labels sampled from the model), so its gradient needs ``∂δ/∂θ``, a *second*
  derivative of the loss, which double backprop gives (``δ`` computed with ``create_graph=True``).
  The ``S`` part is what lets the term act on the first layer, whose ``A`` is fixed by the data.
* **Training and pruning together** (:func:`train_and_prune`): SGD from scratch; at each epoch of a
  geometric schedule (:func:`keep_schedule`) every hidden layer drops its lowest-saliency active
  neurons down to the step's budget; training continues with the pruned neurons masked.

Pruned neurons are masked: their incoming row, bias and outgoing column in the next layer are zero
(:func:`_apply_masks`), as in the physically smaller network.

Baselines at the same schedule, budget, data, batch order and seeds: magnitude (``‖w_j‖₂`` of the incoming row,
Li et al. 2017; :func:`magnitude_saliency`) and random neurons (:func:`random_saliency`), both
trained without the flatness term. torch-pruning is the peer that physically removes the neurons
(:func:`physically_prune`) and re-scores magnitude, as a side-by-side cross-check.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.curvature import hessian_max_eigenvalue, kfac_factors, kronecker_max_eigenvalue
from common.smallnets import MLP

METHODS = ("kfac", "magnitude", "random")


def hidden_layers(model: MLP) -> list[nn.Linear]:
    """The linear layers whose outputs are prunable neurons (all but the head)."""
    return list(model.layers[:-1])


def keep_schedule(n_neurons: int, keep_ratio: float, n_steps: int) -> list[int]:
    """Neurons kept after each of ``n_steps`` pruning steps: ``round(n · r^{t/T})``, ending at the budget.

    The final budget is ``max(1, round(n · keep_ratio))``; the sequence never increases.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if n_steps < 1 or n_neurons < 1:
        raise ValueError("n_steps and n_neurons must be >= 1")
    final = max(1, round(n_neurons * keep_ratio))
    counts = [max(final, round(n_neurons * keep_ratio ** (t / n_steps))) for t in range(1, n_steps + 1)]
    counts[-1] = final
    return [min(c, n_neurons) for c in np.minimum.accumulate(counts).tolist()]


@dataclass
class KFACStats:
    """Per linear layer: ``S = E[δδᵀ]`` (out × out) and ``A = E[ããᵀ]`` (in+1 × in+1)."""

    S: list[torch.Tensor] = field(default_factory=list)
    A: list[torch.Tensor] = field(default_factory=list)


def kfac_statistics(model: MLP, X: torch.Tensor, generator: torch.Generator | None = None) -> KFACStats:
    """K-FAC factors of every linear layer on ``X``, with one label per example sampled from the model.

    ``δ_i = ∂ℓ_i/∂z`` per example (the mean-loss gradient times ``N``); ``ã = [a; 1]`` includes the bias.
    """
    inputs, outputs = [], []

    def keep(module, inp, out):
        inputs.append(inp[0])
        outputs.append(out)

    hooks = [layer.register_forward_hook(keep) for layer in model.layers]
    try:
        logits = model(X)
    finally:
        for h in hooks:
            h.remove()
    for o in outputs:
        o.retain_grad()
    with torch.no_grad():
        labels = torch.multinomial(logits.softmax(-1).double(), 1, generator=generator).squeeze(1)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(logits, labels, reduction="sum").backward()
    stats = KFACStats()
    for a, z in zip(inputs, outputs, strict=True):
        a_tilde = torch.cat([a.detach(), torch.ones(a.size(0), 1, dtype=a.dtype)], 1)
        S, A = kfac_factors(z.grad.detach().double(), a_tilde.double())
        stats.S.append(S)
        stats.A.append(A)
    model.zero_grad(set_to_none=True)
    return stats


def augmented_weight(layer: nn.Linear) -> torch.Tensor:
    """``[W b]`` (out × in+1), the rows a neuron's removal zeroes."""
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
    return torch.cat([layer.weight.detach(), bias.detach().unsqueeze(1)], 1)


def kfac_saliency(S: torch.Tensor, A: torch.Tensor, W_aug: torch.Tensor) -> torch.Tensor:
    """``ΔL_j ≈ ½ S_jj · w̃_jᵀ A w̃_j`` for every output neuron ``j`` (OBD on the K-FAC block ``S ⊗ A``)."""
    if S.size(0) != W_aug.size(0) or A.size(0) != W_aug.size(1):
        raise ValueError(f"shapes disagree: S {tuple(S.shape)}, A {tuple(A.shape)}, W {tuple(W_aug.shape)}")
    W_aug = W_aug.to(A.dtype)
    return 0.5 * torch.diagonal(S) * torch.einsum("ji,ik,jk->j", W_aug, A, W_aug)


def magnitude_saliency(layer: nn.Linear) -> torch.Tensor:
    """``‖w_j‖₂`` of each neuron's incoming weight row (bias excluded)."""
    return layer.weight.detach().norm(dim=1)


def random_saliency(n: int, rng: np.random.Generator) -> torch.Tensor:
    """Independent uniform scores: pruning the lowest removes a uniformly random subset."""
    return torch.from_numpy(rng.random(n))


def kfac_spectral_radius(stats: KFACStats) -> tuple[float, int]:
    """``max_l λ_max(S_l) λ_max(A_l)`` and the arg-max layer (block-diagonal K-FAC spectral radius)."""
    values = [kronecker_max_eigenvalue(S, A) for S, A in zip(stats.S, stats.A, strict=True)]
    best = int(np.argmax(values))
    return values[best], best


def flatness_direction(stats: KFACStats) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(l*, v*, u*)``: the layer that sets ρ and the top eigenvectors of its ``S`` and ``A``."""
    _, layer = kfac_spectral_radius(stats)
    _, s_vecs = torch.linalg.eigh(stats.S[layer])
    _, a_vecs = torch.linalg.eigh(stats.A[layer])
    return layer, s_vecs[:, -1].float(), a_vecs[:, -1].float()


def flatness_penalty(delta: torch.Tensor, a_tilde: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(vᵀ S v) · (uᵀ A u)`` with ``S = mean(δ δᵀ)`` and ``A = mean(ã ãᵀ)`` of the batch.

    Differentiable through ``δ`` (pass one computed with ``create_graph=True``) and through ``ã``.
    """
    return (delta @ v).pow(2).mean() * (a_tilde @ u).pow(2).mean()


def _apply_masks(model: MLP, masks: list[torch.Tensor]) -> None:
    """Zero each pruned neuron's incoming row, bias and outgoing column (the next layer's input)."""
    with torch.no_grad():
        for li, (layer, mask) in enumerate(zip(hidden_layers(model), masks, strict=True)):
            layer.weight[~mask] = 0.0
            if layer.bias is not None:
                layer.bias[~mask] = 0.0
            model.layers[li + 1].weight[:, ~mask] = 0.0


def prune_step(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """New mask keeping the ``keep`` highest-scoring *active* neurons (ties broken by index)."""
    if not 1 <= keep <= int(mask.sum()):
        raise ValueError(f"keep must be in [1, {int(mask.sum())}], got {keep}")
    masked = torch.where(mask, scores.double(), torch.tensor(-float("inf"), dtype=torch.float64))
    order = torch.argsort(masked, descending=True, stable=True)
    new = torch.zeros_like(mask)
    new[order[:keep]] = True
    return new


@dataclass
class PruneResult:
    model: MLP
    masks: list[torch.Tensor]
    train_acc: float
    test_acc: float
    spectral_radius_kfac: float
    history: list[float]
    flat_active_epochs: list[bool] = field(default_factory=list)  # penalty non-zero in the epoch
    flat_layers: list[int] = field(default_factory=list)  # l* of each epoch (with the term)
    batch_orders: list[torch.Tensor] = field(default_factory=list)  # only with keep_batch_orders

    @property
    def flat_active_fraction(self) -> float:
        """Fraction of epochs in which the flatness penalty was non-zero (0 without the term)."""
        return float(np.mean(self.flat_active_epochs)) if self.flat_active_epochs else 0.0


def train_and_prune(data, method: str, hidden=(128, 64), keep_ratio: float = 0.1, epochs: int = 30,
                    prune_epochs=(4, 7, 10, 13), lr: float = 0.05, momentum: float = 0.9,
                    batch_size: int = 64, flat_weight: float = 0.0, stats_examples: int = 512,
                    seed: int = 0, keep_batch_orders: bool = False) -> PruneResult:
    """Train an MLP from scratch and prune its hidden neurons on a schedule (the paper's setting).

    At the start of each epoch in ``prune_epochs`` every hidden layer keeps the
    ``keep_schedule(n, keep_ratio, len(prune_epochs))`` highest-saliency active neurons
    (``method`` ∈ ``kfac``/``magnitude``/``random``). With ``flat_weight = μ > 0`` the loss adds
    ``μ·(v*ᵀS_l*v*)(u*ᵀA_l*u*)`` on each batch (:func:`flatness_penalty`, with labels sampled from the
    model for ``δ``); the K-FAC statistics are refreshed on ``stats_examples`` training examples every
    epoch. Everything random comes from ``seed``: the initial weights and the batch order from one
    generator, the K-FAC samples (examples and labels) from another, so every method and flatness
    weight sees the same initialisation and batch order.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if flat_weight < 0:
        raise ValueError("flat_weight must be >= 0")
    if sorted(prune_epochs) != list(prune_epochs) or not all(0 <= e < epochs for e in prune_epochs):
        raise ValueError(f"prune_epochs must be increasing epochs in [0, {epochs}), got {prune_epochs}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # batch order
    stats_gen = torch.Generator().manual_seed(seed + 1_000_003)  # K-FAC examples and sampled labels
    rng = np.random.default_rng(seed)
    X, y = data.X_train, data.y_train
    model = MLP(data.n_features, hidden, data.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    masks = [torch.ones(layer.out_features, dtype=torch.bool) for layer in hidden_layers(model)]
    schedules = [keep_schedule(layer.out_features, keep_ratio, len(prune_epochs)) for layer in hidden_layers(model)]
    stats, direction, history = None, None, []
    active_epochs, flat_layers, orders = [], [], []
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    for epoch in range(epochs):
        if method == "kfac" or flat_weight > 0:
            idx = torch.randperm(len(X), generator=stats_gen)[:stats_examples]
            stats = kfac_statistics(model, X[idx], generator=stats_gen)
        if epoch in prune_epochs:
            step = list(prune_epochs).index(epoch)
            for li, layer in enumerate(hidden_layers(model)):
                if method == "kfac":
                    scores = kfac_saliency(stats.S[li], stats.A[li], augmented_weight(layer))
                elif method == "magnitude":
                    scores = magnitude_saliency(layer)
                else:
                    scores = random_saliency(layer.out_features, rng)
                masks[li] = prune_step(scores, masks[li], schedules[li][step])
            _apply_masks(model, masks)
        hook = None
        if flat_weight > 0:
            direction = flatness_direction(stats)
            flat_layers.append(direction[0])
            hook = model.layers[direction[0]].register_forward_hook(lambda m, i, o: captured.append((i[0], o)))
        order = torch.randperm(len(X), generator=gen)
        if keep_batch_orders:
            orders.append(order.clone())
        total, penalty_sum = 0.0, 0.0
        for start in range(0, len(X), batch_size):
            b = order[start:start + batch_size]
            captured.clear()
            logits = model(X[b])
            loss = F.cross_entropy(logits, y[b])
            if hook is not None:
                a, z = captured[0]
                with torch.no_grad():
                    sampled = torch.multinomial(logits.softmax(-1).double(), 1, generator=stats_gen).squeeze(1)
                # per-example δ = ∂ℓ_i/∂z, kept in the graph: the penalty's gradient is a second derivative
                (delta,) = torch.autograd.grad(F.cross_entropy(logits, sampled, reduction="sum"), z,
                                               create_graph=True)
                a_tilde = torch.cat([a, torch.ones(a.size(0), 1, dtype=a.dtype)], 1)
                penalty = flatness_penalty(delta, a_tilde, direction[1], direction[2])
                penalty_sum += float(penalty.detach())
                loss = loss + flat_weight * penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _apply_masks(model, masks)
            total += float(loss.detach()) * len(b)
        if hook is not None:
            hook.remove()
            active_epochs.append(penalty_sum > 0)
        history.append(total / len(X))
    model.eval()
    with torch.no_grad():
        train_acc = float((model(X).argmax(-1) == y).float().mean())
        test_acc = float((model(data.X_test).argmax(-1) == data.y_test).float().mean())
    rho, _ = kfac_spectral_radius(kfac_statistics(model, X, generator=stats_gen))
    return PruneResult(model, masks, train_acc, test_acc, rho, history, active_epochs, flat_layers, orders)


def hessian_spectral_radius(model: nn.Module, X: torch.Tensor, y: torch.Tensor, max_iter: int = 100,
                            tol: float = 1e-4, seed: int = 0, with_iterations: bool = False):
    """λ_max of the full-batch training-loss Hessian (power iteration with HVPs, all parameters).

    Pruned neurons add only zero rows and columns (ReLU'(0) = 0 in torch and their outputs are zero),
    so this is the spectral radius of the physically pruned network. With ``with_iterations`` it returns
    ``(λ_max, power iterations used)``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    lam, iters = hessian_max_eigenvalue(lambda: F.cross_entropy(model(X), y), params, max_iter=max_iter,
                                        tol=tol, generator=torch.Generator().manual_seed(seed))
    return (lam, iters) if with_iterations else lam


def count_parameters(n_in: int, hidden_kept, n_out: int) -> int:
    """Weights + biases of the dense MLP ``n_in → hidden_kept… → n_out``."""
    sizes = [n_in, *hidden_kept, n_out]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def physically_prune(model: MLP, masks: list[torch.Tensor], example: torch.Tensor) -> MLP:
    """Remove the masked-out neurons with torch-pruning's dependency graph (peer; returns a copy)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
    for layer, mask in zip(hidden_layers(pruned), masks, strict=True):
        idxs = torch.nonzero(~mask).flatten().tolist()
        if idxs:
            graph.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=idxs).prune()
    return pruned


def torch_pruning_magnitude(model: MLP, example: torch.Tensor) -> list[torch.Tensor]:
    """torch-pruning's L2 ``MagnitudeImportance`` of each hidden layer's neurons (its own row only)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None)
    out = []
    for layer in hidden_layers(model):
        group = graph.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=list(range(layer.out_features)))
        out.append(imp(group).detach())
    return out
