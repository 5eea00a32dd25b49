"""Convex two-layer ReLU training (ADMM)."""
