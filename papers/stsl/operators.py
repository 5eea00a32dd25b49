r"""Linear measurement operators on side×side images (8×8 at ci, 16×16 in full), as explicit matrices (so the
adjoint is exact).

An image is a flat vector :math:`x \in \mathbb R^{n}`, n = side² (row-major; 64 at side 8). Each operator is a matrix
:math:`A \in \mathbb R^{m\times n}`: ``forward(x) = x A^T`` (batched rows), ``adjoint(y) = y A``, and
``pinv(y) = y (A^+)^T`` (Moore-Penrose; the "plain measurement" baseline :math:`A^+ y`: zero-filling for
inpainting, nearest-neighbour upsampling for average-pool super-resolution). Measurements are
:math:`y = A x + \sigma_y n`, :math:`n \sim \mathcal N(0, I)`.

* ``inpaint``: centre-box inpainting, the centre ``box × box`` pixels are removed, box = side/2 (the box scales
  with the image: 4×4 at side 8, 8×8 at side 16; m = n − box²);
* ``sr``: ×2 average pooling, side → side/2 (m = n/4; 16 at side 8, 64 at side 16);
* ``blur``: Gaussian blur σ = 1 pixel (5×5 kernel, normalised, zero padding; m = n), the same kernel at every side.
* ``blur_adj`` (a variant, not in ``TASKS``): the same blur with the official PSLD code's back-projection
  :math:`A^\top y` in place of :math:`A^+ y` (``pinv`` returns the adjoint): the samplers' measurement start
  E(Aᵀy), PSLD's gluing target Aᵀy + (I − AᵀA) D(ẑ0) and the "plain measurement" baseline use Aᵀ. For the blur,
  cond(A) = 1626 at side 16, and A⁺y amplifies the noise; Aᵀ = A (a symmetric kernel) does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SIDE = 8
DIM = SIDE * SIDE
TASKS = ("inpaint", "sr", "blur")
VARIANTS = ("blur_adj",)  # operators whose back-projection is Aᵀ instead of A⁺ (see AdjointBackprojection)


@dataclass(frozen=True)
class LinearOperator:
    """A measurement matrix with its adjoint and pseudo-inverse (float64 master copies)."""

    name: str
    matrix: torch.Tensor  # [m, n]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x for rows x [B, n] -> [B, m]."""
        return x @ self.matrix.to(x.dtype).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y for rows y [B, m] -> [B, n]."""
        return y @ self.matrix.to(y.dtype)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y (Moore-Penrose pseudo-inverse) for rows y [B, m] -> [B, n]."""
        return y @ torch.linalg.pinv(self.matrix).to(y.dtype).T

    def measure(self, x: torch.Tensor, sigma_y: float, generator: torch.Generator) -> torch.Tensor:
        """y = A x + sigma_y n, n ~ N(0, I) drawn from ``generator``."""
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        y = self.forward(x)
        return y + sigma_y * torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.dtype)


@dataclass(frozen=True)
class AdjointBackprojection(LinearOperator):
    """A ``LinearOperator`` whose ``pinv`` is the adjoint: y -> Aᵀ y (PSLD's official code back-projects with Aᵀ;
    not a pseudo-inverse unless A has orthonormal rows, as inpainting masks do)."""

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y (the back-projection this operator uses in place of A⁺ y) for rows y [B, m] -> [B, n]."""
        return self.adjoint(y)


def inpaint_matrix(box: int = 4, side: int = SIDE) -> torch.Tensor:
    """Rows of the identity for the pixels outside the centre box (the box is removed)."""
    if not 0 < box < side or (side - box) % 2:
        raise ValueError(f"box must be in (0, {side}) with side - box even, got {box}")
    lo = (side - box) // 2
    keep = [
        r * side + c
        for r in range(side)
        for c in range(side)
        if not (lo <= r < lo + box and lo <= c < lo + box)
    ]
    return torch.eye(side * side, dtype=torch.float64)[keep]


def avgpool_matrix(factor: int = 2, side: int = SIDE) -> torch.Tensor:
    """Average pooling by ``factor`` (each output pixel the mean of a factor×factor block)."""
    if side % factor:
        raise ValueError(f"factor {factor} does not divide side {side}")
    out = side // factor
    a = torch.zeros(out * out, side * side, dtype=torch.float64)
    for r in range(side):
        for c in range(side):
            a[(r // factor) * out + c // factor, r * side + c] = 1.0 / factor**2
    return a


def blur_matrix(sigma: float = 1.0, radius: int = 2, side: int = SIDE) -> torch.Tensor:
    """Gaussian blur: a (2 radius + 1)² kernel exp(-d²/2σ²), normalised to sum 1, zero padding."""
    if sigma <= 0 or radius < 0:
        raise ValueError(f"need sigma > 0 and radius >= 0, got {sigma}, {radius}")
    offs = range(-radius, radius + 1)
    k = {(i, j): math.exp(-(i * i + j * j) / (2 * sigma**2)) for i in offs for j in offs}
    total = sum(k.values())
    a = torch.zeros(side * side, side * side, dtype=torch.float64)
    for r in range(side):
        for c in range(side):
            for (i, j), w in k.items():
                rr, cc = r + i, c + j
                if 0 <= rr < side and 0 <= cc < side:
                    a[r * side + c, rr * side + cc] = w / total
    return a


def make_operator(task: str, side: int = SIDE) -> LinearOperator:
    """The operator of a task on side×side images: ``"inpaint"`` (centre box of side/2: 4×4 at side 8, 8×8 at 16),
    ``"sr"`` (×2 avg-pool), ``"blur"`` (σ = 1 pixel, 5×5) or ``"blur_adj"`` (the same blur, back-projection Aᵀ)."""
    if side < 4 or side % 4:
        raise ValueError(f"side must be a positive multiple of 4, got {side}")
    if task == "inpaint":
        return LinearOperator(task, inpaint_matrix(box=side // 2, side=side))
    if task == "sr":
        return LinearOperator(task, avgpool_matrix(factor=2, side=side))
    if task == "blur":
        return LinearOperator(task, blur_matrix(side=side))
    if task == "blur_adj":
        return AdjointBackprojection(task, blur_matrix(side=side))
    raise ValueError(f"task must be one of {TASKS + VARIANTS}, got {task!r}")
