"""Scatterbrain sparse + low-rank attention."""
