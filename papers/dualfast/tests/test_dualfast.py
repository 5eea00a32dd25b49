import pytest
import torch

from common.diffusion.samplers import ddim
from common.diffusion.schedule import VPSchedule
from common.diffusion.twins import GaussianTwin
from papers.dualfast.dualfast import (
    BASE_SOLVERS,
    DUALFAST_SOLVERS,
    DualFastModel,
    grid_for,
    mixing_coefficient,
    sanity,
)


@pytest.fixture(scope="module")
def twin():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(200, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.5, 0.2, 0.1]) + 0.3
    return GaussianTwin.fit(data, VPSchedule())


def test_mixing_coefficient_schedule():
    assert mixing_coefficient(1.0, 1.0, 0.5) == 0.0
    assert mixing_coefficient(0.5, 1.0, 0.5) == pytest.approx(0.25)
    assert mixing_coefficient(0.1, 1.0, 0.5) > mixing_coefficient(0.5, 1.0, 0.5)  # grows toward lower noise
    with pytest.raises(ValueError):
        mixing_coefficient(0.5, 0.0, 0.5)


def test_switch_off_equals_base(twin):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for n in (3, 6):
        assert max(sanity(twin, x, grid_for(n)).values()) == 0.0


def test_mixed_prediction_by_hand(twin):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    view = DualFastModel(twin, 1.0, 0.4)
    e_tau = view.eps(x, 1.0)
    assert torch.equal(e_tau, twin.eps(x, 1.0))
    x2 = 0.9 * x
    got = view.eps(x2, 0.5)
    c = 0.4 * 0.5
    assert torch.allclose(got, (1 + c) * twin.eps(x2, 0.5) - c * e_tau)
    assert view.coefficients == [0.0, pytest.approx(c)]


def test_ddim_variant_is_ddim_on_mixed_model(twin):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = grid_for(4)
    a = DUALFAST_SOLVERS["ddim"](twin, x, ts, c=0.3)
    b = ddim(DualFastModel(twin, float(ts[0]), 0.3), x, ts)
    assert torch.equal(a, b)
    assert not torch.allclose(a, BASE_SOLVERS["ddim"](twin, x, ts))


def test_first_call_must_be_at_tau(twin):
    view = DualFastModel(twin, 1.0, 0.3)
    with pytest.raises(ValueError):
        view.eps(torch.zeros(2, 4, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError):
        DualFastModel(twin, 1.0, float("nan"))


def test_trajectory_and_signature(twin):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    seen = []
    for name, fn in DUALFAST_SOLVERS.items():
        out, traj = fn(twin, x, grid_for(5), None, c=0.2, return_trajectory=True, callback=lambda info: seen.append(info["i"]))
        assert len(traj) == 6 and torch.equal(traj[-1], out), name
    assert len(seen) == 15


def test_reading_mixed_history_equals_the_model_view(twin):
    from papers.dualfast.dualfast import dualfast_dpm_solver_pp_2m_reading
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = grid_for(6)
    for tau in ("first", "previous"):
        a = DUALFAST_SOLVERS["dpmpp2m"](twin, x, ts, c=0.3, tau=tau)
        b = dualfast_dpm_solver_pp_2m_reading(twin, x, ts, c=0.3, history="mixed", tau=tau)
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    for history in ("raw", "first_order"):  # c = 0 is the base solver in every reading
        z = dualfast_dpm_solver_pp_2m_reading(twin, x, ts, c=0.0, history=history)
        assert torch.allclose(z, BASE_SOLVERS["dpmpp2m"](twin, x, ts), rtol=0, atol=1e-12)
        assert not torch.allclose(dualfast_dpm_solver_pp_2m_reading(twin, x, ts, c=0.3, history=history), z)


def test_tau_previous_by_hand(twin):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    view = DualFastModel(twin, 1.0, 0.4, tau="previous")
    view.eps(x, 1.0)
    e_half = twin.eps(0.9 * x, 0.5)
    view.eps(0.9 * x, 0.5)
    got = view.eps(0.8 * x, 0.25)
    c = 0.4 * 0.75
    assert torch.allclose(got, (1 + c) * twin.eps(0.8 * x, 0.25) - c * e_half)
    with pytest.raises(ValueError):
        DualFastModel(twin, 1.0, 0.3, tau="last")
