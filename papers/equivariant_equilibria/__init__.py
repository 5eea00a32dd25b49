"""Equivariant equilibrium approximators."""
