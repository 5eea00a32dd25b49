import pytest
import torch

from common.zeroth_order import es_gradient, gaussian_log_prob, reinforce_surrogate


def test_es_gradient_matches_quadratic_gradient():
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    theta = torch.zeros(3, dtype=torch.float64)

    def objective(th):
        return -((th - target) ** 2).sum(-1)

    g = torch.Generator().manual_seed(0)
    est = es_gradient(objective, theta, sigma=0.1, population=20000, generator=g)
    assert torch.allclose(est, 2 * target, atol=0.25)
    est2 = es_gradient(objective, theta, sigma=0.1, population=20000, generator=g, antithetic=False)
    assert torch.allclose(est2, 2 * target, atol=0.5)


def test_reinforce_gaussian_mean_gradient():
    # d/dmu E_{a~N(mu,1)}[a] = 1
    mu = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    a = mu.detach() + torch.randn(200000, generator=g, dtype=torch.float64)
    loss = reinforce_surrogate(gaussian_log_prob(a, mu.expand_as(a), 1.0), a)
    loss.backward()
    assert float(-mu.grad) == pytest.approx(1.0, abs=0.02)


def test_errors():
    with pytest.raises(ValueError):
        es_gradient(lambda t: t.sum(-1), torch.zeros(2), sigma=0.0, population=4)
    with pytest.raises(ValueError):
        es_gradient(lambda t: t.sum(-1), torch.zeros(2), sigma=1.0, population=3)
    with pytest.raises(ValueError):
        reinforce_surrogate(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError):
        gaussian_log_prob(torch.zeros(2), torch.zeros(2), 0.0)
