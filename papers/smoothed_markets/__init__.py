"""Smoothed markets for first-order equilibrium learning."""
