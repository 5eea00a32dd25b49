"""Multiplayer Nash preference optimisation."""
