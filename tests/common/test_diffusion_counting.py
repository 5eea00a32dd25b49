"""CallCounter (common.diffusion.counting): per-sample network calls, outputs unchanged."""

import pytest
import torch

from common.diffusion import ddim, dpm_solver_pp_2m, load_digits_eps, time_grid
from common.diffusion.counting import CallCounter


@pytest.fixture(scope="module")
def model():
    return load_digits_eps("ci")


def test_call_counter_counts_each_sample_and_passes_the_labels(model):
    x = torch.randn(12, 64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(12) % 10
    ids = torch.arange(12)
    counter = CallCounter(model, y, 12)
    ts = time_grid(7, "uniform_t")
    with torch.no_grad():
        for sampler in (ddim, dpm_solver_pp_2m):
            assert torch.equal(sampler(counter, x, ts, ids), sampler(model, x, ts, y))  # true labels reach the model
            assert torch.equal(counter.take(), torch.full((12,), 7))
        # a sampler that evaluates a subset of rows: only those samples are charged
        rows = torch.tensor([0, 3, 3, 11])
        out = counter.eps(x[rows], 0.5, ids[rows])
        assert torch.equal(out, model.eps(x[rows], 0.5, y[rows]))
    counts = counter.take()
    assert counts.tolist() == [1, 0, 0, 2] + [0] * 7 + [1] and counter.nfe == 15
    assert torch.equal(counter.take(), torch.zeros(12, dtype=torch.long))  # take() resets
    assert counter.schedule is model.schedule
    with pytest.raises(ValueError):
        counter.eps(x[:3], 0.5, ids[:2])


def test_call_counter_without_labels(model):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    counter = CallCounter(model, None, 4)
    with torch.no_grad():
        assert torch.equal(counter.eps(x, 0.3, torch.arange(4)), model.eps(x, 0.3, None))
    assert counter.take().tolist() == [1, 1, 1, 1]
