"""OLSS learned schedulers."""
