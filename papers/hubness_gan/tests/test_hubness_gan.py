"""Unit tests of papers/hubness_gan/hubness.py: thresholds, truncation, matching, the zoo GANs it loads.

The GAN itself (shapes, seeded training, save/load) is tested in tests/common/test_mlp_gan.py."""

import numpy as np
import pytest
import torch

from papers.hubness_gan import hubness as H


def test_hub_threshold_is_the_smallest_t_with_at_most_the_fraction():
    n_k = np.array([0, 0, 1, 2, 3, 5, 5, 9, 12, 20])
    assert H.hub_threshold(n_k, 0.2) == 10          # N_k >= 10 keeps 2 of 10
    assert H.hub_threshold(n_k, 0.3) == 6           # N_k >= 6 keeps 3; N_k >= 5 would keep 5
    assert H.select_hubs(n_k, 10).tolist() == [8, 9]
    with pytest.raises(ValueError):
        H.hub_threshold(n_k, 1.5)


def test_truncation_moves_towards_the_mean():
    w = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    mean = torch.tensor([1.0, 1.0])
    assert torch.allclose(H.truncate(w, mean, 0.5), torch.tensor([[1.5, 0.5], [0.5, 2.5]]))
    assert torch.equal(H.truncate(w, mean, 1.0), w)
    assert torch.allclose(H.truncate(w, mean, 0.0), mean.expand(2, 2))
    with pytest.raises(ValueError):
        H.truncate(w, mean, 1.5)


def test_recall_at_matched_precision_interpolates_and_clips():
    p, r = [0.4, 0.8, 0.6], [0.5, 0.1, 0.3]         # unsorted curve: recall falls as precision rises
    assert H.recall_at_matched_precision(0.7, p, r) == pytest.approx(0.2)
    assert H.recall_at_matched_precision(0.9, p, r) == pytest.approx(0.1)
    assert H.recall_at_matched_precision(0.1, p, r) == pytest.approx(0.5)


def test_best_recall_at_precision_takes_the_most_diverse_point_as_sharp_as_the_hubs():
    p, r = [0.6, 0.7, 0.757, 0.758], [0.9, 0.8, 0.44, 0.76]   # random, psi 0.9, psi 0.5, psi 0.7 (non-monotone)
    assert H.best_recall_at_precision(0.9, p, r) == pytest.approx(0.76)    # above the curve: psi 0.7, not 0.5
    assert H.best_recall_at_precision(0.9, p, r, tol=0.0) == pytest.approx(0.76)
    assert H.best_recall_at_precision(0.65, p, r) == pytest.approx(0.8)    # inside: psi 0.9 (p 0.7 >= 0.64)
    assert H.best_recall_at_precision(0.5, p, r) == pytest.approx(0.9)
    assert H.best_recall_at_precision(0.8, [0.79, 0.8], [0.7, 0.1], tol=0.01) == pytest.approx(0.7)
    assert H.best_recall_at_precision(0.8, [0.79, 0.8], [0.7, 0.1], tol=0.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        H.best_recall_at_precision(0.5, [0.1, 0.2], [0.3])
    with pytest.raises(ValueError):
        H.best_recall_at_precision(0.5, p, r, tol=-0.1)


def test_central_clustering_on_gaussians_and_an_exact_case():
    out = H.gaussian_hubness(64, 500, 5, random_state=0)
    assert out["spearman"] > 0.5 and out["dist_ratio"] < 1 and out["skewness"] > 0.5
    # N_k exactly decreasing in the distance to the mean: rho = 1
    x = np.array([[0.0], [1.0], [-2.0], [3.0], [-4.0]])
    res = H.central_clustering(x, np.array([5, 4, 3, 2, 1]))
    assert res["spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_zoo_gans_load_with_their_sha256(seed):
    # the GANs come from the model zoo (common.mlp_gan, zoo notebook train_digits_gan); load_digits_gan verifies
    # the sha256 of the safetensors against the manifest (common.zoo.load_checkpoint)
    g = H.load_digits_gan(seed)
    assert g.manifest["name"] == f"digits_gan_seed{seed}" and g.manifest["notebook"] == "train_digits_gan.ipynb"
    assert g.manifest["training"]["seed"] == seed and g.manifest["training"]["r1_gamma"] == 10.0
    assert g.config == {"z_dim": 32, "mapping_layers": 2, "hidden": 128, "out_dim": 64}
    x = g(torch.zeros(2, 32))
    assert x.shape == (2, 64) and torch.isfinite(x).all() and not g.training
    assert torch.equal(g.synthesis(g.mapping(x.new_ones(1, 32))), g(x.new_ones(1, 32)))


def test_gan_families():
    """Part B runs on the 8×8 MLP GANs (default, ci) or the 16×16 DCGANs (full); both give w-space generators."""
    from common.dcgan16 import image_quality16
    from common.mlp_gan import image_quality

    fam = H.gan_family("mlp8")
    assert fam["load"] is H.load_digits_gan and fam["quality"] is image_quality
    assert fam["to_images"](torch.zeros(2, 64)).shape == (2, 8, 8)
    fam16 = H.gan_family("dcgan16")
    assert fam16["quality"] is image_quality16 and fam16["to_images"](torch.zeros(2, 256)).shape == (2, 16, 16)
    with pytest.raises(ValueError):
        H.gan_family("stylegan2")


def test_compare_samplers_runs_on_a_16x16_generator():
    """compare_samplers with the 16×16 scorer: every method scored, hubs within the fraction (a tiny untrained G)."""
    from common.dcgan16 import MappingDCGenerator, image_quality16
    from common.diffusion.data import load_digits_split
    from common.diffusion.metrics import DigitsFeatures

    torch.manual_seed(0)
    gen = MappingDCGenerator(z_dim=8, width=4).eval()
    clf = DigitsFeatures.load().net
    real = clf.features(load_digits_split().x_train[:300]).double().numpy()
    out = H.compare_samplers(gen, clf, real, n_latents=400, bank_seed=1, quality=image_quality16, psis=(0.5,))
    assert out["n_hubs"] <= 40 and set(out["hubs"]) == {"precision", "recall", "density", "coverage", "confidence", "fd"}
    assert set(out) >= {"hubs", "random", "trunc_0.5", "w_clustering", "t"}
