"""NADO controllable generation."""
