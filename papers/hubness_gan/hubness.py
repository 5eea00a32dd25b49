r"""Hubness priors for GAN latent sampling (Liang, Wu, Lai & Qin, ICML 2022), at digits scale.

**Hubness** (Radovanović et al. 2010). Draw s latents, build the directed k-NN graph among them and count
for each latent how often it is somebody's neighbour, the k-occurrence :math:`N_k` (column sums of the
graph; ``common.gen_metrics.k_occurrence``). In high dimension the distribution of :math:`N_k` is
right-skewed: a few *hubs* are neighbours of many points, and they lie close to the data mean ("central
clustering"), because a point near the mean is, on average, closer to everybody.

**Method** (paper Sec. 4, the official Colab ``getK_Occ``/``getRecorder``). Sample s latents
:math:`z \sim N(0, I)`, map them to :math:`w = f(z)` with the generator's mapping network, compute
:math:`N_k(w)` with k = 5 among the s latents, keep the *hubs* :math:`\{w : N_k(w) \ge t\}` (the notebook
uses s = 10 000, t = 50) and synthesise images from them only. The selection happens before synthesis
(a priori), in contrast with rejection sampling on the images.

**Baselines.** Random sampling (equal count, the same bank) and the truncation trick
(Karras et al. 2019; the official ``get_trunca``): :math:`w' = \bar w + \psi (w - \bar w)` with
:math:`\bar w` the mean of the sampled w's. The paper's claim is that truncation is a naive approximation
of the hubs' central clustering, and that hub sampling trades less diversity for the same quality.

**Our GAN.** A small MLP GAN on sklearn's 8×8 digits with a StyleGAN-like mapping MLP
(:class:`MappingGenerator`), trained by :func:`train_digits_gan` (non-saturating loss with StyleGAN2's R1
penalty, γ = 10, Adam; ``common.gan.train_gan`` has no R1 and collapses here) in
``training/train_digits_gan.ipynb``; the three committed checkpoints are only loaded (sha256-verified) by the
ci and full notebooks.
Quality and diversity are precision / recall / density / coverage (``common.gen_metrics.prdc``) of the
zoo digits classifier's 32-D features against the 1500 real training digits, and the classifier's
mean confidence (max softmax) on the generated digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.gen_metrics import hubness_skewness, k_occurrence, prdc
from papers.hubness_gan.gaussian import central_clustering, gaussian_hubness  # noqa: F401  (re-exported)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


# ----------------------------------------------------------------------------------------- the GAN
class MappingGenerator(nn.Module):
    """z (``z_dim``) → mapping MLP → w (``z_dim``) → synthesis MLP → 64 pixels in [-1, 1] (tanh)."""

    def __init__(self, z_dim: int = 32, mapping_layers: int = 2, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        if z_dim < 1 or mapping_layers < 1 or hidden < 1:
            raise ValueError(f"need positive sizes, got z_dim={z_dim}, mapping_layers={mapping_layers}, hidden={hidden}")
        self.z_dim, self.w_dim = z_dim, z_dim
        layers = []
        for _ in range(mapping_layers):
            layers += [nn.Linear(z_dim, z_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.synthesis = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, out_dim), nn.Tanh(),
        )
        self.config = {"z_dim": z_dim, "mapping_layers": mapping_layers, "hidden": hidden, "out_dim": out_dim}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


class MLPDiscriminator(nn.Module):
    """64 pixels → two LeakyReLU(0.2) layers → one logit."""

    def __init__(self, in_dim: int = 64, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).flatten()


def train_digits_gan(seed: int, steps: int = 6000, batch_size: int = 64, lr: float = 2e-4, z_dim: int = 32,
                     hidden: int = 128, r1_gamma: float = 10.0, progress: bool = False) -> tuple[MappingGenerator, dict]:
    r"""Train the mapping-MLP GAN on the 1500 training digits; returns (G in eval mode, history).

    Non-saturating loss (Goodfellow et al. 2014) with the R1 penalty of StyleGAN2 on real data,
    :math:`L_D = E[\mathrm{softplus}(-D(x))] + E[\mathrm{softplus}(D(G(z)))] + \tfrac{\gamma}{2}
    E\lVert \nabla_x D(x)\rVert^2`, :math:`L_G = E[\mathrm{softplus}(-D(G(z)))]`; Adam (0.5, 0.99),
    one D and one G step per iteration. Seeded: ``torch.manual_seed(seed)`` draws the initialisation and a
    ``torch.Generator`` the batches and latents.
    """
    import torch.nn.functional as F

    from common.diffusion.data import load_digits_split
    from common.harness.seeding import seeded_training

    if steps < 1 or batch_size < 2 or r1_gamma < 0:
        raise ValueError(f"need steps >= 1, batch_size >= 2, r1_gamma >= 0, got {steps}, {batch_size}, {r1_gamma}")
    rng = seeded_training(seed)
    gen, disc = MappingGenerator(z_dim=z_dim, hidden=hidden), MLPDiscriminator(hidden=hidden)
    data = load_digits_split().x_train
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))
    hist = {"d_loss": [], "g_loss": [], "r1": []}
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="GAN", leave=False)
    for _ in it:
        x = data[torch.randint(len(data), (batch_size,), generator=rng)].requires_grad_(True)
        z = torch.randn(batch_size, z_dim, generator=rng)
        d_real = disc(x)
        grad, = torch.autograd.grad(d_real.sum(), x, create_graph=True)
        r1 = grad.square().sum(dim=1).mean()
        d_loss = F.softplus(-d_real).mean() + F.softplus(disc(gen(z).detach())).mean() + 0.5 * r1_gamma * r1
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        z = torch.randn(batch_size, z_dim, generator=rng)
        g_loss = F.softplus(-disc(gen(z))).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        hist["d_loss"].append(float(d_loss.detach()))
        hist["g_loss"].append(float(g_loss.detach()))
        hist["r1"].append(float(r1.detach()))
    gen.eval()
    gen.requires_grad_(False)
    return gen, hist


def save_generator(gen: MappingGenerator, name: str, manifest: dict, directory: Path = CHECKPOINT_DIR) -> Path:
    """Save the generator as ``<name>.safetensors`` + ``<name>.json`` (with the file's sha256)."""
    from common.zoo import save_checkpoint

    tensors = {key: val.detach().contiguous() for key, val in gen.state_dict().items()}
    return save_checkpoint(name, tensors, {"config": gen.config, **manifest}, directory=directory)


def load_generator(name: str, directory: Path = CHECKPOINT_DIR) -> MappingGenerator:
    """Load a committed generator (sha256 verified by ``common.zoo.load_checkpoint``)."""
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(name, directory)
    gen = MappingGenerator(**manifest["config"])
    gen.load_state_dict(tensors)
    gen.eval()
    gen.requires_grad_(False)
    gen.manifest = manifest
    return gen


# ----------------------------------------------------------------------------------------- sampling
def hub_threshold(n_k, fraction: float) -> int:
    """The smallest integer t with at most ``fraction`` of the latents at :math:`N_k \\ge t`."""
    n_k = np.asarray(n_k)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    for t in range(int(n_k.min()), int(n_k.max()) + 2):
        if np.mean(n_k >= t) <= fraction:
            return t
    raise AssertionError("unreachable: N_k >= max + 1 selects nothing")


def select_hubs(n_k, t: int) -> np.ndarray:
    """Indices of the hub latents :math:`N_k \\ge t` (the official ``getRecorder``)."""
    return np.flatnonzero(np.asarray(n_k) >= t)


def truncate(w: torch.Tensor, w_mean: torch.Tensor, psi: float) -> torch.Tensor:
    r"""The truncation trick :math:`\bar w + \psi (w - \bar w)` (official ``get_trunca``)."""
    if not 0 <= psi <= 1:
        raise ValueError(f"psi must be in [0, 1], got {psi}")
    return w_mean + psi * (w - w_mean)


@torch.no_grad()
def image_quality(images: torch.Tensor, classifier, real_features: np.ndarray, k: int = 5) -> dict:
    """PRDC and the Fréchet distance of the classifier features against the real ones, and the mean
    max-softmax confidence of the classifier on the images."""
    from common.diffusion.metrics import frechet_distance

    h = classifier.features(images)
    feats = h.double().numpy()
    conf = torch.softmax(classifier.head(h), dim=1).max(dim=1).values
    return {**prdc(real_features, feats, k=k), "confidence": float(conf.mean()),
            "fd": float(frechet_distance(real_features, feats))}


@torch.no_grad()
def compare_samplers(gen: MappingGenerator, classifier, real_features: np.ndarray, n_latents: int,
                     bank_seed: int, k: int = 5, fraction: float = 0.1, psis=(0.5, 0.7, 0.9),
                     paper_t: int = 50, prdc_k: int = 5) -> dict:
    """One latent bank: hubs in w space vs random latents of equal count vs truncated random latents.

    Returns per-method metric dicts (``hubs``, ``random``, ``trunc_0.5``, ...) plus ``t``, ``n_hubs``,
    the hubs' and the bank's central clustering in w space, and the count the paper's fixed ``paper_t``
    would select (self-inclusive counting, as in the official code).
    """
    z = torch.randn(n_latents, gen.z_dim, generator=torch.Generator().manual_seed(bank_seed))
    w = gen.mapping(z)
    n_k = k_occurrence(w.double().numpy(), k)
    t = hub_threshold(n_k, fraction)
    hubs = select_hubs(n_k, t)
    m = len(hubs)
    rand = torch.from_numpy(np.random.default_rng(bank_seed).permutation(n_latents)[:m])
    w_mean = w.mean(dim=0)
    out = {"t": t, "n_hubs": m, "n_k": n_k, "nk_skewness": hubness_skewness(n_k),
           "paper_t_count": int(np.sum(1 + k_occurrence(w.double().numpy(), k - 1) >= paper_t)),
           "w_clustering": central_clustering(w.double().numpy(), n_k)}
    out["hubs"] = image_quality(gen.synthesis(w[torch.from_numpy(hubs)]), classifier, real_features, prdc_k)
    out["random"] = image_quality(gen.synthesis(w[rand]), classifier, real_features, prdc_k)
    for psi in psis:
        out[f"trunc_{psi}"] = image_quality(gen.synthesis(truncate(w[rand], w_mean, psi)), classifier,
                                            real_features, prdc_k)
    return out


def recall_at_matched_precision(hub_precision: float, trunc_precision, trunc_recall) -> float:
    """Truncation's recall at the hubs' precision, linearly interpolated along the ψ curve (clipped at its ends)."""
    p, r = np.asarray(trunc_precision, dtype=float), np.asarray(trunc_recall, dtype=float)
    order = np.argsort(p)
    return float(np.interp(hub_precision, p[order], r[order]))
