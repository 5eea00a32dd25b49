"""The repository's timing harness: fair, repeatable wall-clock comparisons.

Every speed claim in the repository is measured with :func:`compare`:

- identical inputs for every method (the caller closes over them);
- ``warmup`` untimed calls per method first (JIT compilation, caches, allocator);
- ``repeats`` timed rounds; the order of the methods is rotated every round, so no
  method always runs right after another one (thermal and cache effects even out);
- a fixed thread count while timing (``threads``; torch and BLAS via threadpoolctl
  when available), restored afterwards;
- on CUDA, ``torch.cuda.synchronize()`` before each clock read;
- medians and inter-quartile ranges, not means; ratios are reported with the spread of
  per-round ratios, which cancels slow machine-wide phases that hit both methods.

Timings are wall-clock and machine-dependent: record them with ``volatile=True`` and
keep hard assertions for deterministic quantities (FLOPs, iteration counts).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Per-round seconds of one method."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        q = statistics.quantiles(self.seconds, n=4) if len(self.seconds) >= 2 else [self.median] * 3
        return q[2] - q[0]


@dataclass
class Comparison:
    timings: dict[str, Timing]
    threads: int | None
    config: dict

    def ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of time(slow) / time(fast)."""
        return statistics.median(self.round_ratios(slow, fast))

    def round_ratios(self, slow: str, fast: str) -> list[float]:
        return [a / b for a, b in zip(self.timings[slow].seconds, self.timings[fast].seconds, strict=True)]

    def ratio_iqr(self, slow: str, fast: str) -> float:
        ratios = self.round_ratios(slow, fast)
        if len(ratios) < 2:
            return 0.0
        q = statistics.quantiles(ratios, n=4)
        return q[2] - q[0]

    def table(self) -> str:
        lines = [f"{'method':<24} {'median [ms]':>12} {'IQR [ms]':>10}"]
        for t in self.timings.values():
            lines.append(f"{t.name:<24} {1e3 * t.median:>12.3f} {1e3 * t.iqr:>10.3f}")
        return "\n".join(lines)


@contextlib.contextmanager
def fixed_threads(threads: int | None):
    """Fix torch's and the BLAS libraries' thread counts inside the block."""
    if threads is None:
        yield
        return
    torch = _torch()
    previous = torch.get_num_threads() if torch is not None else None
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads)
    except ImportError:
        pass
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch is not None and previous is not None:
            torch.set_num_threads(previous)
        if limiter is not None:
            limiter.unregister()


def _torch():
    import sys

    return sys.modules.get("torch")


def _sync() -> None:
    torch = _torch()
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def blas_config() -> dict:
    """Which BLAS/OpenMP libraries and thread counts are in use (for provenance)."""
    config: dict = {}
    try:
        from threadpoolctl import threadpool_info

        config["threadpools"] = [{k: info.get(k) for k in ("internal_api", "num_threads", "version")}
                                 for info in threadpool_info()]
    except ImportError:
        pass
    torch = _torch()
    if torch is not None:
        config["torch_threads"] = torch.get_num_threads()
        config["torch_parallel"] = torch.__config__.parallel_info().splitlines()[:3]
    return config


def compare(methods: dict[str, Callable[[], object]], *, repeats: int = 15, warmup: int = 3,
            threads: int | None = None) -> Comparison:
    """Time each zero-argument callable ``repeats`` times after ``warmup`` calls.

    >>> result = compare({"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))}, repeats=5, warmup=1)
    >>> result.ratio("a", "b") > 1
    True
    """
    if not methods:
        raise ValueError("compare() needs at least one method")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    names = list(methods)
    timings = {name: Timing(name) for name in names}
    with fixed_threads(threads):
        for name in names:
            for _ in range(warmup):
                methods[name]()
            _sync()
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                _sync()
                start = time.perf_counter()
                methods[name]()
                _sync()
                timings[name].seconds.append(time.perf_counter() - start)
        config = blas_config()
    return Comparison(timings, threads, config)


def time_call(fn: Callable[[], object], *, repeats: int = 15, warmup: int = 3, threads: int | None = None) -> Timing:
    """Median-able timings of a single callable."""
    return compare({"call": fn}, repeats=repeats, warmup=warmup, threads=threads).timings["call"]
