"""Stable CP decomposition of conv kernels."""
