"""LoRA: identity at initialisation, merged weights reproduce the adapted outputs, only adapters train."""

import pytest
import torch
from torch import nn

from common.lora import LoRALinear, apply_lora, count_parameters, lora_parameters, merge_lora


class Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        return self.o_proj(torch.tanh(self.q_proj(x)) * self.k_proj(x) + self.v_proj(x))


class Net(nn.Module):
    def __init__(self, d=16, layers=2):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"attn": Attn(d), "fc": nn.Linear(d, d)}) for _ in range(layers))
        self.head = nn.Linear(d, 3, bias=False)

    def forward(self, x):
        for b in self.blocks:
            x = x + b["fc"](b["attn"](x))
        return self.head(x)


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


def randomise_b(model, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(scale * torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype))


def test_zero_initialised_b_is_the_identity_change():
    model = net()
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(2))
    before = model(x)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], rank=4, alpha=8,
               generator=torch.Generator().manual_seed(3))
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merged_weights_give_identical_outputs(dtype):
    model = net().to(dtype)
    report = apply_lora(model, ("q_proj", "v_proj", "o_proj", "k_proj"), rank=4, alpha=8,
                        generator=torch.Generator().manual_seed(3))
    randomise_b(model, scale=1.0 if dtype == torch.float64 else 0.05)
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(2), dtype=dtype)
    adapted = model(x)
    assert not torch.allclose(adapted, net().to(dtype)(x))      # the update changes the function
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    merged = model(x)
    assert merged.dtype == dtype
    if dtype == torch.float64:
        assert torch.allclose(merged, adapted, atol=1e-6, rtol=0)
    else:   # float32: W + ΔW is rounded once more than W x + ΔW x (a few ulps of the outputs)
        assert torch.allclose(merged, adapted, atol=1e-5, rtol=1e-5)
    assert len(report.replaced) == 8


def test_delta_weight_is_scaled_low_rank_product():
    layer = LoRALinear(nn.Linear(10, 6), rank=3, alpha=6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_()
    assert torch.linalg.matrix_rank(layer.delta_weight()) == 3
    assert torch.allclose(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)
    x = torch.randn(4, 10)
    assert torch.allclose(layer(x), layer.base(x) + x @ layer.delta_weight().t(), atol=1e-6)


def test_only_lora_parameters_are_trainable_and_fraction_is_counted():
    model = net()
    total_before = count_parameters(model)
    report = apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], rank=2, alpha=4,
                        generator=torch.Generator().manual_seed(0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    per_layer = 2 * (16 + 16)
    assert report.trainable == 8 * per_layer == sum(p.numel() for p in lora_parameters(model))
    assert report.total == total_before + report.trainable
    assert report.fraction == pytest.approx(report.trainable / report.total)
    # a training step moves only the adapters
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(3, 4, 16)).square().mean().backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(model))


def test_seeded_and_validated():
    a, b = net(), net()
    apply_lora(a, "q_proj", 2, 2, generator=torch.Generator().manual_seed(5))
    apply_lora(b, "q_proj", 2, 2, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(lora_parameters(a), lora_parameters(b), strict=True))
    with pytest.raises(ValueError):
        apply_lora(net(), ["nothing"], 2, 2)
    with pytest.raises(ValueError):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)
    with pytest.raises(ValueError):
        LoRALinear(nn.Linear(4, 4), rank=5, alpha=1)
    # applying twice does not wrap the adapters' own base layers: nothing is left to adapt
    c = net()
    apply_lora(c, "q_proj", 2, 2)
    with pytest.raises(ValueError):
        apply_lora(c, "q_proj", 2, 2)
    assert sum(isinstance(m, LoRALinear) for m in c.modules()) == 2
