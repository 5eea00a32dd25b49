"""Up-convolution spectral artefacts."""
