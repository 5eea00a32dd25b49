"""Test-wide set-up: no network, one thread per worker (pytest-xdist runs two)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from common.harness import netguard  # noqa: E402

netguard.install()
