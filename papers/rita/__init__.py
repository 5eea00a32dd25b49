"""RITA group attention."""
