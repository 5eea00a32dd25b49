"""Pseudo-NTK (sum of logits)."""
