r"""Training the digits noise-prediction model (the zoo notebook ``train_digits_eps`` calls this).

Objective (Ho et al. 2020, Eq. 14, continuous time; Ho & Salimans 2022, Algorithm 1 for the label
dropout): draw a training digit :math:`(x_0, y)`, a time :math:`t \sim U[t_{min}, 1]`, noise
:math:`\varepsilon \sim N(0, I)`; replace y by the null label with probability 0.1; minimise
:math:`\|\varepsilon - \hat\varepsilon(\alpha_t x_0 + \sigma_t\varepsilon, t, y)\|^2` (mean over pixels).

Optimiser: AdamW, learning rate with a linear warm-up then cosine decay to 0, gradient clipping at 1,
an exponential moving average (EMA) of the weights with decay :math:`\min(0.999, (1+k)/(10+k))` at step k
(the usual EMA warm-up, so short smoke runs have a meaningful EMA too). The EMA weights are the model.

Optional, and without touching the training's random stream (so a run with them gives the same final weights
bit for bit): ``eval_every`` evaluates the EMA's held-out loss every so many steps (on validation noise draws,
``VALIDATION_SEED``, not the ``heldout_loss`` default's), ``keep_best`` returns the EMA weights with the lowest
such loss (early stopping), and ``snapshot_steps`` keeps copies of the EMA weights after those steps.

Everything is drawn from one seeded ``torch.Generator`` (and the initialisation from ``torch.manual_seed``), both
set by :func:`common.harness.seeding.seeded_training`, so with one CPU thread the same seed gives bit-identical weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from common.diffusion.data import NULL_LABEL, load_digits_split
from common.diffusion.model import EpsMLP
from common.diffusion.schedule import BETA_END, BETA_START, VPSchedule
from common.harness.seeding import seeded_training


@dataclass
class TrainConfig:
    width: int = 256
    n_blocks: int = 4
    cond_dim: int = 128
    steps: int = 6000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    data_random_state: int = 0
    eval_every: int = 0  # evaluate the EMA's held-out loss every eval_every steps (0: never)
    keep_best: bool = False  # early stopping: return the EMA with the lowest held-out (validation-draw) loss
    snapshot_steps: tuple = ()  # keep copies of the EMA weights after these steps (1-based step counts)
    beta_schedule: str = "linear"  # the VP schedule (VPSchedule): DDPM "linear" or SD's "scaled_linear"
    beta_start: float = BETA_START
    beta_end: float = BETA_END

    def model_config(self) -> dict:
        return EpsMLP(width=self.width, n_blocks=self.n_blocks, cond_dim=self.cond_dim).config

    def schedule(self) -> VPSchedule:
        return VPSchedule(self.beta_start, self.beta_end, beta_schedule=self.beta_schedule)


@dataclass
class TrainResult:
    ema: EpsMLP
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    config: TrainConfig | None = None
    heldout_curve: dict | None = None  # {"step": [...], "loss": [...]} when eval_every > 0
    best_step: int | None = None  # the step whose EMA weights were returned (keep_best), else None
    snapshots: dict = field(default_factory=dict)  # {step: EMA state_dict} for cfg.snapshot_steps

    def final_loss(self, window: int = 200) -> float:
        """Mean training loss over the last ``window`` steps (the per-step loss is noisy)."""
        tail = self.losses[-window:]
        return float(sum(tail) / len(tail))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def diffusion_loss(net, x0, y, schedule, generator, cfg: TrainConfig) -> torch.Tensor:
    """One Monte-Carlo estimate of the epsilon-prediction loss with label dropout."""
    b = x0.shape[0]
    t = schedule.t_min + (1.0 - schedule.t_min) * torch.rand(b, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(b, generator=generator) < cfg.label_dropout
    y = torch.where(drop, torch.full_like(y, NULL_LABEL), y)
    x_t = schedule.add_noise(x0, t, noise)
    return torch.mean((net(x_t, t, y) - noise) ** 2)


@torch.no_grad()
def ema_update(ema: EpsMLP, net: EpsMLP, step: int, decay: float) -> None:
    d = min(decay, (1.0 + step) / (10.0 + step))
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - d)


def train_ema_loop(net, x_train: torch.Tensor, y_train: torch.Tensor, schedule: VPSchedule,
                   generator: torch.Generator, cfg, loss_fn=None, progress: bool = True, desc: str = "train",
                   after_step=None) -> tuple[torch.nn.Module, list]:
    r"""The optimisation loop of the digits diffusion trainers (this module's 8×8 :class:`EpsMLP` and
    ``common.digits16.train``'s 16×16 UNet); returns (EMA network, per-step losses).

    ``cfg`` supplies ``steps``, ``batch_size``, ``lr``, ``warmup_steps``, ``weight_decay``, ``grad_clip`` and
    ``ema_decay`` (a :class:`TrainConfig` or ``Train16Config``). Step k = 0, 1, ... draws ``batch_size`` indices
    with replacement from ``generator``, sets the learning rate :func:`learning_rate` (linear warm-up, cosine
    decay), evaluates ``loss_fn(net, x_train[idx], y_train[idx], schedule, generator, cfg)`` (default
    :func:`diffusion_loss`, the ε-loss :math:`\|\varepsilon - \hat\varepsilon(\alpha_t x_0 + \sigma_t\varepsilon,
    t, y)\|^2`), takes an AdamW step after clipping the gradient norm at ``grad_clip``, and updates the EMA
    :math:`\theta_{ema} \leftarrow d\,\theta_{ema} + (1-d)\,\theta`, :math:`d = \min(\text{ema\_decay}, (1+k)/(10+k))`
    (:func:`ema_update`). ``after_step(done, ema, losses)`` (``done`` = k + 1) runs after each step; it must not
    draw from ``generator`` or torch's global RNG if the weights are to stay those of a run without it.
    ``desc`` labels the progress bar (shown if ``progress``).
    """
    loss_fn = diffusion_loss if loss_fn is None else loss_fn
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for step in tqdm(range(cfg.steps), disable=not progress, desc=desc, mininterval=20.0):
        idx = torch.randint(0, x_train.shape[0], (cfg.batch_size,), generator=generator)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        loss = loss_fn(net, x_train[idx], y_train[idx], schedule, generator, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, net, step, cfg.ema_decay)
        losses.append(loss.item())
        if after_step is not None:
            after_step(step + 1, ema, losses)
    return ema, losses


def train_digits_eps(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train an EpsMLP on the digits train split (:func:`train_ema_loop`); returns the EMA network and the
    per-step losses (and, by ``cfg``, the held-out curve, the early-stopped weights and snapshots)."""
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    generator = seeded_training(cfg.seed)
    split = load_digits_split(cfg.data_random_state)
    schedule = cfg.schedule()
    net = EpsMLP(width=cfg.width, n_blocks=cfg.n_blocks, cond_dim=cfg.cond_dim)
    if cfg.keep_best and cfg.eval_every < 1:
        raise ValueError("keep_best needs eval_every > 0")
    start = time.perf_counter()
    curve = {"step": [], "loss": []}
    best = [math.inf, None, None]
    snapshots, wanted = {}, {int(s) for s in cfg.snapshot_steps}

    def watch(done: int, ema: EpsMLP, _losses: list) -> None:
        if done in wanted:
            snapshots[done] = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        if cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.steps):
            value = heldout_loss(ema, seed=VALIDATION_SEED, schedule=schedule)
            curve["step"].append(done)
            curve["loss"].append(round(value, 6))
            if cfg.keep_best and value < best[0]:
                best[:] = [value, done, {k: v.detach().clone() for k, v in ema.state_dict().items()}]

    ema, losses = train_ema_loop(net, split.x_train, split.y_train, schedule, generator, cfg, diffusion_loss,
                                 progress=progress, desc=f"train width {cfg.width}", after_step=watch)
    best_step = None
    if cfg.keep_best:
        ema.load_state_dict(best[2])
        best_step = best[1]
    return TrainResult(ema=ema.eval(), losses=losses, seconds=time.perf_counter() - start, config=cfg,
                       heldout_curve=curve if cfg.eval_every > 0 else None, best_step=best_step, snapshots=snapshots)


