"""Turbo-Muon (AOL-preconditioned Newton–Schulz)."""
