r"""A small DCGAN family (Radford et al. 2016) with configurable up-sampling, for CPU-sized experiments.

**Generator** :class:`DCGenerator`: latent :math:`z \in \mathbb{R}^{d}` → optional mapping MLP
:math:`w = f(z)` (StyleGAN-style, ``mapping_layers`` > 0) → a 4×4 transposed convolution from 1×1
(the official DCGAN of Durall et al.'s ``module_spectrum.ConvGenerator``) → ``log2(size/4)``
up-sampling stages ×2 (BatchNorm + ReLU after each but the last) → ``tanh``. Channels halve per stage
from ``width * 2**(n_stages-1)``. Each stage's up-sampler is one of (:func:`up_block`):

- ``transposed``: ``ConvTranspose2d(k=4, s=2, p=1)`` (the "up-convolution" of DCGAN);
- ``nearest`` / ``bilinear``: ``Upsample(×2)`` followed by ``Conv2d(k, padding=k//2)``.

``upsample`` sets the mode of the last ``n_replaced`` stages (the others stay ``transposed``);
``n_final_convs`` > 1 adds linear 5×5 convolutions after an interpolating last stage, as in the
official last-layer replacement (``Upsample(nearest)`` + three 5×5 convolutions, no activation between).

**Discriminator** :class:`DCDiscriminator`: ``Conv2d(k=4, s=2, p=1)`` + LeakyReLU(0.2) stages down to
4×4 (BatchNorm from the second), then a 4×4 convolution to one logit.

**Training** :func:`train_gan`: the non-saturating GAN loss (Goodfellow et al. 2014, Sec. 3),

.. math:: L_D = \mathbb{E}_x[\mathrm{softplus}(-D(x))] + \mathbb{E}_z[\mathrm{softplus}(D(G(z)))],
          \qquad L_G = \mathbb{E}_z[\mathrm{softplus}(-D(G(z)))],

alternating one D and one G Adam step per iteration, seeded (``torch.Generator`` for latents and
minibatch indices). ``g_extra_loss(x_fake, x_real, g_loss)`` adds a term to :math:`L_G` (a spectral
regulariser, for example). :func:`latent_bank` gives a fixed, seeded set of latents for evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE_MODES = ("transposed", "nearest", "bilinear")


def up_block(in_ch: int, out_ch: int, mode: str, kernel_size: int = 3, n_convs: int = 1) -> nn.Sequential:
    """A ×2 spatial up-sampler: transposed conv (k=4, s=2, p=1), or interpolation + ``n_convs`` convs."""
    if mode == "transposed":
        return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1))
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if kernel_size % 2 != 1 or n_convs < 1:
        raise ValueError(f"need an odd kernel_size and n_convs >= 1, got {kernel_size}, {n_convs}")
    up = nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    chans = [in_ch] * n_convs + [out_ch]
    convs = [nn.Conv2d(chans[i], chans[i + 1], kernel_size, padding=kernel_size // 2) for i in range(n_convs)]
    return nn.Sequential(up, *convs)


def _n_stages(image_size: int) -> int:
    n = math.log2(image_size / 4)
    if image_size < 8 or n != int(n):
        raise ValueError(f"image_size must be 4 * 2**k with k >= 1, got {image_size}")
    return int(n)


class DCGenerator(nn.Module):
    """DCGAN generator with configurable up-sampling in its last stage(s) and an optional mapping MLP."""

    def __init__(self, z_dim: int = 64, image_size: int = 32, channels: int = 1, width: int = 16,
                 upsample: str = "transposed", n_replaced: int = 1, n_final_convs: int = 1,
                 kernel_size: int = 5, mapping_layers: int = 0):
        super().__init__()
        n = _n_stages(image_size)
        if not 0 <= n_replaced <= n:
            raise ValueError(f"n_replaced must be in [0, {n}], got {n_replaced}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.z_dim, self.image_size = z_dim, image_size
        layers = []
        for _ in range(mapping_layers):
            layers += [nn.Linear(z_dim, z_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        d = width * 2 ** (n - 1)
        stages = [nn.Sequential(nn.ConvTranspose2d(z_dim, d, 4, bias=False), nn.BatchNorm2d(d), nn.ReLU())]
        for i in range(n):
            last = i == n - 1
            mode = upsample if i >= n - n_replaced else "transposed"
            out = channels if last else max(d // 2, 1)
            block = up_block(d, out, mode, kernel_size, n_final_convs if (last and mode != "transposed") else 1)
            stages.append(block if last else nn.Sequential(block, nn.BatchNorm2d(out), nn.ReLU()))
            d = out
        self.net = nn.Sequential(*stages)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        return torch.tanh(self.net(w[:, :, None, None]))


class DCDiscriminator(nn.Module):
    """DCGAN discriminator: stride-2 4×4 convolutions down to 4×4, then one logit per image."""

    def __init__(self, image_size: int = 32, channels: int = 1, width: int = 16, batch_norm: bool = True):
        super().__init__()
        n = _n_stages(image_size)
        layers, d = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
        for _ in range(n - 1):
            layers += [nn.Conv2d(d, 2 * d, 4, 2, 1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(2 * d)] if batch_norm else []
            layers += [nn.LeakyReLU(0.2)]
            d *= 2
        layers.append(nn.Conv2d(d, 1, 4))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def latent_bank(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """A fixed ``(n, z_dim)`` bank of standard normal latents from ``torch.Generator().manual_seed(seed)``."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images for the latents ``z`` in eval mode (BatchNorm running statistics), batched."""
    was_training = generator.training
    generator.eval()
    out = torch.cat([generator(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])
    generator.train(was_training)
    return out


def train_gan(generator: nn.Module, discriminator: nn.Module, data: torch.Tensor, steps: int,
              batch_size: int = 64, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
              seed: int = 0, g_extra_loss: Callable | None = None, progress: bool = False,
              checkpoint: str | Path | None = None, checkpoint_every: int = 500) -> dict:
    """Non-saturating GAN training, one D step then one G step per iteration (Adam, DCGAN settings).

    ``data`` is an ``(N, C, H, W)`` tensor in [-1, 1]. ``g_extra_loss(x_fake, x_real, g_loss)`` returns a
    scalar added to the generator loss. Returns per-step ``d_loss``, ``g_loss`` and ``extra`` lists,
    ``resumed_from`` (the step a checkpoint resumed at; 0 for a fresh start) and ``segments``, one dict per
    process that trained the run (``from``/``to`` steps, CPU model, torch's CPU capability and threads, torch
    and numpy versions, start time; one segment for an uninterrupted run, none for a finished one loaded).

    **Resumable runs.** With ``checkpoint`` (a file path), the full training state — both networks, both
    Adam states, the minibatch/latent generator's state and the loss history — is written there every
    ``checkpoint_every`` steps and at the end (atomically: a temporary file, then a rename). A later call
    with the same path resumes from it, so an interrupted run continues where it stopped, and a finished
    one returns at once with the stored networks loaded. The loop has no step-dependent schedule and draws
    only from its own generator, so a resumed run is bit-identical to an uninterrupted one under the same
    kernels (CPU capability, thread count, torch and numpy builds: tested; a resume under other kernels is
    warned about and recorded in ``segments``). A ``<checkpoint>.lock`` (``flock``) keeps two processes from
    training the same run. The caller owns the path: it must change whenever anything that shapes training
    changes (architecture, initialisation, data and its content, loss, hyper-parameters); the stored ``seed``,
    ``batch_size``, ``lr``, ``betas``, data shape and parameter shapes are checked, and a checkpoint past
    ``steps`` is refused.
    """
    if steps < 1 or batch_size < 2 or len(data) < batch_size:
        raise ValueError(f"need steps >= 1 and 2 <= batch_size <= len(data), got {steps}, {batch_size}, {len(data)}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    gen = torch.Generator().manual_seed(seed)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    z_dim = generator.z_dim
    hist = {"d_loss": [], "g_loss": [], "extra": []}
    meta = {"seed": seed, "batch_size": batch_size, "lr": lr, "betas": list(betas), "data_shape": list(data.shape),
            "shapes": [list(t.shape) for m in (generator, discriminator) for t in m.state_dict().values()]}
    nets, opts = (generator, discriminator), (opt_g, opt_d)
    start, segments = 0, []
    lock = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        lock = _lock(checkpoint)
    try:
        if checkpoint is not None and checkpoint.is_file():
            start, segments = _load_training_state(checkpoint, meta, steps, nets, opts, gen, hist)
        if start < steps:
            _warn_if_environment_changed(segments, checkpoint)
            segments.append({**_environment(), "from": start, "to": start})
        it = range(start, steps)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc="GAN", leave=False, initial=start, total=steps)
        generator.train()
        discriminator.train()
        for step in it:
            x_real = data[torch.randint(len(data), (batch_size,), generator=gen)]
            z = torch.randn(batch_size, z_dim, generator=gen)
            with torch.no_grad():
                x_fake = generator(z)
            d_loss = F.softplus(-discriminator(x_real)).mean() + F.softplus(discriminator(x_fake)).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()

            z = torch.randn(batch_size, z_dim, generator=gen)
            x_fake = generator(z)
            g_loss = F.softplus(-discriminator(x_fake)).mean()
            extra = g_extra_loss(x_fake, x_real, g_loss) if g_extra_loss is not None else torch.zeros(())
            opt_g.zero_grad()
            (g_loss + extra).backward()
            opt_g.step()
            hist["d_loss"].append(float(d_loss.detach()))
            hist["g_loss"].append(float(g_loss.detach()))
            hist["extra"].append(float(extra.detach()))
            segments[-1]["to"] = step + 1
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                _save_training_state(checkpoint, meta, step + 1, nets, opts, gen, hist, segments)
    finally:
        if lock is not None:
            lock.close()  # releases the flock
    return {**hist, "resumed_from": start, "segments": segments}


def _environment() -> dict:
    """What decides a run's floating-point results besides its inputs: the CPU model, torch's CPU capability
    and thread count, torch's and numpy's versions; and when this process started training."""
    import datetime
    import platform

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "numpy": str(np.__version__),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


_KERNEL_KEYS = ("capability", "threads", "torch", "numpy")


def _warn_if_environment_changed(segments: list, checkpoint) -> None:
    """A resumed run is bit-identical to an uninterrupted one only under the same kernels: warn otherwise."""
    if not segments:
        return
    now, last = _environment(), segments[-1]
    changed = {k: (last.get(k), now[k]) for k in _KERNEL_KEYS if last.get(k) != now[k]}
    if changed:
        import warnings
        warnings.warn(f"resuming {checkpoint} under other kernels than its last segment ({changed}): the run is "
                      "no longer bit-identical to an uninterrupted one (the segments record it)", stacklevel=3)


def _lock(path: Path):
    """Hold an exclusive ``flock`` on ``<path>.lock`` (released when the returned file closes or the process
    dies); refuse if another process holds it. Temporary files of killed writers are removed."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another process is training the run of {path} (it holds {path.name}.lock)") from None
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink()
    return handle


def _save_training_state(path: Path, meta: dict, step: int, nets, opts, gen: torch.Generator, hist: dict,
                         segments: list) -> None:
    """Write the whole training state to ``path`` atomically (a temporary file in the same folder, flushed to
    disk, then a rename)."""
    state = {"meta": meta, "step": step, "nets": [n.state_dict() for n in nets],
             "opts": [o.state_dict() for o in opts], "rng": gen.get_state(), "hist": hist, "segments": segments}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_training_state(path: Path, meta: dict, steps: int, nets, opts, gen: torch.Generator,
                         hist: dict) -> tuple[int, list]:
    """Load a state written by :func:`_save_training_state` into the networks, optimisers, generator and
    history; return its step and segments. Refuses (``ValueError``) a state of another run or one past ``steps``."""
    state = torch.load(path, weights_only=True)
    if state["meta"] != meta:
        diff = sorted(k for k in meta if state["meta"].get(k) != meta[k])
        raise ValueError(f"checkpoint {path} belongs to another run (differs in {diff}); remove it or pass another path")
    if state["step"] > steps:
        raise ValueError(f"checkpoint {path} is at step {state['step']}, past the {steps} steps asked for")
    for net, sd in zip(nets, state["nets"], strict=True):
        net.load_state_dict(sd)
    for opt, sd in zip(opts, state["opts"], strict=True):
        opt.load_state_dict(sd)
    gen.set_state(state["rng"])
    for key in hist:
        hist[key].extend(state["hist"][key])
    return int(state["step"]), [dict(seg) for seg in state["segments"]]


def n_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def as_numpy_images(x: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` tensor → ``(N, C, H, W)`` float64 array."""
    return x.detach().cpu().numpy().astype(np.float64)
