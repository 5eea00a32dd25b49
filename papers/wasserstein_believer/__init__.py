"""Wasserstein Belief Updater."""
