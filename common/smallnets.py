"""Small models and offline data sets that train in seconds on a CPU.

Data (nothing is downloaded):

* :func:`load_digits_data`: scikit-learn's bundled 8×8 digits (1797 images, 10 classes),
  pixels scaled to ``[0, 1]`` (÷16), stratified train/test split; ``classes=(0, 1)`` gives a
  binary "digits-2" analogue of MNIST-2.
* :func:`load_mnist1d_data`: MNIST-1D (Greydanus, 2020) generated procedurally by the
  ``mnist1d`` package's ``make_dataset`` (length-40 signals, 10 classes). Its ``get_dataset``
  downloads by default and is never called.

Models: :class:`MLP` (``in → hidden… → out``, ReLU or tanh), :class:`SmallCNN2d` (8×8 digits)
and :class:`SmallCNN1d` (MNIST-1D). :func:`train_classifier` runs seeded mini-batch training
with any list of optimizers (e.g. Muon for the hidden matrices + AdamW for the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Dataset:
    """Train/test tensors (float32 inputs, int64 labels)."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, random_state: int | None) -> tuple:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=random_state)


def load_digits_data(test_fraction: float = 0.25, random_state: int | None = 0, image: bool = False,
                     classes: Sequence[int] | None = None) -> Dataset:
    """scikit-learn digits; ``image=True`` gives ``(N, 1, 8, 8)``, else ``(N, 64)``.

    ``classes`` keeps only those digits and relabels them ``0..k−1`` (``(0, 1)``: digits-2).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X, y = data.data.astype(np.float32) / 16.0, data.target.astype(np.int64)
    if classes is not None:
        classes = list(classes)
        if len(classes) < 2 or any(c not in range(10) for c in classes):
            raise ValueError(f"classes must be at least two digits in 0..9, got {classes}")
        keep = np.isin(y, classes)
        X, y = X[keep], np.searchsorted(np.array(sorted(classes)), y[keep]).astype(np.int64)
    X_tr, X_te, y_tr, y_te = _split(X, y, test_fraction, random_state)
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    return Dataset(torch.from_numpy(X_tr).reshape(shape), torch.from_numpy(y_tr),
                   torch.from_numpy(X_te).reshape(shape), torch.from_numpy(y_te), int(y.max()) + 1)


def load_mnist1d_data(num_samples: int = 5000, random_state: int = 42, channel: bool = False,
                      train_split: float = 0.8) -> Dataset:
    """MNIST-1D generated with ``mnist1d.data.make_dataset`` (no download).

    Defaults are the package's (5000 samples, 80/20 split, length 40); ``random_state`` is the
    generator's seed. ``channel=True`` gives ``(N, 1, 40)`` for :class:`SmallCNN1d`.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("MNIST-1D needs the `mnist1d` package (pip install mnist1d)") from exc
    if num_samples < 20:
        raise ValueError(f"num_samples must be at least 20, got {num_samples}")
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, random_state, train_split
    data = make_dataset(args)
    X_tr, X_te = (torch.as_tensor(np.asarray(data[k]), dtype=torch.float32) for k in ("x", "x_test"))
    y_tr, y_te = (torch.as_tensor(np.asarray(data[k]), dtype=torch.int64) for k in ("y", "y_test"))
    if channel:
        X_tr, X_te = X_tr.unsqueeze(1), X_te.unsqueeze(1)
    return Dataset(X_tr, y_tr, X_te, y_te, 10)


class MLP(nn.Module):
    """``in → hidden[0] → … → out`` with ReLU (or tanh) between linear layers.

    Layers are ``self.layers[0..]`` (``nn.Linear``); the last one is the head.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64,), out_features: int = 10,
                 activation: str = "relu", bias: bool = True):
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = torch.relu if activation == "relu" else torch.tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class SmallCNN2d(nn.Module):
    """Digits 1×8×8: conv3×3(c1) → ReLU → conv3×3(c2) → ReLU → 2×2 max-pool → linear."""

    def __init__(self, channels: tuple[int, int] = (16, 32), n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.head = nn.Linear(channels[1] * 16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.head(x.flatten(1))


class SmallCNN1d(nn.Module):
    """MNIST-1D 1×40: conv5(c1, stride 2) → ReLU → conv3(c2, stride 2) → ReLU → linear."""

    def __init__(self, channels: tuple[int, int] = (16, 32), n_classes: int = 10, length: int = 40):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels[0], 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(channels[0], channels[1], 3, stride=2, padding=1)
        out_len = (length + 1) // 2
        out_len = (out_len + 1) // 2
        self.head = nn.Linear(channels[1] * out_len, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    logits = model(X)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer],
                     epochs: int = 10, batch_size: int = 64, generator: torch.Generator | None = None,
                     callback: Callable[[int, int], None] | None = None) -> list[float]:
    """Mini-batch cross-entropy training; returns the mean training loss of each epoch.

    Batches are drawn by a seeded permutation from ``generator``. ``callback(epoch, step)`` runs
    after every optimizer step (e.g. to collect momentum matrices).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    history = []
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(X), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            step += 1
            total, count = total + loss.item() * len(idx), count + len(idx)
            if callback is not None:
                callback(epoch, step)
        history.append(total / count)
    return history
