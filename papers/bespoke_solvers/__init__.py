"""Bespoke solvers for flow models."""
