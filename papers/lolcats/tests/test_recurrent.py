"""Recurrent (state-passing) decoding equals the parallel forward; timing helpers return sane shapes."""

import numpy as np
import pytest
import torch

from common.tinylm import TinyGPT, TinyGPTConfig
from papers.lolcats import lolcats as L
from papers.lolcats import recurrent as R


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, context=64)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", ["lolcats", "hedgehog", "window_only", "t2r"])
def test_recurrent_decode_equals_parallel_forward(teacher, name):
    method = L.methods(5)[name]
    layers = L.attention_layers(teacher, method, generator=torch.Generator().manual_seed(3), init_window_factor=0.3)
    student = L.linearize(teacher, layers)
    idx = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        parallel = student(idx)
    assert torch.allclose(R.decode(student, idx), parallel, atol=1e-5, rtol=1e-5)


def test_softmax_cache_decode_equals_the_teacher(teacher):
    idx = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(R.decode(teacher, idx), teacher(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lolcats", "hedgehog", "window_only"])
def test_fill_equals_decoding_the_prefix(teacher, name):
    """A state filled from a prefix's keys and values continues exactly like one that decoded the prefix."""
    method = L.methods(5)[name]
    layer = L.attention_layers(teacher, method, generator=torch.Generator().manual_seed(6), init_window_factor=0.3)[0]
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=g) for _ in range(3))
    stepped = R.new_states(L.linearize(teacher, [layer, layer]))[0]
    for t in range(11):
        stepped.step(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :])
    filled = R.new_states(L.linearize(teacher, [layer, layer]))[0]
    filled.fill(k[..., :11, :], v[..., :11, :])
    a = stepped.step(q[..., 11:, :], k[..., 11:, :], v[..., 11:, :])
    b = filled.step(q[..., 11:, :], k[..., 11:, :], v[..., 11:, :])
    assert torch.allclose(a, b, atol=1e-6)


def test_scaling_benchmark_shapes(teacher):
    student = L.linearize(teacher, L.attention_layers(teacher, L.methods(4)["lolcats"],
                                                      generator=torch.Generator().manual_seed(0)))
    out = R.scaling_benchmark({"softmax": teacher, "recurrent": student}, [8, 32], batch=2, steps=3, repeats=2)
    for b in out.values():
        assert b["per_token_s"].shape == (2, 2) and np.all(b["per_token_s"] > 0)
        assert b["slope"].shape == (2,) and np.allclose(b["tokens_per_s"], 2 / b["per_token_s"])


def test_recurrent_decode_uses_an_untied_head():
    torch.manual_seed(1)
    config = TinyGPTConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, context=64, tie_embeddings=False)
    model = TinyGPT(config).eval()
    idx = torch.randint(0, 40, (2, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.allclose(R.decode(model, idx), model(idx), atol=1e-5, rtol=1e-5)
