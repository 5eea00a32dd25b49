import pytest
import torch

from common.equivariant import ExchangeableLayer, ExchangeableNet, col_readout, permute_game, row_readout


def test_layer_is_row_and_column_equivariant():
    torch.manual_seed(0)
    net = ExchangeableNet(2, 8, 3, depth=3).double()
    G = torch.randn(5, 2, 4, 3, dtype=torch.float64)
    rp, cp = torch.tensor([2, 0, 3, 1]), torch.tensor([1, 2, 0])
    out = net(G)
    out_perm = net(permute_game(G, rp, cp))
    assert torch.allclose(out_perm, permute_game(out, rp, cp), atol=1e-12)
    assert torch.allclose(row_readout(out_perm), row_readout(out)[..., rp], atol=1e-12)
    assert torch.allclose(col_readout(out_perm), col_readout(out)[..., cp], atol=1e-12)


def test_shapes_and_errors():
    layer = ExchangeableLayer(2, 5)
    assert layer(torch.randn(3, 2, 4, 4)).shape == (3, 5, 4, 4)
    with pytest.raises(ValueError):
        layer(torch.randn(2, 4, 4))
    with pytest.raises(ValueError):
        ExchangeableLayer(0, 3)
    with pytest.raises(ValueError):
        permute_game(torch.randn(2, 3, 3), [0, 0, 1], [0, 1, 2])
