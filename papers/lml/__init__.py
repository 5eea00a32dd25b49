"""Levenberg-Marquardt-Langevin sampler."""
