"""Transformers for lot-sizing MIPs."""
