"""Stochastic model-based minimisation."""
