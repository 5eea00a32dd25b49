import numpy as np
import pytest
import torch

from common.game_metrics import (
    cce_exploitability,
    ce_exploitability,
    nash_exploitability,
    nash_regrets,
    social_welfare,
)

PENNIES_A = np.array([[1.0, -1.0], [-1.0, 1.0]])
PD_A = np.array([[3.0, 0.0], [5.0, 1.0]])  # actions: cooperate, defect
COORD = np.eye(3)


def test_matching_pennies_uniform_is_nash():
    x = y = np.full(2, 0.5)
    assert float(nash_exploitability(PENNIES_A, -PENNIES_A, x, y)) == pytest.approx(0.0, abs=1e-12)


def test_matching_pennies_pure_is_exploitable():
    r1, r2 = nash_regrets(PENNIES_A, -PENNIES_A, [1.0, 0.0], [1.0, 0.0])
    assert float(r1) == pytest.approx(0.0) and float(r2) == pytest.approx(2.0)
    assert float(nash_exploitability(PENNIES_A, -PENNIES_A, [1, 0.0], [1, 0.0], reduction="sum")) == pytest.approx(2.0)


def test_prisoners_dilemma_defect_is_unique_nash():
    d = [0.0, 1.0]
    c = [1.0, 0.0]
    assert float(nash_exploitability(PD_A, PD_A.T, d, d)) == pytest.approx(0.0)
    assert float(nash_exploitability(PD_A, PD_A.T, c, c)) == pytest.approx(2.0)  # 5 - 3


def test_coordination_game_equilibria():
    for k in range(3):
        e = np.eye(3)[k]
        assert float(nash_exploitability(COORD, COORD, e, e)) == pytest.approx(0.0)
    u = np.full(3, 1 / 3)
    assert float(nash_exploitability(COORD, COORD, u, u)) == pytest.approx(0.0)
    assert float(social_welfare(COORD, COORD, np.outer(u, u))) == pytest.approx(2 / 3)
    e0, e1 = np.eye(3)[0], np.eye(3)[1]
    assert float(nash_exploitability(COORD, COORD, e0, e1)) == pytest.approx(1.0)


def test_correlated_equilibria_known_values():
    # Uniform over the diagonal of the coordination game is a CE and a CCE.
    pi = np.eye(3) / 3
    assert float(ce_exploitability(COORD, COORD, pi)) == pytest.approx(0.0)
    assert float(cce_exploitability(COORD, COORD, pi)) == pytest.approx(0.0)
    # Mutual cooperation in the PD: the CE regret equals the CCE one for a point mass.
    pi = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert float(ce_exploitability(PD_A, PD_A.T, pi)) == pytest.approx(2.0)
    assert float(cce_exploitability(PD_A, PD_A.T, pi)) == pytest.approx(2.0)


def test_ce_at_least_cce_and_product_cce_equals_nash():
    g = torch.Generator().manual_seed(0)
    A, B = torch.rand(50, 4, 3, generator=g, dtype=torch.float64), torch.rand(50, 4, 3, generator=g, dtype=torch.float64)
    pi = torch.rand(50, 4, 3, generator=g, dtype=torch.float64)
    pi = pi / pi.sum((-1, -2), keepdim=True)
    assert torch.all(ce_exploitability(A, B, pi) >= cce_exploitability(A, B, pi) - 1e-12)
    x, y = torch.softmax(torch.randn(50, 4, generator=g, dtype=torch.float64), -1), torch.softmax(
        torch.randn(50, 3, generator=g, dtype=torch.float64), -1
    )
    prod = x.unsqueeze(-1) * y.unsqueeze(-2)
    assert torch.allclose(cce_exploitability(A, B, prod), nash_exploitability(A, B, x, y))


def test_exploitability_is_differentiable():
    A = torch.rand(2, 3, dtype=torch.float64)
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.zeros(3, dtype=torch.float64), -1)
    x = torch.softmax(logits[:2], -1)
    nash_exploitability(A, -A, x, y).backward()
    assert logits.grad is not None


def test_rejects_bad_shapes_and_reduction():
    with pytest.raises(ValueError):
        nash_exploitability(np.eye(2), np.eye(3), [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError):
        nash_exploitability(np.eye(2), np.eye(2), [1.0, 0, 0], [0.5, 0.5])
    with pytest.raises(ValueError):
        cce_exploitability(np.eye(2), np.eye(2), np.eye(3))
    with pytest.raises(ValueError):
        nash_exploitability(np.eye(2), np.eye(2), [0.5, 0.5], [0.5, 0.5], reduction="mean")
