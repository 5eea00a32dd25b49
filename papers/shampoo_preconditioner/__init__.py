"""Shampoo's preconditioner."""
