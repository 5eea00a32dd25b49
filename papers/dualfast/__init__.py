"""DualFast dual-error sampling."""
