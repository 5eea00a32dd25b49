r"""Consistency distillation of a discrete-time ε-prediction diffusion model (LCM-style), and its sampler.

Latent Consistency Models (Luo et al. 2023, "LCM", arXiv 2310.04378) distil a pretrained ε-prediction
teacher into a few-step *consistency function* :math:`f_\theta(z_t, t) \approx x_0` that is constant along
the teacher's PF-ODE trajectories. The building blocks here are shared by LCM-like papers (LCM, SLAM/SPLAM,
consistency trajectory variants):

* **Boundary-condition parameterisation** (LCM Eq. 9, Song et al. 2023 Eq. 7):
  :math:`f_\theta(z, t) = c_{skip}(t)\,z + c_{out}(t)\,\hat x_0(z, t)` with
  :math:`\hat x_0 = (z - \sigma_t\hat\varepsilon_\theta)/\alpha_t` and, on discrete timesteps
  :math:`t \in \{0..999\}` with ``timestep_scaling`` s = 10 and :math:`\sigma_{data} = 0.5`,
  :math:`c_{skip}(t) = \sigma_{data}^2 / ((st)^2 + \sigma_{data}^2)`,
  :math:`c_{out}(t) = st / \sqrt{(st)^2 + \sigma_{data}^2}` (diffusers' ``LCMScheduler``); so
  :math:`f_\theta(z, 0) = z` exactly.
* **Skipping-step teacher solver** (LCM Sec. 4.3): the teacher moves :math:`z_{t_{n+k}}` to
  :math:`\hat z_{t_n}` with one DDIM step (Song et al. 2021, Eq. 12 with η = 0) over k = T / N training
  steps (N = 50 "original" steps, k = 20); :math:`t_{n+k} \in \{19, 39, \dots, 999\}` and
  :math:`t_n = \max(t_{n+k} - k, 0)`.
* **Consistency-distillation loss** (LCM Eq. 10 / Alg. 1) with the pseudo-Huber distance
  :math:`d(a, b) = \sqrt{(a - b)^2 + c^2} - c` (Song & Dhariwal 2023; c = 0.001 as in the LCM scripts),
  averaged over elements, against the *EMA target network* :math:`f_{\theta^-}(\hat z_{t_n}, t_n)`
  (:math:`\theta^- \leftarrow \mu\theta^- + (1 - \mu)\theta`, μ = 0.95).
* **Predicted origin.** For an ε-prediction network :math:`\hat x_0 = (z - \sigma_{in}\hat\varepsilon)/\alpha_t`,
  with :math:`\sigma_{in}` the noise level of the input (LCM's ``predicted_origin``; SLAM's
  ``predicted_origin_splam`` passes its sub-path level :math:`\sigma_\gamma`). For an x0-prediction network
  (``student.prediction == "x0"``, the 16×16 digits UNet) the predicted origin is the network's output, as in
  LCM's training script for ``prediction_type == "sample"``; :math:`\sigma_{in}` is then not used (the official
  SPLAM script supports ε-prediction only: this branch is our extension).
* **Conditioning-scalar embedding**: LCM feeds the guidance scale through a sinusoidal embedding
  (``guidance_scale_embedding``, scale 1000) projected by a bias-free linear layer and added to the timestep
  embedding (diffusers' ``TimestepEmbedding.cond_proj``); SLAM feeds its sub-path position γ through the same
  slot. We zero-initialise that layer so that the student starts as the teacher exactly; diffusers and the
  official SPLAM script keep its default random initialisation (``papers/slam/README.md``, audit of
  2026-12-05: the random initialisation does not change SLAM's collapse there). :class:`CondEpsMLP` adds that slot to
  :class:`~common.diffusion.model.EpsMLP` and :class:`CondUNetStudent` to the 16×16 digits UNet
  (:class:`~common.digits16.model.EpsUNet16`, through its ``TimestepEmbedding`` input as diffusers'
  ``cond_proj`` does); at initialisation either is the teacher exactly.
* **Multistep consistency sampler** (LCM Alg. 3): evaluate :math:`f_\theta` at the first inference
  timestep, re-noise the estimate to the next one with fresh noise, repeat; the inference timesteps
  are diffusers' ``LCMScheduler`` choice among the 50 original steps (1 step: [999]; 2: [999, 499];
  4: [999, 759, 499, 259]).

The training loop :func:`consistency_distill` takes an optional ``student_input`` hook that maps the pair
(:math:`z_{t_{n+k}}`, :math:`\hat z_{t_n}`) to what the student sees (its input, the noise level of that
input and the conditioning scalar); the default is LCM's (:math:`z_{t_{n+k}}`, :math:`\sigma_{t_{n+k}}`, 1).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from common.diffusion.model import EpsMLP, timestep_embedding
from common.diffusion.views import batch_times

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
HOOK_SEED_OFFSET = 7919


# --- schedule pieces on discrete timesteps ------------------------------------------------------------
def skipping_timesteps(n_original: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
    r"""The teacher-solver grid :math:`t_{n+k} = j k - 1`, j = 1..N, k = T // N (increasing, int64)."""
    if n_original < 1 or num_train_timesteps % n_original:
        raise ValueError(f"n_original must divide num_train_timesteps, got {n_original}, {num_train_timesteps}")
    k = num_train_timesteps // n_original
    return np.arange(1, n_original + 1, dtype=np.int64) * k - 1


