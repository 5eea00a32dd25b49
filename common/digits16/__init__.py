r"""16×16 digits for the papers that need spatial structure: data, a class-conditional UNet, its checkpoint.

* :mod:`common.digits16.data`: the repository's digits split (``common.diffusion.load_digits_split``, 1500
  train / 297 held-out) upsampled bilinearly 8×8 → 16×16, :math:`x_{16} = U x_8`, flattened to 256-dim
  vectors in [-1, 1] (background -1), ``to_images16`` for plotting, ``to_digits8`` (the least-squares
  preimage :math:`U^+ x_{16}`, exact on real digits) to reuse the 8×8 digits classifier for FD/KID/accuracy.
* :mod:`common.digits16.model`: ``EpsUNet16``, a ``diffusers.UNet2DModel`` built from an explicit config
  (block_out_channels (32, 64, 64), one ResNet layer per block, 11 class embeddings: 0..9 and the null label
  10), behind the model protocol ``eps(x, t, y)`` of ``common.diffusion.views`` with the same VP schedule and
  continuous time t in [1e-3, 1] as ``digits_eps_ci``; ``load_digits16_eps(dtype)`` returns a ``Denoiser``.
* :mod:`common.digits16.train`: the seeded training loop (the 8×8 model's loss, optimiser, label dropout 0.1
  and EMA), ``heldout_loss16`` and the manifest.

The zoo notebook ``common/zoo/notebooks/train_digits16_eps.ipynb`` (``make zoo MODEL=train_digits16_eps``)
trains the model and writes the checkpoint ``digits16_eps`` to ``common/zoo/checkpoints/``.

**No checkpoint is committed yet.** The first run (2026-12-04, one shared CPU thread; executed notebook and
sample figure in ``results/zoo/digits16_attempt/``) was not fit for use:

* 1,063,905 parameters (4.3 MB float32); seed 0, 1200 steps, batch 64, AdamW lr 1e-3 (100 warm-up steps, cosine),
  EMA 0.995: 1101 s wall clock (627 s CPU); final training loss 0.0235; held-out eps loss 0.0239 conditional,
  0.0275 unconditional (per pixel; not comparable with the 8×8 model's 0.088: 192 of the 256 directions carry
  no data, only noise).
* Samples (DPM-Solver++(2M), 25 steps, n = 500 per mode), 8×8 classifier on ``to_digits8``: FD32 to train 8.8
  conditional, 38.7 unconditional, 106 guided (w = 3) (noise floor 4.67 at n = 297); label accuracy 0.896
  conditional, 0.988 guided.
* **About a quarter of the samples keep visible noise** (25/100 with DPM-Solver++(2M), 29/100 with DDIM have over
  5 % of their energy outside the data's 64-dim subspace, :func:`off_subspace_fraction`; 0 for real digits).
  Diagnosis: off the subspace the network should output exactly :math:`\hat\varepsilon = x/\sigma_t`; its gain
  there tracks the typical noise norm instead (correlation with the input's off-subspace norm -0.92; gain 0.93
  for the larger-norm half at t = 0.4), so an x_T with a larger-than-typical off-subspace part keeps and
  amplifies it along the ODE.
* Next (not tried): many more steps and a larger batch (a GPU run), and/or full-rank 16×16 data (a small dither,
  or a non-linear upsampler), and a gate in the notebook that refuses to save a model whose samples' off-subspace
  fraction exceeds real data's by more than a set margin.

The 8×8 ``digits_eps_ci`` stays the ci model.
"""

from common.digits16.data import (
    DIM16,
    SIDE16,
    Digits16Split,
    load_digits16_split,
    off_subspace_fraction,
    to_digits8,
    to_images16,
    upsample8to16,
    upsampling_matrix,
)
from common.digits16.model import (
    CHECKPOINT,
    DEFAULT_CONFIG,
    EpsUNet16,
    load_digits16_eps,
    unet_config,
)
from common.digits16.train import (
    Train16Config,
    Train16Result,
    heldout_loss16,
    train_digits16_eps,
    training_manifest,
)

__all__ = [
    "CHECKPOINT",
    "DEFAULT_CONFIG",
    "DIM16",
    "SIDE16",
    "Digits16Split",
    "EpsUNet16",
    "Train16Config",
    "Train16Result",
    "heldout_loss16",
    "load_digits16_eps",
    "load_digits16_split",
    "off_subspace_fraction",
    "to_digits8",
    "to_images16",
    "train_digits16_eps",
    "training_manifest",
    "unet_config",
    "upsample8to16",
    "upsampling_matrix",
]
