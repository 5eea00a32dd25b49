"""Neural light-curve approximation (Fulu)."""
