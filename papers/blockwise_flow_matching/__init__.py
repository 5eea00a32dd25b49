"""Blockwise Flow Matching."""
