r"""Watch your Up-Convolution (Durall, Keuper and Keuper, CVPR 2020): spectral artefacts of up-sampling.

**Claim.** Generators that up-sample with transposed convolutions (or interpolation followed by
convolutions) do not reproduce the high-frequency part of the spectrum of their training data; a
1-D spectral profile is then enough to tell real from generated images.

**Spectral profile** (Sec. 3.1, Eq. 1–2; :func:`common.spectra.spectral_profile`): per image, the
azimuthal average of :math:`20\log|\mathrm{fftshift}(\mathrm{FFT2}(x)) + \epsilon|`, min-max
normalised to [0, 1]. The **high-frequency error** of a model is the mean absolute gap between the mean
profiles of its outputs and of real images over the top 25 % of radial bins; the *floor* is the same
number between two disjoint sets of real images.

**Part A — autoencoders** (Sec. 3.2): :class:`UpsamplingAutoencoder` has one encoder and one decoder
skeleton; only the decoder's ×2 up-samplers change (``transposed``, ``nearest``+conv,
``bilinear``+conv). :func:`detection_accuracy` is the paper's detector (Sec. 4): logistic regression on
the 1-D profiles, k-fold cross-validated.

**Part B — spectral regularisation** (Sec. 5, Eq. 5–6). The spectral loss is the binary
cross-entropy between the profiles of real images and of generated images,

.. math:: \mathcal{L}_{\mathrm{Spectral}} = -\frac{1}{M/2-1}\sum_{i=0}^{M/2-1}
          \mathrm{AI}^{\mathrm{real}}_i \log \mathrm{AI}^{\mathrm{out}}_i
          + (1-\mathrm{AI}^{\mathrm{real}}_i)\log(1-\mathrm{AI}^{\mathrm{out}}_i), \qquad
          \mathcal{L}_{\mathrm{final}} = \mathcal{L}_{\mathrm{GAN}} + \lambda\,\mathcal{L}_{\mathrm{Spectral}}.

Two variants:

- :func:`official_spectral_term` follows ``train_spectrum.train_G`` line by line: profiles in NumPy on
  detached images, ``BCE(input=profile_real, target=profile_fake)`` averaged over the batch (real
  image t paired with fake image t), multiplied by the adversarial loss ``g_loss`` and by
  :math:`\lambda = 10^{-5}`. As the BCE value is a constant for autograd, the term's gradient is
  :math:`\lambda\,\mathrm{BCE}\cdot\nabla g_{\mathrm{loss}}`: it only rescales the adversarial
  gradient by :math:`1 + \lambda\,\mathrm{BCE}` (about :math:`1 + 10^{-5}`); it cannot move the spectrum.
- :func:`differentiable_spectral_term` computes the profiles with ``torch.fft``
  (:func:`common.spectra.spectral_profile_torch`) and :math:`\lambda\,\mathrm{BCE}(\mathrm{AI}^{out},
  \mathrm{AI}^{real})` with the gradient flowing into G (our addition; the paper's Eq. 6 written as
  it reads).

**Last-layer replacement** (Sec. 5, official ``module_spectrum.ConvGenerator``): the last transposed
convolution of the DCGAN generator becomes nearest up-sampling followed by three 5×5 convolutions
(:class:`common.gan.DCGenerator` with ``upsample="nearest", n_final_convs=3``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from common.gan import DCGenerator, up_block
from common.spectra import high_frequency_error, spectral_profile, spectral_profile_torch

OFFICIAL_LAMBDA = 1e-5


class UpsamplingAutoencoder(nn.Module):
    """Conv autoencoder ``size → size/4 → size``; only the decoder's ×2 up-samplers depend on ``upsample``.

    Encoder: two stride-2 3×3 convolutions (1 → width → 2·width) with ReLU. Decoder: two ×2 up-samplers
    (:func:`common.gan.up_block`, 3×3 convolutions after interpolation) 2·width → width → 1, ReLU between,
    ``tanh`` at the end.
    """

    def __init__(self, upsample: str, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())
        self.decoder = nn.Sequential(up_block(2 * width, width, upsample, 3), nn.ReLU(), up_block(width, 1, upsample, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(self.encoder(x)))


def train_autoencoder(model: nn.Module, images: torch.Tensor, steps: int, batch_size: int = 32,
                      lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Adam on the mean squared reconstruction error; minibatches drawn with a seeded generator."""
    if steps < 1 or not 1 <= batch_size <= len(images):
        raise ValueError(f"need steps >= 1 and 1 <= batch_size <= len(images), got {steps}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch_size,), generator=gen)]
        loss = F.mse_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def detection_accuracy(profiles_real, profiles_fake, n_splits: int = 5, random_state: int = 0) -> float:
    """Mean k-fold accuracy of logistic regression telling real (0) from generated (1) 1-D profiles (Sec. 4)."""
    a, b = np.asarray(profiles_real, float), np.asarray(profiles_fake, float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"profiles must be (n, bins) with equal bins, got {a.shape} and {b.shape}")
    X = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return float(cross_val_score(clf, X, y, cv=cv).mean())


def official_spectral_term(x_fake: torch.Tensor, x_real: torch.Tensor, g_loss: torch.Tensor,
                           lam: float = OFFICIAL_LAMBDA) -> torch.Tensor:
    """The official regulariser: ``lam * BCE(prof_real, prof_fake) * g_loss`` with NumPy profiles.

    The profiles are computed on detached arrays, so only ``g_loss`` carries a gradient.
    """
    n = min(len(x_fake), len(x_real))
    p_fake = torch.from_numpy(spectral_profile(x_fake[:n].detach())).float()
    p_real = torch.from_numpy(spectral_profile(x_real[:n].detach())).float()
    bce = F.binary_cross_entropy(p_real, p_fake)
    return lam * bce * g_loss


def differentiable_spectral_term(x_fake: torch.Tensor, x_real: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Eq. 6 with ``torch.fft`` profiles: ``lam * BCE(prof_fake, prof_real)``, differentiable in ``x_fake``."""
    n = min(len(x_fake), len(x_real))
    p_fake = spectral_profile_torch(x_fake[:n]).clamp(0.0, 1.0)
    with torch.no_grad():
        p_real = spectral_profile_torch(x_real[:n].double()).to(p_fake.dtype)
    return lam * F.binary_cross_entropy(p_fake, p_real)


GAN_VARIANTS = {
    # name: (generator keyword arguments, spectral term)
    "baseline": ({}, None),
    "official_loss": ({}, "official"),
    "replace": ({"upsample": "nearest", "n_final_convs": 3}, None),
    "official": ({"upsample": "nearest", "n_final_convs": 3}, "official"),
    "diff_loss": ({}, "differentiable"),
    "diff_replace": ({"upsample": "nearest", "n_final_convs": 3}, "differentiable"),
}


def make_variant(name: str, image_size: int = 32, z_dim: int = 64, width: int = 16,
                 diff_lambda: float = 1.0) -> tuple[DCGenerator, object]:
    """Generator and G-loss extra term of a named variant of :data:`GAN_VARIANTS`.

    ``official`` is the official code as shipped (``module_spectrum`` + ``train_spectrum``).
    """
    if name not in GAN_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(GAN_VARIANTS)}")
    kwargs, term = GAN_VARIANTS[name]
    g = DCGenerator(z_dim=z_dim, image_size=image_size, channels=1, width=width, **kwargs)
    if term == "official":
        return g, official_spectral_term
    if term == "differentiable":
        return g, lambda xf, xr, gl: differentiable_spectral_term(xf, xr, diff_lambda)
    return g, None


class RandomFeatures(nn.Module):
    """A fixed, seeded, randomly initialised conv net (3 stride-2 convs + global pooling) as an FD feature map."""

    def __init__(self, seed: int = 0, width: int = 32):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1),
                                     nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


AE_MODES = ("transposed", "nearest", "bilinear")


def autoencoder_experiment(images: torch.Tensor, n_seeds: int, seed: int, steps: int, n_train: int,
                           width: int = 8, batch_size: int = 16, lr: float = 2e-3, top_fraction: float = 0.25,
                           progress: bool = False) -> dict:
    """Part A over ``n_seeds`` seeds: per seed a fresh split of ``images`` into train / eval A / eval B.

    Each decoder reconstructs eval B; its profiles are compared with those of eval A (disjoint real
    images), and the floor is eval A against eval B itself. Returns per-seed lists: ``floor``,
    ``floor_detect`` and, per mode, ``hf_err``, ``ratio`` (= hf_err / floor), ``detect``, ``mse``, plus
    the mean profiles of the last seed (for plots).
    """
    n_eval = (len(images) - n_train) // 2
    if n_train < batch_size or n_eval < 10:
        raise ValueError(f"need n_train >= batch_size and >= 10 images per eval set, got {n_train}, {n_eval}")
    out = {"floor": [], "floor_detect": [], "profiles": {}}
    for m in AE_MODES:
        out[m] = {"hf_err": [], "ratio": [], "detect": [], "mse": []}
    seeds = range(seed, seed + n_seeds)
    if progress:
        from tqdm.auto import tqdm
        seeds = tqdm(seeds, desc="seeds", leave=False)
    for s in seeds:
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(s))
        train = images[perm[:n_train]]
        eval_a, eval_b = images[perm[n_train:n_train + n_eval]], images[perm[n_train + n_eval:n_train + 2 * n_eval]]
        p_a, p_b = spectral_profile(eval_a), spectral_profile(eval_b)
        floor = high_frequency_error(p_a, p_b, top_fraction)
        out["floor"].append(floor)
        out["floor_detect"].append(detection_accuracy(p_a, p_b, random_state=s))
        out["profiles"]["real"] = p_a.mean(0)
        for m in AE_MODES:
            torch.manual_seed(s)
            model = UpsamplingAutoencoder(m, width)
            losses = train_autoencoder(model, train, steps, batch_size, lr, seed=s)
            rec = reconstruct(model, eval_b)
            p_r = spectral_profile(rec)
            err = high_frequency_error(p_r, p_a, top_fraction)
            out[m]["hf_err"].append(err)
            out[m]["ratio"].append(err / floor)
            out[m]["detect"].append(detection_accuracy(p_a, p_r, random_state=s))
            out[m]["mse"].append(float(np.mean(losses[-20:])))
            out["profiles"][m] = p_r.mean(0)
    return out


def train_variant(train: torch.Tensor, variant: str, seed: int, steps: int, batch_size: int = 32, z_dim: int = 64,
                  width: int = 16, diff_lambda: float = 1.0, checkpoint=None) -> tuple[dict, DCGenerator]:
    """One GAN run of part B: the discriminator and the generator start from ``torch.manual_seed(seed)``;
    minibatches and latents come from ``seed`` (``common.gan.train_gan``, resumable through ``checkpoint``)."""
    from common.gan import DCDiscriminator, train_gan

    torch.manual_seed(seed)
    d = DCDiscriminator(image_size=train.shape[-1], channels=1, width=width)
    g, extra = make_variant(variant, train.shape[-1], z_dim, width, diff_lambda)
    hist = train_gan(g, d, train, steps, batch_size, seed=seed, g_extra_loss=extra, checkpoint=checkpoint)
    return hist, g


def _train_variant_task(task: tuple) -> tuple[dict, DCGenerator]:
    args, kwargs = task
    return train_variant(*args, **kwargs)


def _init_worker(threads: int, parent: int) -> None:
    """A worker of :func:`gan_experiment`: the parent's torch thread count (so that its runs equal the
    parent's sequential ones), and exit when the parent dies (no orphan keeps training a run)."""
    import os
    import threading
    import time

    torch.set_num_threads(threads)

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_checkpoint(checkpoint_dir, train: torch.Tensor, variant: str, seed: int, steps: int, **kwargs) -> Path:
    """The checkpoint file of one run: named by everything that shapes its training — the training images'
    bytes, variant, seed, steps, the other settings, torch's and numpy's versions and the whole source of
    ``common/gan.py``, ``common/spectra.py`` and this module — so that a checkpoint is never reused for a
    different run (any edit of those files, a docstring's included, starts the runs afresh)."""
    import hashlib

    import common.gan
    import common.spectra

    h = hashlib.sha256()
    h.update(train.numpy().tobytes())
    h.update(repr((variant, seed, steps, sorted(kwargs.items()), torch.__version__, np.__version__)).encode())
    for source in (common.gan.__file__, common.spectra.__file__, __file__):
        h.update(Path(source).read_bytes())
    root = Path(checkpoint_dir)
    if not root.is_absolute():
        root = Path(__file__).resolve().parents[2] / root
    return root / f"{variant}_seed{seed}_steps{steps}_{h.hexdigest()[:16]}.pt"


def gan_experiment(images: torch.Tensor, variants, n_seeds: int, seed: int, steps: int, batch_size: int = 32,
                   n_eval: int = 256, z_dim: int = 64, width: int = 16, diff_lambda: float = 1.0,
                   top_fraction: float = 0.25, progress: bool = False, n_jobs: int = 1,
                   checkpoint_dir=None) -> dict:
    """Part B: every variant trained on the same data, seeds, steps and batches (:func:`train_variant`).

    Per seed: the discriminator and the generator's shared stages start from ``torch.manual_seed(s)``,
    the minibatches and latents come from the same seed, and ``n_eval`` samples from a fixed latent bank
    are compared with ``n_eval`` real images (held out from training) and with a second real set (the
    floor). Returns per-variant per-seed lists ``hf_err``, ``ratio``, ``detect``, ``fd`` (Fréchet distance
    in :class:`RandomFeatures`), ``g_loss``/``d_loss`` (mean of the last 10 % of steps), ``finite``,
    ``resumed_from`` (the step each run resumed at from its checkpoint), plus ``floor`` and ``fd_floor``
    per seed, the last seed's mean profiles and samples, ``segments`` (per run, the processes that trained
    it: step ranges, CPU, kernels, start times; ``common.gan.train_gan``) and ``checkpoints`` (per run, its
    file or None).

    ``n_jobs`` > 1 trains the runs in that many worker processes (spawned, with this process's torch thread
    count); evaluation stays in this process, in the same order, so the results equal the sequential ones. ``checkpoint_dir``
    (relative paths are relative to the repository) makes every run resumable (:func:`run_checkpoint`):
    an interrupted full profile continues where it stopped, and a finished run is only evaluated again.
    """
    from common.diffusion.metrics import frechet_distance_eig as frechet_distance
    from common.gan import generate, latent_bank

    if len(images) < 2 * n_eval + batch_size:
        raise ValueError(f"need at least 2*n_eval + batch_size images, got {len(images)}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    feats = RandomFeatures(seed=0)
    out = {"floor": [], "fd_floor": [], "profiles": {}, "samples": {}, "segments": {}, "checkpoints": {}}
    for v in variants:
        out[v] = {k: [] for k in ("hf_err", "ratio", "detect", "fd", "g_loss", "d_loss", "finite", "resumed_from")}
    runs = [(s, v) for s in range(seed, seed + n_seeds) for v in variants]
    splits = {}
    for s in range(seed, seed + n_seeds):
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(s))
        splits[s] = images[perm[:n_eval]], images[perm[n_eval:2 * n_eval]], images[perm[2 * n_eval:]]
    settings = {"batch_size": batch_size, "z_dim": z_dim, "width": width, "diff_lambda": diff_lambda}
    tasks = []
    for s, v in runs:
        train = splits[s][2]
        ckpt = run_checkpoint(checkpoint_dir, train, v, s, steps, **settings) if checkpoint_dir is not None else None
        tasks.append(((train, v, s, steps), {**settings, "checkpoint": ckpt}))
    pool = None
    if n_jobs > 1:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(torch.get_num_threads(), os.getpid()))
        trained = pool.map(_train_variant_task, tasks)
    else:
        trained = map(_train_variant_task, tasks)
    if progress:
        from tqdm.auto import tqdm
        trained = tqdm(trained, total=len(tasks), desc="GAN runs")
    try:
        for (s, v), (_, task_kwargs), (hist, g) in zip(runs, tasks, trained, strict=True):
            eval_a, eval_b, _ = splits[s]
            p_a = spectral_profile(eval_a)
            f_a = feats(eval_a).numpy()
            if v == variants[0]:
                out["floor"].append(high_frequency_error(spectral_profile(eval_b), p_a, top_fraction))
                out["fd_floor"].append(frechet_distance(feats(eval_b).numpy(), f_a))
                out["profiles"]["real"] = p_a.mean(0)
            x = generate(g, latent_bank(n_eval, z_dim, seed=10_000 + s))
            p_g = spectral_profile(x)
            err = high_frequency_error(p_g, p_a, top_fraction)
            tail = max(1, steps // 10)
            r = out[v]
            r["hf_err"].append(err)
            r["ratio"].append(err / out["floor"][-1])
            r["detect"].append(detection_accuracy(p_a, p_g, random_state=s))
            r["fd"].append(frechet_distance(feats(x).numpy(), f_a))
            r["g_loss"].append(float(np.mean(hist["g_loss"][-tail:])))
            r["d_loss"].append(float(np.mean(hist["d_loss"][-tail:])))
            r["finite"].append(bool(np.isfinite(hist["g_loss"]).all() and np.isfinite(hist["d_loss"]).all()))
            r["resumed_from"].append(hist["resumed_from"])
            out["segments"][f"{v}/seed{s}"] = hist["segments"]
            out["checkpoints"][f"{v}/seed{s}"] = task_kwargs["checkpoint"]
            out["profiles"][v] = p_g.mean(0)
            out["samples"][v] = x[:16]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out


def official_gradient_identity(generator: nn.Module, discriminator: nn.Module, x_real: torch.Tensor,
                               z: torch.Tensor, lam: float = OFFICIAL_LAMBDA) -> tuple[float, float]:
    """Check that the official term only rescales the adversarial gradient.

    Returns ``(measured, predicted)``: the relative change ``||∇(g + term) - ∇g|| / ||∇g||`` of G's
    gradient and the prediction ``lam * BCE``. They agree when the term is not differentiable in G.
    The models and inputs are cast to float64 (a float32 difference of two gradients that differ by
    1e-5 relative would carry about 1 % rounding error).
    """
    generator, discriminator = generator.double(), discriminator.double()
    x_real, z = x_real.double(), z.double()
    params = [p for p in generator.parameters() if p.requires_grad]
    x_fake = generator(z)
    g_loss = F.softplus(-discriminator(x_fake)).mean()
    grad_g = torch.autograd.grad(g_loss, params, retain_graph=True)
    term = official_spectral_term(x_fake, x_real, g_loss, lam)
    grad_t = torch.autograd.grad(g_loss + term, params)
    num = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grad_t, grad_g, strict=True)))
    den = torch.sqrt(sum((b ** 2).sum() for b in grad_g))
    n = min(len(x_fake), len(x_real))
    bce = F.binary_cross_entropy(torch.from_numpy(spectral_profile(x_real[:n].detach())).float(),
                                 torch.from_numpy(spectral_profile(x_fake[:n].detach())).float())
    return float(num / den), float(lam * bce)


def print_training_record(res: dict) -> None:
    """Print, per GAN run of :func:`gan_experiment`, the processes that trained it (steps, CPU, torch's CPU
    capability and threads, versions, start time) and its checkpoint's sha256: where its networks come from."""
    import hashlib

    for run, segments in res["segments"].items():
        path = res["checkpoints"].get(run)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else "-"
        trained = "; ".join(f"steps {seg['from']}-{seg['to']} on {seg['cpu']} ({seg['capability']}, "
                            f"{seg['threads']} thread(s), torch {seg['torch']}, numpy {seg['numpy']}, {seg['started']})"
                            for seg in segments)
        print(f"{run:22s} checkpoint {digest}  {trained}")
