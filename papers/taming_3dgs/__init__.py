"""Taming 3DGS budgeted densification."""
