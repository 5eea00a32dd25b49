"""Hubness priors for GAN latent sampling (Liang et al., ICML 2022)."""
