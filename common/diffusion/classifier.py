r"""A small CNN on sklearn's 8x8 digits whose 32-unit bottleneck is the feature space of FD and KID.

Sample-quality metrics for image generators (FID, KID) compare two sets of images in the penultimate
features of a classifier trained on real images (Heusel et al. 2017 use Inception-v3's 2048-D pool
features). Here the images are 8x8 digits in [-1, 1], so the classifier is small and trained in the repo:

* conv 3x3, 1 -> 32 channels, SiLU; conv 3x3, 32 -> 64, SiLU; 2x2 max-pool (8x8 -> 4x4);
* fully connected 1024 -> 32, SiLU: the **32-D bottleneck** (:meth:`DigitsCNN.features`);
* fully connected 32 -> 10 (logits).

SiLU rather than ReLU keeps every bottleneck unit alive, so the feature covariance used by the Fréchet
distance is not rank-deficient. Training: cross-entropy on the 1500-digit train split with random
+-1-pixel shifts (pad with the background value -1, crop back to 8x8), AdamW, a fixed seed, one thread;
the held-out split (297 digits) measures accuracy. The zoo notebook ``train_digits_classifier`` trains it
and writes the checkpoint ``digits_classifier``; :func:`load_digits_classifier` loads it (sha256-verified).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from common.diffusion.data import IMAGE_SIDE, N_CLASSES, load_digits_split
from common.harness.seeding import seeded_training

CHECKPOINT = "digits_classifier"
BACKGROUND = -1.0  # pixel value of an empty pixel in [-1, 1] scaling


class DigitsCNN(nn.Module):
    """conv32 - conv64 - maxpool - fc32 (features) - fc10 on [N, 64] inputs in [-1, 1]."""

    def __init__(self, channels: tuple[int, int] = (32, 64), feature_dim: int = 32, n_classes: int = N_CLASSES):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * (IMAGE_SIDE // 2) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)
        self.config = {"channels": list(channels), "feature_dim": feature_dim, "n_classes": n_classes}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 32-D penultimate (bottleneck) activations of flattened digits x [N, 64]."""
        if x.ndim != 2 or x.shape[1] != IMAGE_SIDE * IMAGE_SIDE:
            raise ValueError(f"expected x of shape [N, 64], got {tuple(x.shape)}")
        h = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE).to(self.fc.weight.dtype)
        h = F.silu(self.conv1(h))
        h = F.max_pool2d(F.silu(self.conv2(h)), 2)
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, 10]."""
        return self.head(self.features(x))


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each 8x8 digit by a random (dy, dx) in [-max_shift, max_shift]^2, filling with background."""
    n = x.shape[0]
    img = x.reshape(n, IMAGE_SIDE, IMAGE_SIDE)
    padded = F.pad(img, (max_shift,) * 4, value=BACKGROUND)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = offsets[:, :1] + torch.arange(IMAGE_SIDE)  # [n, 8]
    cols = offsets[:, 1:] + torch.arange(IMAGE_SIDE)
    out = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.reshape(n, -1)


@dataclass
class ClassifierConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1
    seed: int = 0
    channels: tuple[int, int] = (32, 64)
    feature_dim: int = 32


@dataclass
class ClassifierResult:
    net: DigitsCNN
    config: ClassifierConfig
    losses: list = field(default_factory=list)  # mean train loss per epoch
    heldout_accuracy: float = float("nan")
    train_accuracy: float = float("nan")
    seconds: float = 0.0


@torch.no_grad()
def accuracy(net: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == y).double().mean())


def train_classifier(cfg: ClassifierConfig, progress: bool = True) -> ClassifierResult:
    """Train :class:`DigitsCNN` on the train split (shift augmentation, AdamW, cosine lr), seeded."""
    from tqdm.auto import tqdm

    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    split = load_digits_split()
    gen = seeded_training(cfg.seed)
    net = DigitsCNN(cfg.channels, cfg.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = split.x_train.shape[0]
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)
    result = ClassifierResult(net=net, config=cfg)
    start = time.perf_counter()
    for _ in tqdm(range(cfg.epochs), desc="classifier epochs", disable=not progress):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = random_shift(split.x_train[idx], gen, cfg.max_shift) if cfg.max_shift else split.x_train[idx]
            loss = F.cross_entropy(net(xb), split.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        result.losses.append(total / n)
    result.seconds = time.perf_counter() - start
    result.heldout_accuracy = accuracy(net, split.x_heldout, split.y_heldout)
    result.train_accuracy = accuracy(net, split.x_train, split.y_train)
    net.eval()
    return result


def training_record(result: ClassifierResult) -> dict:
    """The ``training`` part of the zoo manifest."""
    cfg = asdict(result.config)
    cfg["channels"] = list(cfg["channels"])
    return {
        **cfg,
        "optimizer": "AdamW, cosine lr to 0",
        "augmentation": f"random shift by up to +-{result.config.max_shift} pixel (background fill -1)",
        "data": "sklearn digits, load_digits_split(random_state=0) train split (1500)",
        "epoch_losses": [round(v, 6) for v in result.losses],
        "final_loss": result.losses[-1],
        "seconds": round(result.seconds, 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def load_digits_classifier(name: str = CHECKPOINT, directory=None) -> DigitsCNN:
    """The zoo's digits classifier in eval mode, frozen (sha256 verified by the zoo)."""
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    cfg = manifest["config"]
    net = DigitsCNN(tuple(cfg["channels"]), cfg["feature_dim"], cfg["n_classes"])
    net.load_state_dict(tensors)
    net.eval()
    net.requires_grad_(False)
    net.manifest = manifest
    return net
