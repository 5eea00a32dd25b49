"""The seeded noise bank: determinism, disjoint fit / evaluation banks, nesting, balanced labels."""

import pytest
import torch

from common.diffusion.noise_bank import NoiseBank


def test_deterministic_and_seed_dependent():
    a, ya = NoiseBank(3).evaluation(20)
    b, yb = NoiseBank(3).evaluation(20)
    c, _ = NoiseBank(4).evaluation(20)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)
    assert a.shape == (20, 64) and a.dtype == torch.float32


def test_fit_and_evaluation_are_disjoint_and_independent_of_each_other():
    bank = NoiseBank(0, dim=8)
    assert bank.check_disjoint(200, 200)
    fit, _ = bank.fit(50)
    ev, _ = bank.evaluation(50)
    assert not torch.isclose(fit[:, None, :], ev[None, :, :]).all(-1).any()
    # asking for more fit noises does not change the evaluation bank (and vice versa)
    bank.fit(1000)
    assert torch.equal(bank.evaluation(50)[0], ev)


def test_nested_prefix_and_labels():
    bank = NoiseBank(7, dtype=torch.float64)
    small, y_small = bank.fit(9)
    big, y_big = bank.fit(32)
    assert torch.equal(small, big[:9]) and torch.equal(y_small, y_big[:9])
    assert torch.equal(y_big, torch.arange(32) % 10)
    per = bank.fit_for_label(3, 4)
    full, y = bank.fit(40)
    assert torch.equal(per, full[y == 3]) and per.shape == (4, 64)
    assert torch.equal(bank.fit_for_label(3, 2), per[:2])  # nested per label too


def test_standard_normal_moments():
    x, _ = NoiseBank(1, dim=16, dtype=torch.float64).evaluation(4000)
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_unlabelled_and_errors():
    assert NoiseBank(0, n_classes=None).fit(3)[1] is None
    with pytest.raises(ValueError):
        NoiseBank(-1)
    with pytest.raises(ValueError):
        NoiseBank(0).fit(0)
    with pytest.raises(ValueError):
        NoiseBank(0).fit_for_label(10, 2)
    with pytest.raises(ValueError):
        NoiseBank(0, n_classes=None).fit_for_label(0, 2)
