r"""SLAM: Sub-path Linear Approximation Model (Xu et al., ECCV 2024; arXiv 2404.13903, "SPLAM" in v3).

A consistency model learns :math:`f_\theta(z_t, t) \approx x_0`, constant along the teacher's PF-ODE. LCM
(consistency distillation) enforces it only at the *end points* of each sampled sub-path
:math:`[t_n, t_{n+k}]`: :math:`f_\theta(z_{t_{n+k}}, t_{n+k}) \approx f_{\theta^-}(\hat z_{t_n}, t_n)`, where
:math:`\hat z_{t_n}` is one teacher solver step from :math:`z_{t_{n+k}}`. SLAM instead treats each sub-path
as a **sub-path linear (SL) ODE**: a straight line between the two (re-scaled) end points, parameterised
by :math:`\gamma \in [0, 1]`,

.. math::  z_\gamma = \gamma\,z_{t_{n+k}} + (1 - \gamma)\,\frac{\alpha_{t_{n+k}}}{\alpha_{t_n}}\,\hat z_{t_n}
   \qquad\text{(the paper's SL-ODE point, Eq. 8–9)}

whose signal is :math:`\alpha_{t_{n+k}} x_0` at every γ and whose noise level is

.. math::  \sigma_\gamma^2 = \Big(\sigma_{t_n}\frac{\alpha_{t_{n+k}}}{\alpha_{t_n}}\Big)^2
   + \gamma^2\Big(1 - \frac{\alpha_{t_{n+k}}^2}{\alpha_{t_n}^2}\Big)

(exact when :math:`z_{t_{n+k}}` is the forward-process transition of :math:`\hat z_{t_n}`). The student,
told γ through LCM's conditioning-embedding slot, predicts
:math:`\hat x_0 = (z_\gamma - \sigma_\gamma\hat\varepsilon_\theta(z_\gamma, t_{n+k}, \gamma))/\alpha_{t_{n+k}}`
and is trained with the pseudo-Huber loss between
:math:`c_{skip}(t_{n+k})z_\gamma + c_{out}(t_{n+k})\hat x_0` and the EMA target
:math:`f_{\theta^-}(\hat z_{t_n}, t_n; \gamma = 1)` (SLAM's training objective, Eq. 12, as in the official
``predicted_origin_splam``). γ ~ U(0, 1) per sample: the loss is spread progressively along the whole
sub-path instead of only at its far end, which the paper argues lowers the cumulative approximation
error and gives better 2–4-step samples. γ ≡ 1 gives back LCM exactly, which is our baseline; at
sampling time both students are used with γ = 1 (plain noisy inputs) by the LCM multistep sampler.

Everything else (teacher solver, boundary scalings, EMA target, sampler) is shared with LCM and lives in
:mod:`common.consistency`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from common.consistency import (
    DistillConfig,
    alpha_sigma_discrete,
    consistency_distill,
    consistency_output,
    ddim_skip_step,
    lcm_sample,
    lcm_student_input,
    skipping_timesteps,
    student_from_teacher,
)
from common.diffusion import ddim, ddim_timesteps, dpm_solver_pp_2m
from common.diffusion.metrics import fd_to_train, kid_to_train
from common.digits16.data import DIM16, off_subspace_fraction, to_digits8
from common.model_cache import cache_key, cache_path, load_weights, save_weights

METHODS = ("lcm", "slam")
GRID = 20  # samples per student kept for figures (two of each class)
#: Diagnostic arms: SLAM with the official script's γ slot (embedding of 10 - 10γ, default-initialised projection)
#: instead of ours (embedding of γ, zero-initialised); the student input is SLAM's.
OFFICIAL_ARMS = {"slam_official": ("slam", {"cond_map": "splam", "cond_zero_init": False})}


def sub_path_sigma(gamma: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor,
                   sigma_to: torch.Tensor) -> torch.Tensor:
    r""":math:`\sigma_\gamma` of the SL-ODE point (see the module docstring); :math:`\sigma_1 = \sigma_{t_{n+k}}`,
    :math:`\sigma_0 = \sigma_{t_n}\alpha_{t_{n+k}}/\alpha_{t_n}`."""
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    if ((gamma < 0) | (gamma > 1)).any():
        raise ValueError("gamma must lie in [0, 1]")
    ratio = torch.as_tensor(alpha_from, dtype=torch.float64) / torch.as_tensor(alpha_to, dtype=torch.float64)
    if (ratio > 1 + 1e-12).any():
        raise ValueError("alpha must not increase along the sub-path (alpha_from <= alpha_to)")
    return torch.sqrt((torch.as_tensor(sigma_to, dtype=torch.float64) * ratio) ** 2 + gamma**2 * (1.0 - ratio**2))


def sub_path_point(z_from: torch.Tensor, z_to: torch.Tensor, gamma: torch.Tensor, alpha_from: torch.Tensor,
                   alpha_to: torch.Tensor) -> torch.Tensor:
    r""":math:`z_\gamma = \gamma z_{t_{n+k}} + (1 - \gamma)(\alpha_{t_{n+k}}/\alpha_{t_n})\hat z_{t_n}` ([B] coefficients)."""
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    ratio = torch.as_tensor(alpha_from, dtype=torch.float64) / torch.as_tensor(alpha_to, dtype=torch.float64)
    g = gamma.to(z_from.dtype)[:, None]
    r = ratio.to(z_from.dtype)[:, None]
    return g * z_from + (1.0 - g) * r * z_to


def slam_student_input(z: torch.Tensor, z_prev: torch.Tensor, step_from, step_to, schedule, generator):
    r"""SLAM's student input: γ ~ U(0, 1) per sample, the SL-ODE point :math:`z_\gamma` and :math:`\sigma_\gamma`."""
    gamma = torch.rand(z.shape[0], generator=generator, dtype=torch.float64)
    a_f, _ = alpha_sigma_discrete(schedule, step_from)
    a_t, s_t = alpha_sigma_discrete(schedule, step_to)
    return sub_path_point(z, z_prev, gamma, a_f, a_t), sub_path_sigma(gamma, a_f, a_t, s_t), gamma


