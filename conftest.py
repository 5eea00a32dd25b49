"""Test-wide set-up: no network, one thread per worker (pytest-xdist runs two)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# MKL and OpenBLAS follow OMP_NUM_THREADS (as they do outside the tests), so `make test-kernels` with
# OMP_NUM_THREADS=2 exercises two BLAS threads where a notebook does not pin its own
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
os.environ.setdefault("MPLBACKEND", "Agg")

from common.harness import netguard  # noqa: E402

netguard.install()