def lcm_inference_timesteps(n_steps: int, n_original: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
    """diffusers' ``LCMScheduler.set_timesteps`` choice: ``n_steps`` of the original grid, decreasing."""
    origin = skipping_timesteps(n_original, num_train_timesteps)
    if not 1 <= n_steps <= len(origin):
        raise ValueError(f"n_steps must be in [1, {len(origin)}], got {n_steps}")
    idx = np.floor(np.linspace(0, len(origin), num=n_steps, endpoint=False)).astype(np.int64)
    return origin[::-1][idx].copy()


def alpha_sigma_discrete(schedule, steps) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(\alpha_n, \sigma_n) = (\sqrt{\bar\alpha_n}, \sqrt{1 - \bar\alpha_n})` at integer steps (float64)."""
    steps = torch.as_tensor(steps, dtype=torch.long)
    if (steps < 0).any() or (steps >= schedule.num_train_timesteps).any():
        raise ValueError("steps must lie in [0, num_train_timesteps)")
    abar = schedule.alphas_cumprod[steps]
    return abar.sqrt(), (1.0 - abar).sqrt()


def boundary_scalings(steps, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING):
    r"""LCM's :math:`(c_{skip}(t), c_{out}(t))` on discrete timesteps (float64; c_skip(0) = 1, c_out(0) = 0)."""
    t = torch.as_tensor(steps, dtype=torch.float64) * timestep_scaling
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / torch.sqrt(t**2 + sigma_data**2)
    return c_skip, c_out


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float = 1e-3) -> torch.Tensor:
    r"""Mean of :math:`\sqrt{(a - b)^2 + c^2} - c` over all elements (c > 0)."""
    if c <= 0:
        raise ValueError(f"huber c must be positive, got {c}")
    return (torch.sqrt((pred.float() - target.float()) ** 2 + c**2) - c).mean()


def scalar_embedding(value: torch.Tensor, dim: int = 64, scale: float = 1000.0) -> torch.Tensor:
    """LCM's ``guidance_scale_embedding``: the sinusoidal embedding of ``scale * value`` (float64 [B, dim])."""
    return timestep_embedding(torch.as_tensor(value, dtype=torch.float64).reshape(-1), dim=dim, scale=scale)


# --- the student --------------------------------------------------------------------------------------
#: What the conditioning slot embeds: the scalar itself, or the official SPLAM script's 10 - 10γ (so the γ = 1
#: used for targets and sampling embeds as 0, the "guidance scale" LCMScheduler passes for guidance_scale = 1).
COND_MAPS = {"identity": lambda c: c, "splam": lambda c: 10.0 - 10.0 * c}


class CondEpsMLP(nn.Module):
    """An :class:`EpsMLP` with LCM's extra conditioning slot (a zero-initialised ``cond_proj``).

    ``eps(x, t, y, cond)`` adds ``cond_proj(scalar_embedding(cond))`` to the sinusoidal timestep embedding
    before the time MLP (as diffusers' ``TimestepEmbedding(cond_proj_dim=...)`` does), so a fresh
    ``CondEpsMLP.from_teacher(net)`` answers exactly like ``net`` for every ``cond``.
    """

    def __init__(self, net: EpsMLP, cond_embed_dim: int = 64, cond_map: str = "identity", zero_init: bool = True):
        super().__init__()
        if cond_embed_dim % 2:
            raise ValueError("cond_embed_dim must be even")
        if cond_map not in COND_MAPS:
            raise ValueError(f"cond_map must be one of {sorted(COND_MAPS)}, got {cond_map!r}")
        self.net = net
        self.cond_embed_dim = int(cond_embed_dim)
        self.cond_map = cond_map
        self.cond_proj = nn.Linear(cond_embed_dim, net.config["t_embed_dim"], bias=False)
        if zero_init:
            nn.init.zeros_(self.cond_proj.weight)

    @classmethod
    def from_teacher(cls, teacher_net: EpsMLP, cond_embed_dim: int = 64, cond_map: str = "identity",
                     zero_init: bool = True) -> "CondEpsMLP":
        """A trainable copy of ``teacher_net`` with the slot; ``zero_init=False`` keeps nn.Linear's default
        (Kaiming-uniform) draw for ``cond_proj``, as diffusers and the official SPLAM script do."""
        net = EpsMLP(**teacher_net.config)
        net.load_state_dict(teacher_net.state_dict())
        return cls(net.train().requires_grad_(True), cond_embed_dim, cond_map, zero_init)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor, cond) -> torch.Tensor:
        net = self.net
        dtype = net.input.weight.dtype
        t = batch_times(t, x)
        cond = torch.as_tensor(cond, dtype=torch.float64).reshape(-1)
        if cond.numel() == 1:
            cond = cond.expand(x.shape[0])
        emb = timestep_embedding(t, net.config["t_embed_dim"]).to(dtype)
        emb = emb + self.cond_proj(scalar_embedding(COND_MAPS[self.cond_map](cond), self.cond_embed_dim).to(dtype))
        c = net.time_mlp(emb) + net.label_embedding(y)
        h = net.input(x.to(dtype))
        for block in net.blocks:
            h = block(h, c)
        return net.output(net.out_norm(h)).to(x.dtype)

    eps = forward


class CondUNetStudent(nn.Module):
    """A 16×16 digits UNet (:class:`~common.digits16.model.EpsUNet16`) with LCM's conditioning slot.

    diffusers' ``TimestepEmbedding(cond_proj_dim=...)`` adds ``cond_proj(condition)`` to its sinusoidal input
    before ``linear_1``; ``UNet2DModel`` has no such argument, so the same sum is made by a forward pre-hook on
    ``unet.time_embedding`` that lives only for the duration of one call. ``cond_proj`` is bias-free and
    zero-initialised (``zero_init=False``: nn.Linear's default draw), so a fresh ``from_teacher`` copy answers
    exactly like the teacher for every ``cond``. ``prediction`` is the teacher's ("x0" or "epsilon"), and
    :func:`consistency_output` reads the predicted origin accordingly.
    """

    def __init__(self, net: nn.Module, cond_embed_dim: int = 64, cond_map: str = "identity", zero_init: bool = True):
        super().__init__()
        if cond_embed_dim % 2:
            raise ValueError("cond_embed_dim must be even")
        if cond_map not in COND_MAPS:
            raise ValueError(f"cond_map must be one of {sorted(COND_MAPS)}, got {cond_map!r}")
        if not hasattr(net, "unet") or not hasattr(net, "raw"):
            raise TypeError(f"expected an EpsUNet16-like network (with .unet and .raw), got {type(net).__name__}")
        self.net = net
        self.prediction = net.prediction
        self.schedule = net.schedule
        self.cond_embed_dim = int(cond_embed_dim)
        self.cond_map = cond_map
        self.cond_proj = nn.Linear(cond_embed_dim, net.unet.time_embedding.linear_1.in_features, bias=False)
        if zero_init:
            nn.init.zeros_(self.cond_proj.weight)

    @classmethod
    def from_teacher(cls, teacher_net: nn.Module, cond_embed_dim: int = 64, cond_map: str = "identity",
                     zero_init: bool = True) -> "CondUNetStudent":
        """A trainable copy of ``teacher_net`` (same class, config and parameterisation) with the slot."""
        net = type(teacher_net)(teacher_net.config, prediction=teacher_net.prediction)
        net.load_state_dict(teacher_net.state_dict())
        return cls(net.train().requires_grad_(True), cond_embed_dim, cond_map, zero_init)

    def raw(self, x: torch.Tensor, t, y: torch.Tensor, cond) -> torch.Tensor:
        """The UNet's output (x0-hat or eps-hat, by ``prediction``) with ``cond`` in the time embedding."""
        cond = torch.as_tensor(cond, dtype=torch.float64).reshape(-1)
        if cond.numel() == 1:
            cond = cond.expand(x.shape[0])
        extra = self.cond_proj(scalar_embedding(COND_MAPS[self.cond_map](cond), self.cond_embed_dim).to(self.net.dtype))

        def add_condition(_module, args):
            return (args[0] + extra,) + tuple(args[1:])

        handle = self.net.unet.time_embedding.register_forward_pre_hook(add_condition)
        try:
            return self.net.raw(x.to(self.net.dtype), t, y)
        finally:
            handle.remove()

    def predict_x0(self, x: torch.Tensor, t, y: torch.Tensor, cond) -> torch.Tensor:
        """x0-hat at noise level sigma_t (for "epsilon": (x - sigma_t eps)/alpha_t), in x's dtype."""
        out = self.raw(x, t, y, cond).to(x.dtype)
        if self.prediction == "epsilon":
            alpha, sigma = self._alpha_sigma(t, x)
            out = (x - sigma * out) / alpha
        return out

    def forward(self, x: torch.Tensor, t, y: torch.Tensor, cond) -> torch.Tensor:
        """eps-hat at noise level sigma_t (for "x0": (x - alpha_t x0_hat)/sigma_t), in x's dtype (the model protocol)."""
        out = self.raw(x, t, y, cond).to(x.dtype)
        if self.prediction == "x0":
            alpha, sigma = self._alpha_sigma(t, x)
            out = (x - alpha * out) / sigma
        return out

    eps = forward

    def _alpha_sigma(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = batch_times(t, x)
        return self.schedule.alpha(t).to(x.dtype)[:, None], self.schedule.sigma(t).to(x.dtype)[:, None]


def student_from_teacher(teacher_net: nn.Module, cfg: "DistillConfig") -> nn.Module:
    """The distillation student for ``teacher_net``: :class:`CondEpsMLP` for an EpsMLP, :class:`CondUNetStudent`
    for a 16×16 digits UNet; the slot is configured by ``cfg`` (cond_embed_dim, cond_map, cond_zero_init)."""
    if isinstance(teacher_net, EpsMLP):
        return CondEpsMLP.from_teacher(teacher_net, cfg.cond_embed_dim, cfg.cond_map, cfg.cond_zero_init)
    if hasattr(teacher_net, "unet"):
        return CondUNetStudent.from_teacher(teacher_net, cfg.cond_embed_dim, cfg.cond_map, cfg.cond_zero_init)
    raise TypeError(f"no distillation student for a {type(teacher_net).__name__} teacher")


def consistency_output(student, x: torch.Tensor, steps: torch.Tensor, y, cond, sigma_in: torch.Tensor,
                       schedule) -> torch.Tensor:
    r""":math:`f = c_{skip} x + c_{out} (x - \sigma_{in}\hat\varepsilon)/\alpha_t` at discrete ``steps`` [B].

    ``sigma_in`` [B] is the noise level of x (for plain noisy inputs :math:`\sigma_t`); an x0-prediction student
    (``student.prediction == "x0"``) gives :math:`\hat x_0` directly and ``sigma_in`` is not used."""
    steps = torch.as_tensor(steps, dtype=torch.long)
    alpha, _ = alpha_sigma_discrete(schedule, steps)
    c_skip, c_out = boundary_scalings(steps)
    t_cont = schedule.t_of_step(steps)
    col = lambda v: v.to(x.dtype)[:, None]  # noqa: E731
    if getattr(student, "prediction", "epsilon") == "x0":  # the network's output is the predicted origin
        x0 = student.predict_x0(x, t_cont, y, cond)
    else:
        eps = student(x, t_cont, y, cond)
        x0 = (x - col(sigma_in) * eps) / col(alpha)
    return col(c_skip) * x + col(c_out) * x0


@torch.no_grad()
def ddim_skip_step(teacher, z: torch.Tensor, step_from: torch.Tensor, step_to: torch.Tensor, y) -> torch.Tensor:
    r"""One teacher DDIM step (η = 0) from integer step ``step_from`` to ``step_to`` (both [B]):
    :math:`\hat z_{t_n} = \alpha_{t_n}\hat x_0 + \sigma_{t_n}\hat\varepsilon` (the skipping-step solver)."""
    sch = teacher.schedule
    a_f, s_f = alpha_sigma_discrete(sch, step_from)
    a_t, s_t = alpha_sigma_discrete(sch, step_to)
    col = lambda v: v.to(z.dtype)[:, None]  # noqa: E731
    eps = teacher.eps(z, sch.t_of_step(torch.as_tensor(step_from)), y)
    x0 = (z - col(s_f) * eps) / col(a_f)
    return col(a_t) * x0 + col(s_t) * eps


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    r""":math:`\theta^- \leftarrow \mu\,\theta^- + (1 - \mu)\,\theta` (parameters only)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for p_t, p in zip(target.parameters(), online.parameters(), strict=True):
        p_t.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def lcm_student_input(z: torch.Tensor, z_prev: torch.Tensor, step_from, step_to, schedule, generator):
    """LCM: the student sees :math:`z_{t_{n+k}}` itself, noise level :math:`\\sigma_{t_{n+k}}`, cond = 1."""
    _, sigma = alpha_sigma_discrete(schedule, step_from)
    return z, sigma, torch.ones(z.shape[0], dtype=torch.float64)


# --- the sampler ----------------------------------------------------------------------------------------
@torch.no_grad()
def lcm_sample(student, noise: torch.Tensor, y, n_steps: int, schedule, generator: torch.Generator | None = None,
               cond: float = 1.0, return_trajectory: bool = False):
    r"""LCM multistep sampling (Alg. 3): :math:`x \leftarrow f_\theta(z_{\tau_i}, \tau_i)`,
    :math:`z_{\tau_{i+1}} = \alpha_{\tau_{i+1}} x + \sigma_{\tau_{i+1}}\xi` (fresh ξ from ``generator``).

    ``noise`` is :math:`z_{\tau_0}` (standard normal at τ₀ = 999 ≈ pure noise); ``n_steps`` network calls."""
    taus = lcm_inference_timesteps(n_steps)
    z, trajectory = noise, []
    batch = noise.shape[0]
    for i, tau in enumerate(taus):
        steps = torch.full((batch,), int(tau), dtype=torch.long)
        _, sigma = alpha_sigma_discrete(schedule, steps)
        x = consistency_output(student, z, steps, y, cond, sigma, schedule)
        trajectory.append(x)
        if i + 1 < len(taus):
            a_n, s_n = alpha_sigma_discrete(schedule, [int(taus[i + 1])])
            xi = torch.randn(noise.shape, generator=generator, dtype=noise.dtype)
            z = float(a_n) * x + float(s_n) * xi
    return (x, trajectory) if return_trajectory else x


# --- the training loop --------------------------------------------------------------------------------
@dataclass
class DistillConfig:
    """Consistency-distillation settings (LCM Alg. 1); the same for every student that is compared."""

    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.95
    huber_c: float = 1e-3
    n_original: int = 50
    cond_embed_dim: int = 64
    cond_map: str = "identity"  # what the slot embeds (COND_MAPS): the scalar, or SPLAM's official 10 - 10γ
    cond_zero_init: bool = True  # zero-initialised slot (ours: the student starts as the teacher); False: default init
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass
class DistillResult:
    student: nn.Module        # online network (CondEpsMLP or CondUNetStudent)
    target: nn.Module         # EMA target network (LCM samples with the EMA weights)
    losses: list = field(default_factory=list)
    evaluations: dict = field(default_factory=dict)
    seconds: float = 0.0


def consistency_distill(teacher, x_data: torch.Tensor, y_data: torch.Tensor, cfg: DistillConfig,
                        student_input: Callable | None = None, eval_fn: Callable | None = None,
                        eval_every: int = 0, progress: bool = True, desc: str = "distill") -> DistillResult:
    r"""Consistency distillation (LCM Alg. 1) of ``teacher`` (a Denoiser over an EpsMLP or a 16×16 digits UNet, ``teacher.net``).

    Per iteration: draw data :math:`x_0`, labels y, an index :math:`t_{n+k}` of the skipping grid and noise;
    :math:`z = \alpha x_0 + \sigma\varepsilon`; the teacher's DDIM step gives :math:`\hat z_{t_n}`; the target is
    :math:`f_{\theta^-}(\hat z_{t_n}, t_n; \mathrm{cond}=1)`; ``student_input`` gives the student's input
    :math:`(u, \sigma_u, \mathrm{cond})` (default LCM: :math:`(z, \sigma_{t_{n+k}}, 1)`); the loss is the
    pseudo-Huber distance between :math:`f_\theta(u, t_{n+k}; \mathrm{cond})` and the target; AdamW step; EMA.

    The data, labels, timesteps and noise come from one generator seeded by ``cfg.seed``; the hook gets
    its own generator (seeded by ``cfg.seed + HOOK_SEED_OFFSET``), so two students that differ only in
    ``student_input`` see exactly the same data, timesteps and noise. ``eval_fn(target, step)`` is called every
    ``eval_every`` iterations (and at step 0 and the end) and its return values are collected.
    """
    cfg.validate()
    student_input = student_input or lcm_student_input
    schedule = teacher.schedule
    generator = torch.Generator().manual_seed(int(cfg.seed))
    hook_generator = torch.Generator().manual_seed(int(cfg.seed) + HOOK_SEED_OFFSET)
    torch.manual_seed(int(cfg.seed))
    student = student_from_teacher(teacher.net, cfg)
    target = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    grid = torch.from_numpy(skipping_timesteps(cfg.n_original, schedule.num_train_timesteps))
    k = schedule.num_train_timesteps // cfg.n_original
    result = DistillResult(student=student, target=target)
    start = time.perf_counter()
    if eval_fn is not None and eval_every > 0:
        result.evaluations[0] = eval_fn(target, 0)
    for it in tqdm(range(cfg.steps), disable=not progress, desc=desc, mininterval=10.0):
        idx = torch.randint(0, len(x_data), (cfg.batch_size,), generator=generator)
        x0, y = x_data[idx], y_data[idx]
        step_from = grid[torch.randint(0, len(grid), (cfg.batch_size,), generator=generator)]
        step_to = torch.clamp(step_from - k, min=0)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        a_f, s_f = alpha_sigma_discrete(schedule, step_from)
        z = a_f.to(x0.dtype)[:, None] * x0 + s_f.to(x0.dtype)[:, None] * noise
        z_prev = ddim_skip_step(teacher, z, step_from, step_to, y)
        with torch.no_grad():
            _, s_to = alpha_sigma_discrete(schedule, step_to)
            tgt = consistency_output(target, z_prev, step_to, y, 1.0, s_to, schedule)
        u, sigma_u, cond = student_input(z, z_prev, step_from, step_to, schedule, hook_generator)
        pred = consistency_output(student, u, step_from, y, cond, sigma_u, schedule)
        loss = pseudo_huber(pred, tgt, cfg.huber_c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(target, student, cfg.ema_decay)
        value = float(loss.item())
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite distillation loss at iteration {it}")
        result.losses.append(value)
        done = it + 1
        if eval_fn is not None and eval_every > 0 and (done % eval_every == 0 or done == cfg.steps):
            result.evaluations[done] = eval_fn(target, done)
    result.seconds = time.perf_counter() - start
    target.eval()
    return result
