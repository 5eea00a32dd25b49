r"""A seeded bank of initial noises x_T with disjoint *fit* and *evaluation* banks.

Learned samplers (OLSS, Bespoke solvers, ...) fit their coefficients on teacher runs started from some
noises and must be judged on other noises, exactly as a learned model is judged on held-out data. A
:class:`NoiseBank` gives, for one ``seed``:

* ``fit(n)``: the first ``n`` noises of the fit stream (for teacher runs the solver may learn from);
* ``evaluation(n)``: the first ``n`` noises of the evaluation stream (every method, learned or not, is
  run from these same x_T, so differences between methods are paired).

The two streams are independent generators spawned from one :class:`numpy.random.SeedSequence`
(``SeedSequence(seed).spawn(2)``), so

* the banks never share a noise (independent continuous draws; :meth:`NoiseBank.check_disjoint`
  verifies it row by row), and neither bank depends on the size asked of the other;
* a bank is *nested*: ``fit(9)`` is the first 9 rows of ``fit(32)`` (NumPy's ``standard_normal`` fills
  row-major from one stream), so a learner given more teacher runs sees a superset of the noises;
* labels are balanced and deterministic: noise ``i`` of either bank carries label ``i % n_classes``, so
  ``fit(10 * M)`` holds exactly ``M`` noises per class (:meth:`NoiseBank.fit_for_label`).

Noises are drawn in float64 and returned as torch tensors in the requested ``dtype``.
"""

from __future__ import annotations

import numpy as np
import torch

_STREAMS = ("fit", "evaluation")


class NoiseBank:
    """Disjoint, nested, seeded fit / evaluation banks of standard-normal noises in ``R^dim``.

    Args:
        seed: the bank's seed (one bank per seed; different seeds give unrelated banks).
        dim: the data dimension (64 for the digits model).
        n_classes: labels cycle through ``0 .. n_classes - 1`` (``None``: no labels, ``y`` is None).
        dtype: the torch dtype of the returned noises.
    """

    def __init__(self, seed: int, dim: int = 64, n_classes: int | None = 10, dtype: torch.dtype = torch.float32):
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be >= 1 or None, got {n_classes}")
        self.seed, self.dim, self.n_classes, self.dtype = int(seed), int(dim), n_classes, dtype
        self._children = dict(zip(_STREAMS, np.random.SeedSequence(self.seed).spawn(len(_STREAMS)), strict=True))

    def _draw(self, stream: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        rng = np.random.default_rng(self._children[stream])  # a fresh generator: the same rows every call
        x = torch.from_numpy(rng.standard_normal((int(n), self.dim))).to(self.dtype)
        y = None if self.n_classes is None else torch.arange(int(n)) % self.n_classes
        return x, y

    def fit(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``n`` fit noises ``[n, dim]`` and their labels ``i % n_classes`` (or None)."""
        return self._draw("fit", n)

    def evaluation(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``n`` evaluation noises ``[n, dim]`` and their labels ``i % n_classes`` (or None)."""
        return self._draw("evaluation", n)

    def fit_for_label(self, label: int, n_per_class: int) -> torch.Tensor:
        """The ``n_per_class`` fit noises that carry ``label`` (rows label, label + C, ... of ``fit``)."""
        if self.n_classes is None:
            raise ValueError("this bank has no labels (n_classes=None)")
        if not 0 <= label < self.n_classes:
            raise ValueError(f"label must lie in [0, {self.n_classes}), got {label}")
        x, _ = self.fit(n_per_class * self.n_classes)
        return x[label :: self.n_classes]

    def check_disjoint(self, n_fit: int, n_eval: int) -> bool:
        """True when no fit noise equals an evaluation noise (row-wise, exactly)."""
        a, _ = self.fit(n_fit)
        b, _ = self.evaluation(n_eval)
        rows_a = {tuple(r) for r in a.double().numpy()}
        return not any(tuple(r) in rows_a for r in b.double().numpy())
