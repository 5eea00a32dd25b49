"""Unit tests of the Shampoo-preconditioner experiment (the linear algebra is tested in tests/common)."""

import pytest
import torch

from common.smallnets import MLP
from papers.shampoo_preconditioner import shampoo_preconditioner as sp


@pytest.fixture(scope="module")
def small():
    data = sp.load_data("digits")
    ckpts = sp.train_with_checkpoints(data, (8,), [0, 1], random_state=0)
    return data, ckpts


def test_checkpoints_differ_and_are_deterministic(small):
    data, ckpts = small
    again = sp.train_with_checkpoints(data, (8,), [0, 1], random_state=0)
    assert torch.equal(ckpts[1]["layers.0.weight"], again[1]["layers.0.weight"])
    assert not torch.equal(ckpts[0]["layers.0.weight"], ckpts[1]["layers.0.weight"])
    with pytest.raises(ValueError):
        sp.train_with_checkpoints(data, (8,), [3, 1])


def test_analyze_layer_invariants(small):
    data, ckpts = small
    model = MLP(64, (8,), 10)
    model.load_state_dict(ckpts[1])
    r = sp.analyze_layer(model, 0, data.X_train[:64], data.y_train[:64], batch_size=4,
                         generator=torch.Generator().manual_seed(0))
    assert r["identity_error"] < 1e-12
    for view in ("gn", "ada"):
        assert -1 <= r[view]["shampoo"] <= r[view]["optimal"] + 1e-12 <= 1 + 1e-12
        assert r[view]["shampoo2"] <= r[view]["optimal"] + 1e-9
    assert r["gn_variants"]["exact"] == pytest.approx(r["gn"]["shampoo2"])


def test_unknown_dataset():
    with pytest.raises(ValueError):
        sp.load_data("cifar")


def test_summarize_reduces_cells(small):
    data, ckpts = small
    model = MLP(64, (8,), 10)
    model.load_state_dict(ckpts[1])
    gen = torch.Generator().manual_seed(0)
    results = {(1, layer): sp.analyze_layer(model, layer, data.X_train[:64], data.y_train[:64], batch_size=4,
                                            generator=gen) for layer in (0, 1)}
    out = sp.summarize(results)
    gv = [r["gn_variants"] for r in results.values()]
    assert out["sampled_minus_ef.mean"] == pytest.approx(
        sum(g["sampled"] - g["empirical_fisher"] for g in gv) / 2)
    assert out["gap.min"] >= -1e-9 and out["gap.max"] >= out["gap.mean"] >= out["gap.min"]
    assert 0 <= out["shampoo2_beats_shampoo"] <= 1 and out["identity_error"] < 1e-12
    assert set(sp.VARIANTS) == {k.split(".")[-1] for k in out if k.startswith("gn_variants.mean.")}
    with pytest.raises(ValueError):
        sp.summarize({})


def test_run_seed_is_deterministic():
    a = sp.run_seed("digits", (4,), [0, 1], n_examples=32, batch_size=4, random_state=3)
    b = sp.run_seed("digits", (4,), [0, 1], n_examples=32, batch_size=4, random_state=3)
    assert list(a) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert a[(1, 0)]["gn_variants"] == b[(1, 0)]["gn_variants"]
