"""Independent tasks (trainings, evaluations) in worker processes, with results equal to a sequential run's.

:func:`process_map` maps a picklable top-level function over tasks and yields the results **in task order**.
With ``n_jobs`` > 1 the tasks run in that many processes started with ``spawn`` (no forked torch state), each
with the caller's torch thread count, so every task computes what it would have computed in the caller (the
same kernels and reduction orders for a given thread count); a worker exits when its parent dies, so no orphan
keeps training after an interrupted notebook. ``n_jobs`` = 1 runs the tasks in this process, lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

__all__ = ["process_map"]


def _init_worker(threads: int, parent: int) -> None:
    """Take the parent's torch thread count; exit as soon as the parent is gone."""
    import os
    import threading
    import time

    torch.set_num_threads(threads)

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def process_map(fn: Callable, tasks: Iterable, n_jobs: int = 1, progress: bool = False,
                desc: str | None = None) -> Iterator:
    """Yield ``fn(task)`` for every task, in order; ``n_jobs`` worker processes (see the module docstring).

    ``fn`` must be importable by name (a module-level function) and tasks and results picklable when
    ``n_jobs`` > 1. An exception in a task is raised here, at that task's place in the order."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    tasks = list(tasks)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=desc)
    if n_jobs == 1:
        for task in tasks:
            yield fn(task)
            if progress:
                bar.update()
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(torch.get_num_threads(), os.getpid())) as pool:
            for result in pool.map(fn, tasks):
                yield result
                if progress:
                    bar.update()
    if progress:
        bar.close()
