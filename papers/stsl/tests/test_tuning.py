"""The step-size tuning rule (``experiments.tune_step_size``): the fixed grid and the widening rule, on a fake sampler."""

import math

import pytest
import torch

from papers.stsl import experiments

GRID = [0.1, 0.3, 1.0, 3.0]


@pytest.fixture
def fake_psnr(monkeypatch):
    """run_digits replaced by a PSNR curve in ζ (peak at ``peak``; NaN at and beyond ``nan_from``); records calls."""
    state = {"peak": 1.0, "nan_from": math.inf, "calls": []}

    def run_digits(model, vae, operator, x, sigma_y, seed, methods):
        zeta = methods["m"][2]["step_size"]
        state["calls"].append(zeta)
        value = float("nan") if zeta >= state["nan_from"] else -math.log(zeta / state["peak"]) ** 2
        return {"m": torch.full((4,), value, dtype=torch.float64)}

    monkeypatch.setattr(experiments, "run_digits", run_digits)
    return state


def tune(max_widen):
    return experiments.tune_step_size(None, None, None, None, 0.05, "stsl", 25, GRID, max_widen=max_widen)


def test_fixed_grid_is_the_default(fake_psnr):
    fake_psnr["peak"] = 20.0
    best, scores = tune(0)
    assert best == 3.0 and list(scores) == GRID  # at the grid's top, nothing else tried


def test_widening_walks_up_until_the_best_is_interior(fake_psnr):
    fake_psnr["peak"] = 20.0
    best, scores = tune(3)
    assert best == pytest.approx(27.0)  # 9 then 27 improve, 81 does not: 27 is interior
    assert list(scores) == pytest.approx([*GRID, 9.0, 27.0, 81.0])


def test_widening_walks_down_and_respects_its_cap(fake_psnr):
    fake_psnr["peak"] = 0.001
    best, scores = tune(2)
    assert best == pytest.approx(0.1 / 9) and len(scores) == len(GRID) + 2  # still at the edge: the cap stops it


def test_an_interior_optimum_tries_nothing_more(fake_psnr):
    fake_psnr["peak"] = 0.9
    best, scores = tune(3)
    assert best == 1.0 and list(scores) == GRID


def test_a_diverged_run_counts_as_the_worst(fake_psnr):
    fake_psnr["peak"], fake_psnr["nan_from"] = 20.0, 9.0
    best, scores = tune(3)
    assert best == 3.0 and scores[9.0] == -math.inf and len(scores) == len(GRID) + 1


def test_validation():
    with pytest.raises(ValueError, match="max_widen"):
        tune(-1)
