"""The reference-endpoint cache: a hit is bit-identical and calls no network; every input is in the key."""

import pytest
import torch

from common.diffusion.data import load_digits_split
from common.diffusion.model import load_digits_eps
from common.diffusion.reference import cache_key, model_identity, reference_endpoints
from common.diffusion.samplers import reference_ode
from common.diffusion.twins import GaussianTwin


@pytest.fixture(scope="module")
def model():
    return load_digits_eps("ci")


def test_hit_is_bit_identical_and_free(model, tmp_path):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4)
    model.reset_nfe()
    first = reference_endpoints(model, x, 1.0, 0.05, y=y, rtol=1e-5, atol=1e-7, cache_dir=tmp_path)
    calls = model.nfe
    assert calls > 10 and len(list(tmp_path.glob("*.safetensors"))) == 1
    again = reference_endpoints(model, x, 1.0, 0.05, y=y, rtol=1e-5, atol=1e-7, cache_dir=tmp_path)
    assert model.nfe == calls and torch.equal(first, again) and again.dtype == torch.float64
    direct = reference_ode(model, x, 1.0, 0.05, rtol=1e-5, atol=1e-7, y=y)
    assert torch.equal(first, direct)


def test_every_input_changes_the_key(model):
    x = torch.zeros(2, 64)
    base = dict(t_start=1.0, t_end=0.05, rtol=1e-7, atol=1e-9, method="RK45", variable="lambda")
    key = cache_key(model_identity(model), x, None, base)
    assert key == cache_key(model_identity(model), x.clone(), None, dict(base))
    others = [
        cache_key(model_identity(model.with_guidance(3.0)), x, None, base),
        cache_key(model_identity(model), x + 1e-7, None, base),
        cache_key(model_identity(model), x.double(), None, base),
        cache_key(model_identity(model), x, torch.tensor([0, 1]), base),
        cache_key(model_identity(model), x, None, {**base, "rtol": 1e-6}),
        cache_key(model_identity(model), x, None, {**base, "t_end": 0.01}),
        cache_key("other", x, None, base),
    ]
    assert key not in others and len(set(others)) == len(others)


def test_model_without_manifest_needs_a_key(tmp_path):
    d = load_digits_split()
    twin = GaussianTwin.fit(d.x_train)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(ValueError, match="model_key"):
        reference_endpoints(twin, x, 0.8, 0.05, cache_dir=tmp_path)
    out = reference_endpoints(twin, x, 0.8, 0.05, model_key="gaussian_twin:ml:train", cache_dir=tmp_path)
    assert torch.allclose(out, twin.ode_solution(x, 0.8, 0.05), atol=1e-6)
