"""STSL second-order Tweedie inverse problems."""
