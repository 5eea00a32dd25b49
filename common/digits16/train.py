r"""Training the 16×16 digits UNet (the zoo notebook ``common/zoo/notebooks/train_digits16_eps.ipynb`` calls this).

The recipe of the 8×8 model (``common.diffusion.train``), on the 16×16 split and with a UNet:

* draws (Ho et al. 2020, Eq. 14, continuous time; Ho & Salimans 2022, Algorithm 1): a training
  digit :math:`(x_0, y)`, :math:`t \sim U[t_{min}, 1]`, :math:`\varepsilon \sim N(0, I_{256})`; y replaced by
  the null label with probability ``label_dropout`` = 0.1; :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`.
  The draws are made in the order of ``common.diffusion.train.diffusion_loss`` (t, noise, dropout).
* objective, by ``prediction`` (:func:`diffusion_loss16`):

  - ``"epsilon"``: :math:`\|\varepsilon - \hat\varepsilon(x_t, t, y)\|^2` (mean over pixels): exactly
    ``common.diffusion.train.diffusion_loss`` (attempt 1);
  - ``"x0"``: the min-SNR-:math:`\gamma` weighted data loss (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy", its weight for x0-prediction), with :math:`\mathrm{SNR}_t = \alpha_t^2/\sigma_t^2`,

    .. math:: L = \min(\mathrm{SNR}_t, \gamma)\,\|x_0 - \hat x_0(x_t, t, y)\|^2
              = \frac{\min(\mathrm{SNR}_t, \gamma)}{\mathrm{SNR}_t}\,\|\varepsilon - \hat\varepsilon\|^2,

    ``min_snr_gamma`` :math:`\gamma = 5`. Where :math:`\mathrm{SNR}_t \le \gamma` (t ≳ 0.13) this *is* the eps-loss;
    at small t the eps-loss would weight the x0 error by SNR (up to ~1e4 at t_min) and let a few
    low-noise draws dominate every gradient; the truncation caps that weight at :math:`\gamma`.
* AdamW, linear warm-up then cosine decay to 0 (``common.diffusion.train.learning_rate``), gradient
  clipping at 1, and an EMA of the weights with decay :math:`\min(d, (1+k)/(10+k))` at step k, d = ``ema_decay``
  = 0.995 (0.999 for the 8×8 model: this run is 10× shorter, so the EMA window is shorter too)
  (``common.diffusion.train.ema_update``). The EMA weights are the model. The loop itself is the 8×8 model's,
  ``common.diffusion.train.train_ema_loop``, with :func:`diffusion_loss16` as its loss.

Every draw comes from one ``torch.Generator`` and the initialisation from ``torch.manual_seed``, both set by
:func:`common.harness.seeding.seeded_training`, so with one CPU thread a seed gives bit-identical weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from common.diffusion.data import NULL_LABEL
from common.diffusion.schedule import VPSchedule
from common.diffusion.train import TrainResult, diffusion_loss, loss_curve, train_ema_loop
from common.digits16.data import load_digits16_split
from common.digits16.model import DEFAULT_PREDICTION, PREDICTIONS, EpsUNet16, unet_config
from common.harness.seeding import seeded_training


@dataclass
class Train16Config:
    block_out_channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995  # EMA window ~200 steps: short runs (0.999 would average in weights from step ~200 of 1200)
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    data_random_state: int = 0
    prediction: str = DEFAULT_PREDICTION  # "epsilon" or "x0" (common.digits16.model)
    min_snr_gamma: float = 5.0  # the x0 loss weight min(SNR_t, gamma) (module docstring); unused for "epsilon"

    def model_config(self) -> dict:
        return unet_config(block_out_channels=list(self.block_out_channels), layers_per_block=self.layers_per_block)


@dataclass
class Train16Result:
    ema: EpsUNet16
    losses: list = field(default_factory=list)
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process (the budget on a shared machine: wall clock counts waiting)
    config: Train16Config | None = None

    final_loss = TrainResult.final_loss  # mean training loss over the last ``window`` (200) steps, as the 8×8 result


def diffusion_loss16(net: EpsUNet16, x0: torch.Tensor, y: torch.Tensor, schedule: VPSchedule,
                     generator: torch.Generator, cfg: Train16Config) -> torch.Tensor:
    """One Monte-Carlo estimate of the training loss of ``net.prediction`` (module docstring), label dropout.

    "epsilon": ``common.diffusion.train.diffusion_loss`` itself. "x0": the same draws in the same order, then
    mean over batch and pixels of min(SNR_t, gamma) (x0 - x0_hat)^2.
    """
    if cfg.prediction != net.prediction:
        raise ValueError(f"the config trains prediction={cfg.prediction!r}, the network is {net.prediction!r}")
    if net.prediction == "epsilon":
        return diffusion_loss(net, x0, y, schedule, generator, cfg)
    if not cfg.min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive, got {cfg.min_snr_gamma}")
    b = x0.shape[0]
    t = schedule.t_min + (1.0 - schedule.t_min) * torch.rand(b, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(b, generator=generator) < cfg.label_dropout
    y = torch.where(drop, torch.full_like(y, NULL_LABEL), y)
    x_t = schedule.add_noise(x0, t, noise)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    weight = torch.clamp(snr, max=cfg.min_snr_gamma).to(x0.dtype)[:, None]
    return torch.mean(weight * (net.raw(x_t, t, y) - x0) ** 2)


def train_digits16_eps(cfg: Train16Config, progress: bool = True, log_every: int = 0) -> Train16Result:
    """Train an :class:`EpsUNet16` on the 16×16 train split; returns the EMA network and per-step losses.

    ``log_every`` > 0 prints a progress line (step, mean loss, s/step) every that many steps (for long runs
    whose tqdm bar is hidden in a notebook).
    """
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {cfg.prediction!r}")
    generator = seeded_training(cfg.seed)
    split = load_digits16_split(cfg.data_random_state)
    schedule = VPSchedule()
    net = EpsUNet16(cfg.model_config(), prediction=cfg.prediction)
    start, cpu_start = time.perf_counter(), time.process_time()

    def log(done: int, _ema: EpsUNet16, losses: list) -> None:
        if log_every > 0 and done % log_every == 0:
            window = losses[-log_every:]
            print(f"step {done}/{cfg.steps}: loss {sum(window) / len(window):.5f}, "
                  f"{(time.perf_counter() - start) / done:.3f} s/step", flush=True)

    ema, losses = train_ema_loop(net, split.x_train, split.y_train, schedule, generator, cfg, diffusion_loss16,
                                 progress=progress, desc="train digits16", after_step=log)
    return Train16Result(ema=ema.eval(), losses=losses, seconds=time.perf_counter() - start,
                         cpu_seconds=time.process_time() - cpu_start, config=cfg)


@torch.no_grad()
def heldout_loss16(net: EpsUNet16, n_repeats: int = 4, seed: int = 1234, label_dropout: float = 0.0) -> float:
    r"""The eps-prediction loss :math:`\|\varepsilon - \hat\varepsilon\|^2` (unweighted, whatever ``net.prediction``:
    comparable across parameterisations) on the 297 held-out digits (fixed t and noise draws; 0.0 conditional,
    1.0 unconditional), evaluated in batches of 297."""
    split = load_digits16_split()
    cfg = Train16Config(label_dropout=label_dropout)
    generator = torch.Generator().manual_seed(seed)
    x0 = split.x_heldout.to(net.dtype)
    losses = [float(diffusion_loss(net, x0, split.y_heldout, VPSchedule(), generator, cfg)) for _ in range(n_repeats)]
    return sum(losses) / len(losses)


def training_manifest(result: Train16Result, notebook: str = "train_digits16_eps.ipynb") -> dict:
    """The zoo manifest fields for a trained model (the notebook adds ``evaluation``)."""
    cfg = result.config
    loss = ("eps-loss ||eps - eps_hat||^2" if cfg.prediction == "epsilon" else
            f"min-SNR-gamma x0 loss min(SNR_t, {cfg.min_snr_gamma:g}) ||x0 - x0_hat||^2")
    return {
        "config": result.ema.config,
        "prediction": result.ema.prediction,
        "architecture": "EpsUNet16 (common/digits16/model.py): diffusers.UNet2DModel from a config, class embedding (11 labels)",
        "parameterisation": (f"{cfg.prediction} (eps(x, t, y) = (x - alpha_t x0_hat) / sigma_t for x0); {loss}; VP DDPM "
                             "linear beta 1e-4..0.02, T=1000; continuous t ~ U[1e-3, 1]; UNet timestep input 1000 t"),
        "training": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "final_loss": result.final_loss(),
            "final_loss_window": min(200, len(result.losses)),
            "loss_curve": loss_curve(result.losses),
            "seconds": round(result.seconds, 1),
            "seconds_per_step": round(result.seconds / max(1, len(result.losses)), 4),
            "cpu_seconds": round(result.cpu_seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "data": "sklearn digits, load_digits_split(random_state=0) train split (1500), bilinear 8x8 -> 16x16",
            "weights": "EMA",
        },
        "n_parameters": result.ema.n_parameters(),
        "notebook": notebook,
    }
