"""Divide-and-Conquer Fusion."""
