"""scikit-learn's digits as a diffusion dataset: 1797 grey 8x8 images in [-1, 1], a fixed split.

Pixel values 0..16 are mapped to x = v / 8 - 1, so the data lie in [-1, 1] like image diffusion data.
The split (1500 train / 297 held-out) is stratified by class and fixed by ``random_state=0``: every
model, twin and metric in the repository uses the same train set, and the held-out set gives the
noise floor of the sample-quality metrics (held-out vs. train).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

N_TRAIN = 1500
N_CLASSES = 10
NULL_LABEL = 10  # the "no class" token of classifier-free guidance
IMAGE_SIDE = 8
DIM = IMAGE_SIDE * IMAGE_SIDE


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor  # [1500, 64] float32 in [-1, 1]
    y_train: torch.Tensor  # [1500] int64 labels 0..9
    x_heldout: torch.Tensor  # [297, 64]
    y_heldout: torch.Tensor  # [297]


def load_digits_split(random_state: int = 0) -> DigitsSplit:
    """The fixed stratified split of sklearn's digits (no download: the data ship with scikit-learn)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32) / 8.0 - 1.0
    y = digits.target.astype(np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(x, y, train_size=N_TRAIN, stratify=y, random_state=random_state)
    return DigitsSplit(
        x_train=torch.from_numpy(x_tr),
        y_train=torch.from_numpy(y_tr),
        x_heldout=torch.from_numpy(x_ho),
        y_heldout=torch.from_numpy(y_ho),
    )


def to_images(x: torch.Tensor) -> np.ndarray:
    """[N, 64] in [-1, 1] -> [N, 8, 8] in [0, 1] for plotting."""
    x = torch.as_tensor(x).detach().cpu().double().reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return ((x.clamp(-1, 1) + 1) / 2).numpy()
