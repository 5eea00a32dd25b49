"""SLAM sub-path consistency distillation."""
