"""Offline data loaders and small models."""

import pytest
import torch

from common.smallnets import (
    MLP,
    SmallCNN1d,
    SmallCNN2d,
    evaluate,
    load_digits_data,
    load_mnist1d_data,
    train_classifier,
)


def test_digits_shapes_and_binary_subset():
    data = load_digits_data(random_state=0)
    assert data.X_train.shape[1] == 64 and data.n_classes == 10
    assert len(data.X_train) + len(data.X_test) == 1797
    assert 0.0 <= float(data.X_train.min()) and float(data.X_train.max()) <= 1.0
    two = load_digits_data(classes=(0, 1), image=True)
    assert two.n_classes == 2 and two.X_train.shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError):
        load_digits_data(test_fraction=1.5)


def test_mlp_trains_deterministically():
    data = load_digits_data(random_state=0)

    def run():
        torch.manual_seed(0)
        model = MLP(64, (32,), 10)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        hist = train_classifier(model, data.X_train, data.y_train, [opt], epochs=3, batch_size=64,
                                generator=torch.Generator().manual_seed(1))
        return hist, evaluate(model, data.X_test, data.y_test)

    (h1, (_, acc1)), (h2, _) = run(), run()
    assert h1 == h2
    assert h1[-1] < h1[0] and acc1 > 0.8


def test_cnns_forward():
    assert SmallCNN2d()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert SmallCNN1d()(torch.zeros(2, 1, 40)).shape == (2, 10)


def test_mnist1d_is_generated_offline():
    pytest.importorskip("mnist1d")
    data = load_mnist1d_data(num_samples=200, random_state=3, channel=True)
    assert data.X_train.shape == (160, 1, 40) and data.X_test.shape == (40, 1, 40)
    again = load_mnist1d_data(num_samples=200, random_state=3, channel=True)
    assert torch.equal(data.X_train, again.X_train)