def student_input_for(method: str):
    """The only difference between the two students: LCM (γ ≡ 1) or SLAM (γ ~ U(0, 1))."""
    if method == "lcm":
        return lcm_student_input
    if method == "slam":
        return slam_student_input
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def distill(teacher, x_data, y_data, method: str, cfg: DistillConfig, eval_fn=None, eval_every: int = 0,
            progress: bool = True, desc: str | None = None):
    """Distil ``teacher`` into a student with ``method`` ("lcm", "slam" or the diagnostic "slam_official"),
    everything else fixed by ``cfg``; ``desc`` labels the progress bar (default: the method and seed)."""
    desc = f"{method} seed {cfg.seed}" if desc is None else desc
    if method in OFFICIAL_ARMS:
        return distill(teacher, x_data, y_data, OFFICIAL_ARMS[method][0], _arm_config(method, cfg), eval_fn,
                       eval_every, progress, desc)
    return consistency_distill(teacher, x_data, y_data, cfg, student_input=student_input_for(method),
                               eval_fn=eval_fn, eval_every=eval_every, progress=progress, desc=desc)


def _arm_config(arm: str, cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with a diagnostic arm's slot overrides (:data:`OFFICIAL_ARMS`); ``cfg`` itself for "lcm"/"slam"."""
    if arm in OFFICIAL_ARMS:
        return dataclasses.replace(cfg, **OFFICIAL_ARMS[arm][1])
    if arm not in METHODS:
        raise ValueError(f"arm must be one of {METHODS + tuple(OFFICIAL_ARMS)}, got {arm!r}")
    return cfg


def training_cache_key(teacher, split, arm: str, cfg: DistillConfig, n_curve_samples: int, eval_every: int) -> str:
    """The cache key of one trained student (:mod:`common.model_cache`): the arm, the distillation config, the curve
    settings, the teacher's weights and schedule, the training data, and the whole source of the code that trains
    it or draws its curve (this module, ``common/consistency.py``, the 16×16 UNet and data modules, the diffusion
    schedule, views, model, classifier and metrics modules), the curve classifier's weights, the teacher's
    parameterisation and diffusers' version. Any edit of this module retrains (safe, not minimal)."""
    import diffusers

    import common.consistency
    import common.diffusion.classifier
    import common.diffusion.metrics
    import common.diffusion.model
    import common.diffusion.schedule
    import common.diffusion.views
    import common.digits16.data
    import common.digits16.model
    from common.diffusion.metrics import DigitsFeatures

    files = [Path(m.__file__) for m in (common.consistency, common.diffusion.classifier, common.diffusion.metrics,
                                        common.diffusion.model, common.diffusion.schedule, common.diffusion.views,
                                        common.digits16.data, common.digits16.model)] + [Path(__file__)]
    classifier = DigitsFeatures.load()  # the curve's FD features
    tensors = [split.x_train, split.y_train, *teacher.net.state_dict().values(), *classifier.net.state_dict().values()]
    parts = (arm, dataclasses.asdict(cfg), n_curve_samples, eval_every, teacher.schedule.config(),
             getattr(teacher.net, "prediction", "epsilon"), diffusers.__version__)
    return cache_key(parts, files=files, tensors=tensors)


@functools.lru_cache(maxsize=2)
def load_teacher(checkpoint: str):
    """(teacher Denoiser, data split) for a zoo checkpoint: the 16×16 UNet (``digits16_*``) or an 8×8 ε-MLP.

    Memoised per process (the teacher is frozen and never modified), so sequential tasks load it once."""
    if checkpoint.startswith("digits16"):
        from common.digits16 import load_digits16_eps, load_digits16_split

        return load_digits16_eps(name=checkpoint), load_digits16_split()
    from common.diffusion import load_digits_split
    from common.diffusion.model import load_eps_checkpoint

    return load_eps_checkpoint(checkpoint), load_digits_split()


def run_task(task: dict) -> dict:
    """One (arm, seed) of a comparison in a worker process (:func:`common.workers.process_map`): loads the teacher
    ``task["teacher_checkpoint"]``, its data and the digits classifier, then :func:`train_and_evaluate` with the
    task's ``arm``, ``cfg`` and keyword settings (``steps``, ``n_samples``, ``n_curve_samples``, ``eval_every``;
    optional ``cache_dir``, ``n_probe``)."""
    from common.diffusion.metrics import DigitsFeatures

    teacher, split = load_teacher(task["teacher_checkpoint"])
    kwargs = {k: task[k] for k in ("steps", "n_samples", "n_curve_samples", "eval_every", "cache_dir", "n_probe")
              if k in task}
    return train_and_evaluate(teacher, split, task["arm"], task["cfg"], DigitsFeatures.load(), progress=False, **kwargs)


def balanced_labels(n: int) -> torch.Tensor:
    """Labels 0..9 repeated to length n (class-balanced conditional samples)."""
    if n < 1:
        raise ValueError("n must be positive")
    return torch.arange(n, dtype=torch.long) % 10


def sample_student(student, n_steps: int, n_samples: int, schedule, random_state: int,
                   dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_samples`` class-balanced samples of the LCM multistep sampler (γ = 1); returns (x, labels).

    The initial noise and the re-noising draws come from ``random_state`` only, so two students sampled
    with the same ``random_state`` share their noise. ``dim``: 64 (8×8 digits) or 256 (16×16)."""
    gen = torch.Generator().manual_seed(int(random_state))
    noise = torch.randn(n_samples, dim, generator=gen)
    y = balanced_labels(n_samples)
    return lcm_sample(student, noise, y, n_steps, schedule, generator=gen), y


def first_crossing(steps, values, level: float) -> float:
    """The first iteration at which ``values`` (a curve over ``steps``) is <= ``level``; ``inf`` if never."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError("steps and values must be 1-D of the same length")
    hit = np.nonzero(values <= level)[0]
    return float(steps[hit[0]]) if hit.size else float("inf")


@torch.no_grad()
def self_consistency_error(net, teacher, x_data: torch.Tensor, y_data: torch.Tensor, method: str,
                           n: int = 512, n_original: int = 50, random_state: int = 0) -> dict:
    r"""How far ``net`` is from being a consistency function across one teacher step, on a fixed probe batch.

    For probe data :math:`x_0`, noise and grid steps :math:`t_{n+k}` (drawn from ``random_state`` only, so every
    network is probed on the same batch), the teacher's DDIM step gives :math:`\hat z_{t_n}` and the error is
    :math:`\lVert f(u, t_{n+k}; \gamma) - f(\hat z_{t_n}, t_n; 1)\rVert^2` per sample (summed over pixels), with
    ``net`` on both sides and ``(u, σ_u, γ)`` the student input of ``method``: "lcm" probes the γ = 1 input
    that the multistep sampler uses, "slam" the SL-ODE points SLAM trains on. Returns the mean over the batch
    (``all``) and over the noisiest steps :math:`t_{n+k} \ge 800` (``high``), where :math:`1/\alpha_t` amplifies
    any error in the noise prediction.
    """
    if n < 1:
        raise ValueError("n must be positive")
    schedule = teacher.schedule
    gen = torch.Generator().manual_seed(int(random_state))
    idx = torch.randint(0, len(x_data), (n,), generator=gen)
    x0, y = x_data[idx], y_data[idx]
    grid = torch.from_numpy(skipping_timesteps(n_original, schedule.num_train_timesteps))
    k = schedule.num_train_timesteps // n_original
    step_from = grid[torch.randint(0, len(grid), (n,), generator=gen)]
    step_to = torch.clamp(step_from - k, min=0)
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    a_f, s_f = alpha_sigma_discrete(schedule, step_from)
    z = a_f.to(x0.dtype)[:, None] * x0 + s_f.to(x0.dtype)[:, None] * noise
    z_prev = ddim_skip_step(teacher, z, step_from, step_to, y)
    _, s_to = alpha_sigma_discrete(schedule, step_to)
    anchor = consistency_output(net, z_prev, step_to, y, 1.0, s_to, schedule)
    u, sigma_u, cond = student_input_for(method)(z, z_prev, step_from, step_to, schedule,
                                                 torch.Generator().manual_seed(int(random_state) + 1))
    err = ((consistency_output(net, u, step_from, y, cond, sigma_u, schedule) - anchor) ** 2).sum(dim=1)
    high = step_from >= 800
    return {"all": float(err.mean()), "high": float(err[high].mean()) if high.any() else float("nan")}


@torch.no_grad()
def first_step_spread(student, n_steps: int, n_samples: int, schedule, random_state: int, dim: int = 64) -> float:
    r"""Standard deviation of the first sampling step's :math:`\hat x_0` (the data's is about 0.75)."""
    gen = torch.Generator().manual_seed(int(random_state))
    noise = torch.randn(n_samples, dim, generator=gen)
    _, trajectory = lcm_sample(student, noise, balanced_labels(n_samples), n_steps, schedule, generator=gen,
                               return_trajectory=True)
    return float(trajectory[0].std())


def as_digits8(x: torch.Tensor) -> torch.Tensor:
    """What the digits classifier (FD, KID, accuracy) reads: 8×8 digits as they are, 16×16 samples mapped back by
    :func:`common.digits16.data.to_digits8` (the least-squares 8×8 preimage, as the 16×16 zoo model is evaluated)."""
    if x.shape[1] == 64:
        return x
    if x.shape[1] == DIM16:
        return to_digits8(x)
    raise ValueError(f"expected 8×8 (64) or 16×16 ({DIM16}) digits, got dimension {x.shape[1]}")


def curve_fd(target, schedule, n_curve_samples: int, seed: int, dim: int) -> float:
    """One point of the training curve: the EMA student's 4-step FD on ``n_curve_samples`` samples (noise stream
    ``10_000 + seed``)."""
    x, _ = sample_student(target.eval(), 4, n_curve_samples, schedule, 10_000 + seed, dim=dim)
    target.train()
    return fd_to_train(as_digits8(x))


def train_and_evaluate(teacher, split, arm: str, cfg: DistillConfig, classifier, *, steps=(1, 2, 4),
                       n_samples: int, n_curve_samples: int, eval_every: int, progress: bool = True,
                       cache_dir=None, n_probe: int = 512) -> dict:
    """Distil one student (``arm``, seed ``cfg.seed``) and measure it: the protocol of every seed and arm.

    Training curve: every ``eval_every`` iterations the EMA student's 4-step FD on ``n_curve_samples`` samples
    (:func:`curve_fd`). After training: the mean of the first and last 10 iteration losses, the
    self-consistency error at each method's input (:func:`self_consistency_error`, ``n_probe`` probes, the seed's), the
    first-step spread, and FD, KID and class accuracy of ``n_samples`` class-balanced samples at each step count in
    ``steps`` (noise stream ``1_000 + seed``, shared by every arm of the seed). Returns a dict of plain numbers
    (``fd``, ``kid``, ``acc`` keyed by step count; ``consistency``, ``consistency_high`` keyed by probe input;
    ``cached``: whether the trained student came from ``cache_dir``), and ``grid``, the first :data:`GRID` samples
    at the largest step count (a tensor, for figures); for 16×16, ``off_subspace`` (the samples' energy fraction off the
    data's subspace at that step count, :func:`common.digits16.data.off_subspace_fraction`).
    The probes and KID are cheap next to the training (a few seconds per arm), so every caller gets all of them,
    whether it records them or not. 8×8 (EpsMLP teacher) or 16×16 (UNet teacher): the data's dimension decides.

    ``cache_dir``: the trained EMA student, its losses and its curve are kept there (:mod:`common.model_cache`,
    keyed by :func:`training_cache_key`), and a later call with the same everything evaluates them instead of
    training again.
    """
    seed, dim = int(cfg.seed), int(split.x_train.shape[1])
    path = None
    if cache_dir is not None:
        key = training_cache_key(teacher, split, arm, cfg, n_curve_samples, eval_every)
        path = cache_path(cache_dir, f"{arm}_seed{seed}", key)
    cached = path is not None and path.exists()
    if cached:
        state, meta = load_weights(path)
        target = student_from_teacher(teacher.net, _arm_config(arm, cfg))
        target.load_state_dict(state)
        target.requires_grad_(False).eval()
        losses, curve = meta["losses"], {int(k): v for k, v in meta["curve"].items()}
    else:
        res = distill(teacher, split.x_train, split.y_train, arm, cfg,
                      eval_fn=lambda target, _step: curve_fd(target, teacher.schedule, n_curve_samples, seed, dim),
                      eval_every=eval_every, progress=progress)
        target, losses, curve = res.target, res.losses, res.evaluations
        if path is not None:
            save_weights(path, target.state_dict(), {"losses": losses, "curve": curve})
    out = {"curve": curve, "initial_loss": float(np.mean(losses[:10])),
           "final_loss": float(np.mean(losses[-10:])), "consistency": {}, "consistency_high": {},
           "fd": {}, "kid": {}, "acc": {}, "cached": cached}
    for probe_input in METHODS:  # the sampled (EMA) network, probed at the γ = 1 input and at SLAM's input
        err = self_consistency_error(target, teacher, split.x_train, split.y_train, probe_input, n=n_probe,
                                     random_state=seed)
        out["consistency"][probe_input], out["consistency_high"][probe_input] = err["all"], err["high"]
    out["spread"] = first_step_spread(target, 4, n_curve_samples, teacher.schedule, 10_000 + seed, dim=dim)
    for n in steps:
        x, y = sample_student(target, n, n_samples, teacher.schedule, 1_000 + seed, dim=dim)
        if n == max(steps):
            out["grid"] = x[:GRID].clone()  # the first samples (labels 0, 1, ..., 9, 0, ...) for a figure
            if dim == DIM16:  # energy off the data's 64-dim subspace, which the 8×8 preimage (FD, accuracy) cannot see
                out["off_subspace"] = off_subspace_fraction(x)
        x8 = as_digits8(x)
        out["fd"][n], out["kid"][n] = fd_to_train(x8), kid_to_train(x8)
        out["acc"][n] = float((classifier.predict(x8) == y).float().mean())
    return out


@torch.no_grad()
def teacher_solver_fd(teacher, steps, n_samples: int, random_state: int, reference_steps: int | None = None,
                      dim: int = 64) -> dict:
    """FD of the teacher's DDIM and DPM-Solver++(2M) at each step count in ``steps`` ("trailing" grid from t = 1),
    started from the same class-balanced noise as the students sampled with ``random_state``; with
    ``reference_steps``, also the FD of DDIM at that many steps (key ``"reference"``). ``dim``: 64 or 256."""
    gen = torch.Generator().manual_seed(int(random_state))
    noise, y = torch.randn(n_samples, dim, generator=gen), balanced_labels(n_samples)
    out = {"ddim": {}, "dpmpp": {}}
    for n in steps:
        ts = ddim_timesteps(n, spacing="trailing")
        out["ddim"][n] = fd_to_train(as_digits8(ddim(teacher, noise, ts, y)))
        out["dpmpp"][n] = fd_to_train(as_digits8(dpm_solver_pp_2m(teacher, noise, ts, y)))
    if reference_steps:
        ts = ddim_timesteps(reference_steps, spacing="trailing")
        out["reference"] = fd_to_train(as_digits8(ddim(teacher, noise, ts, y)))
    return out


def iteration_ratio(curve_lcm: dict, curve_slam: dict, train_steps: int) -> float:
    """Training speed of one seed: the first evaluated iteration at which SLAM's 4-step curve reaches LCM's final
    value, as a fraction of ``train_steps``; 2.0 when never reached. Iteration 0, where both students are still the
    teacher, is never a crossing."""
    its = [i for i in sorted(curve_slam) if i > 0]
    hit = first_crossing(its, [curve_slam[i] for i in its], curve_lcm[max(curve_lcm)])
    return hit / train_steps if np.isfinite(hit) else 2.0