VALIDATION_SEED = 4321  # noise draws of the held-out loss used to select weights (reports use seed 1234)


@torch.no_grad()
def heldout_loss(net: EpsMLP, n_repeats: int = 8, seed: int = 1234, label_dropout: float = 0.0,
                 schedule: VPSchedule | None = None) -> float:
    """The eps-prediction loss on the held-out split (fixed t and noise draws; conditional by default) under
    ``schedule`` (default: the DDPM linear one; pass the model's own)."""
    split = load_digits_split()
    cfg = TrainConfig(label_dropout=label_dropout)
    generator = torch.Generator().manual_seed(seed)
    x0 = split.x_heldout.repeat(n_repeats, 1).to(net.input.weight.dtype)
    y = split.y_heldout.repeat(n_repeats)
    return float(diffusion_loss(net, x0, y, schedule if schedule is not None else VPSchedule(), generator, cfg))


def loss_curve(losses: list, n_points: int = 200) -> dict:
    """The training loss averaged over consecutive windows (about ``n_points`` of them), for the manifest."""
    every = max(1, len(losses) // n_points)
    means = [sum(losses[i : i + every]) / len(losses[i : i + every]) for i in range(0, len(losses), every)]
    return {"every": every, "mean_loss": [round(m, 6) for m in means]}


def parameterisation(schedule: VPSchedule) -> str:
    """The manifest's one-line description of the prediction target and the schedule."""
    name = {"linear": "DDPM linear", "scaled_linear": "scaled-linear (Stable Diffusion's)"}[schedule.beta_schedule]
    return (f"epsilon; VP {name} beta {schedule.beta_start:g}..{schedule.beta_end:g}, T={schedule.num_train_timesteps}; "
            "continuous t ~ U[1e-3, 1]")


def training_manifest(result: TrainResult, notebook: str = "train_digits_eps.ipynb") -> dict:
    """The zoo manifest fields for a trained model (evaluation is added by the notebook)."""
    cfg = result.config
    return {
        "config": result.ema.config,
        "architecture": "EpsMLP (common/diffusion/model.py): residual MLP, additive time+label conditioning",
        "parameterisation": parameterisation(cfg.schedule()),
        "schedule": cfg.schedule().config(),
        "training": {
            **asdict(cfg),
            "final_loss": result.final_loss(),
            "final_loss_window": 200,
            "loss_curve": loss_curve(result.losses),
            "seconds": round(result.seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "data": "sklearn digits, load_digits_split(random_state=0) train split (1500)",
            "weights": "EMA" if cfg.keep_best is False else f"EMA at the step with the lowest held-out loss ({result.best_step})",
            **({"heldout_curve": {**result.heldout_curve, "noise_seed": VALIDATION_SEED, "conditional": True}}
               if result.heldout_curve else {}),
            **({"best_step": result.best_step} if result.best_step is not None else {}),
        },
        "n_parameters": result.ema.n_parameters(),
        "notebook": notebook,
    }
