"""Per-sample network-call counting: :class:`CallCounter`, a model wrapper for samplers that skip calls row by row.

Moved from ``papers/adaptive_diffusion/skipping.py`` (AdaptiveDiffusion's skip decisions are per sample, so its
NFE is per sample too; any sampler that evaluates a subset of the batch can be audited the same way).
"""

from __future__ import annotations

import torch


class CallCounter:
    """Counts the network calls of every sample, whatever the sampler does with the batch.

    Pass ``ids = torch.arange(B)`` as the samplers' ``y``: every sampler here (and in ``common.diffusion``)
    hands the model exactly the rows it evaluates, ``y[rows]`` with them, so :meth:`eps` sees which samples
    it is evaluated on; it adds one to each of those samples' counts, then calls the wrapped model with the
    true labels ``labels[ids]``. The outputs are unchanged; :meth:`take` returns and resets the per-sample
    counts ([B] int64). ``nfe`` counts batched calls, as :class:`common.diffusion.Denoiser`.
    """

    def __init__(self, model, labels: torch.Tensor | None, batch: int):
        self.model, self.labels, self.schedule = model, labels, model.schedule
        self.counts = torch.zeros(batch, dtype=torch.long)
        self.nfe = 0

    def eps(self, x: torch.Tensor, t, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.shape != (x.shape[0],):
            raise ValueError(f"need one id per row, got {tuple(ids.shape)} for {x.shape[0]} rows")
        self.counts += torch.bincount(ids, minlength=len(self.counts))
        self.nfe += 1
        return self.model.eps(x, t, None if self.labels is None else self.labels[ids])

    def take(self) -> torch.Tensor:
        out, self.counts = self.counts, torch.zeros_like(self.counts)
        return out
