"""Muon optimizer: update rule, shape scaling, backends."""

import pytest
import torch

from common.muon import Muon, muon_update, resolve_backend, split_muon_params
from common.newton_schulz import polar_svd
from common.smallnets import MLP


def test_update_is_scaled_orthogonal_matrix():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(64, 16, generator=g)
    momentum = torch.zeros_like(grad)
    exact = lambda U: polar_svd(U).float()  # noqa: E731
    update = muon_update(grad, momentum, beta=0.9, nesterov=True, orthogonalize=exact)
    assert torch.allclose(momentum, 0.1 * grad)
    # Nesterov direction grad.lerp(m, beta) is a positive multiple of grad here -> same polar factor
    assert torch.allclose(update, polar_svd(grad).float() * 2.0, atol=1e-5)  # sqrt(64/16) = 2


def test_optimizer_step_matches_manual_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 12))
    w0 = w.detach().clone()
    w.grad = torch.randn(8, 12)
    opt = Muon([w], lr=0.1, momentum=0.95, weight_decay=0.01, backend="turbo")
    opt.step()
    buf = torch.zeros_like(w0)
    expected = w0 * (1 - 0.1 * 0.01) - 0.1 * muon_update(w.grad, buf, 0.95, True, resolve_backend("turbo"))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert "momentum_buffer" in opt.state[w]


def test_conv_weights_are_flattened():
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    w.grad = torch.randn_like(w)
    Muon([w], backend="muon").step()
    assert w.shape == (4, 3, 3, 3)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.randn(3))])
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], backend="nope")
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], lr=-1)


def test_split_params_sends_head_and_biases_to_adam():
    model = MLP(64, (16,), 10)
    muon, other = split_muon_params(model, head="layers.1")
    assert [p.shape for p in muon] == [torch.Size([16, 64])]
    assert len(other) == 3
