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
(``common.mlp_gan.MappingGenerator``), trained with the non-saturating loss and StyleGAN2's R1 penalty
(γ = 10, Adam; ``common.gan.train_gan`` has no R1 and collapses here) by the zoo notebook
``common/zoo/notebooks/train_digits_gan.ipynb``: the zoo checkpoints ``digits_gan_seed{0,1,2}`` are only loaded
(sha256-verified, :func:`load_digits_gan`) by the ci notebook (and by the full one before issue 17). The full
profile uses the 16×16 member of the family (:func:`gan_family` ``"dcgan16"``): a DCGAN behind the same kind of
mapping MLP (``common.dcgan16.MappingDCGenerator``, zoo checkpoints ``digits16_gan_seed{0,1,2}``, zoo notebook
``train_digits16_gan.ipynb``), trained on the 16×16 digits; its samples are scored on their least-squares 8×8
preimages ``common.digits16.to_digits8`` by the same classifier.
Quality and diversity are precision / recall / density / coverage (``common.gen_metrics.prdc``) of the
zoo digits classifier's 32-D features against the 1500 real training digits, and the classifier's
mean confidence (max softmax) on the generated digits.
"""

from __future__ import annotations

import numpy as np
import torch

from common.gen_metrics import hubness_skewness, k_occurrence
from common.mlp_gan import MappingGenerator, image_quality, load_digits_gan  # noqa: F401  (load_digits_gan re-exported)
from papers.hubness_gan.gaussian import central_clustering, gaussian_hubness  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------------------- GAN families
GAN_FAMILIES = ("mlp8", "dcgan16")


def gan_family(name: str) -> dict:
    """What part B needs from a GAN family: ``load(seed)`` (a zoo generator, sha256-verified), ``quality`` (the
    image scorer for :func:`compare_samplers`) and ``to_images`` (``(N, side, side)`` in [0, 1] for plots).

    * ``mlp8``: the 8×8 mapping-MLP GANs ``digits_gan_seed<s>`` (``common.mlp_gan``), scored directly;
    * ``dcgan16``: the 16×16 mapping DCGANs ``digits16_gan_seed<s>`` (``common.dcgan16``), scored on their
      least-squares 8×8 preimages ``common.digits16.to_digits8`` by the same 8×8 classifier.
    """
    if name == "mlp8":
        from common.diffusion.data import to_images

        return {"load": load_digits_gan, "quality": image_quality, "to_images": to_images}
    if name == "dcgan16":
        from common.dcgan16 import image_quality16, load_digits16_gan
        from common.digits16 import to_images16

        return {"load": load_digits16_gan, "quality": image_quality16, "to_images": to_images16}
    raise ValueError(f"gan_family must be one of {GAN_FAMILIES}, got {name!r}")


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
def compare_samplers(gen: MappingGenerator, classifier, real_features: np.ndarray, n_latents: int,
                     bank_seed: int, k: int = 5, fraction: float = 0.1, psis=(0.5, 0.7, 0.9),
                     paper_t: int = 50, prdc_k: int = 5, quality=None) -> dict:
    """One latent bank: hubs in w space vs random latents of equal count vs truncated random latents.

    Returns per-method metric dicts (``hubs``, ``random``, ``trunc_0.5``, ...) plus ``t``, ``n_hubs``,
    the hubs' and the bank's central clustering in w space, and the count the paper's fixed ``paper_t``
    would select (self-inclusive counting, as in the official code). ``gen`` is any generator with
    ``z_dim``, ``mapping`` and ``synthesis`` (the 8×8 MLP GAN or the 16×16 DCGAN, :func:`gan_family`);
    ``quality(images, classifier, real_features, k)`` scores the images (None: :func:`image_quality`, the 8×8 one).
    """
    image_quality_ = image_quality if quality is None else quality
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
    out["hubs"] = image_quality_(gen.synthesis(w[torch.from_numpy(hubs)]), classifier, real_features, prdc_k)
    out["random"] = image_quality_(gen.synthesis(w[rand]), classifier, real_features, prdc_k)
    for psi in psis:
        out[f"trunc_{psi}"] = image_quality_(gen.synthesis(truncate(w[rand], w_mean, psi)), classifier,
                                            real_features, prdc_k)
    return out


def recall_at_matched_precision(hub_precision: float, trunc_precision, trunc_recall) -> float:
    """Truncation's recall at the hubs' precision, linearly interpolated along the ψ curve (clipped at its ends)."""
    p, r = np.asarray(trunc_precision, dtype=float), np.asarray(trunc_recall, dtype=float)
    order = np.argsort(p)
    return float(np.interp(hub_precision, p[order], r[order]))


def best_recall_at_precision(hub_precision: float, trunc_precision, trunc_recall, tol: float = 0.01) -> float:
    r"""Truncation's best recall among its own points as sharp as the hubs (no interpolation, no clipping).

    With :math:`p^* = \min(p_\text{hubs}, \max_\psi p_\psi)` (the hubs' precision, or the sharpest point of the
    curve when the hubs lie above it), returns :math:`\max \{ r_\psi : p_\psi \ge p^* - \text{tol} \}`: the
    most diverse ψ whose precision reaches the matchable one up to ``tol``. The set is never empty (the curve's
    sharpest point belongs to it). Unlike :func:`recall_at_matched_precision` it never moves along a
    non-monotone curve towards a point that is both less sharp and less diverse (ψ = 0.5 against ψ = 0.7).
    """
    p, r = np.asarray(trunc_precision, dtype=float), np.asarray(trunc_recall, dtype=float)
    if p.shape != r.shape or p.ndim != 1 or p.size == 0:
        raise ValueError(f"need equal-length non-empty 1-D precision and recall, got {p.shape} and {r.shape}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    target = min(float(hub_precision), float(p.max()))
    return float(r[p >= target - tol].max())
