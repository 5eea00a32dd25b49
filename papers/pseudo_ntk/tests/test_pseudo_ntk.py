import numpy as np
import pytest
import torch

from common import ntk
from papers.pseudo_ntk import pseudo_ntk as pn


@pytest.fixture(scope="module")
def split():
    return pn.load_split(12, 8, random_state=0)


def test_split_and_model_are_seeded(split):
    again = pn.load_split(12, 8, random_state=0)
    assert torch.equal(split.X_train, again.X_train) and split.X_train.dtype == torch.float64
    a, b = pn.make_model(16, 2, 64, 10, random_state=3), pn.make_model(16, 2, 64, 10, random_state=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    state = torch.random.get_rng_state()
    pn.make_model(16, 2, 64, 10, random_state=4)
    assert torch.equal(state, torch.random.get_rng_state())


def test_kernels_structured_equal_jacobian_path(split):
    model = pn.make_model(8, 2, 64, 10, random_state=1)
    k = pn.kernels(model, split)
    torch.testing.assert_close(k["entk_cross"], ntk.entk(model, split.X_test, split.X_train), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(k["pntk_train"], ntk.pntk(model, split.X_train), rtol=1e-10, atol=1e-12)


def test_width_point_ranges_and_trace_bound(split):
    point = pn.width_point(pn.make_model(16, 2, 64, 10, random_state=2), split)
    assert point["rel_trace"] <= point["rel_pntk"] + 1e-12
    assert 0 <= point["rel_pntk"] < 1
    for key in ("acc_entk", "acc_pntk", "agreement"):
        assert 0 <= point[key] <= 1
    assert point["consistency"] < 1e-10


def test_timing_methods_give_equal_predictions_on_both_paths(split):
    model = pn.make_model(8, 1, 64, 10, random_state=5)
    jac, mlp = pn.timing_methods(model, split, path="jacobian"), pn.timing_methods(model, split, path="mlp")
    np.testing.assert_allclose(jac["entk"](), mlp["entk"](), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jac["pntk"](), mlp["pntk"](), rtol=1e-6, atol=1e-8)


def test_errors():
    with pytest.raises(ValueError):
        pn.load_split(1, 5, random_state=0)
    with pytest.raises(ValueError):
        pn.make_model(0, 2, 64, 10, random_state=0)
    with pytest.raises(ValueError):
        pn.load_split(10, 5, random_state=0, dataset="cifar")
