import math

import pytest

from common.workers import process_map


def test_sequential_and_parallel_equal_and_in_order():
    tasks = [5, 3, 8, 1, 0, 7]
    expected = [math.factorial(t) for t in tasks]
    assert list(process_map(math.factorial, tasks)) == expected
    assert list(process_map(math.factorial, tasks, n_jobs=2, progress=True, desc="x")) == expected


def test_errors_surface_at_their_place():
    results = process_map(math.factorial, [3, -1, 4], n_jobs=2)
    assert next(results) == 6
    with pytest.raises(ValueError):
        next(results)
    with pytest.raises(ValueError, match="n_jobs"):
        list(process_map(math.factorial, [1], n_jobs=0))
    with pytest.raises(ValueError, match="n_jobs"):
        list(process_map(math.factorial, [1], n_jobs=True))
