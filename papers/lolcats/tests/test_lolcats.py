"""LoLCATs pipeline on a tiny randomly initialised TinyGPT: exact limits, what each stage trains, bookkeeping."""

import math

import pytest
import torch

from common.lora import LoRALinear
from common.tinylm import TinyGPT, TinyGPTConfig
from papers.lolcats import lolcats as L

CTX = 16


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, context=32)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return L.token_batches(torch.randint(1, 40, (4000,), generator=g), CTX, 2, 6)


def test_token_batches_are_consecutive_windows():
    b = L.token_batches(torch.arange(100), 4, 2, 3)
    assert b.shape == (3, 2, 5)
    assert b[0, 0].tolist() == [0, 1, 2, 3, 4] and b[0, 1].tolist() == [5, 6, 7, 8, 9] and b[2, 1, -1] == 29
    with pytest.raises(ValueError):
        L.token_batches(torch.arange(10), 4, 2, 3)


def test_methods_are_the_issue_recipes():
    m = L.methods(16)
    assert set(m) == set(L.METHOD_NAMES)
    assert m["lolcats"].window == 16 and m["hedgehog"].window == 0 and m["t2r"].feature_map == "t2r_relu"
    assert not m["t2r"].attention_transfer and m["t2r"].finetune_feature_maps
    assert m["lolcats"].stage1_key == m["transfer_only"].stage1_key == m["lora_only"].stage1_key
    assert not m["transfer_only"].lora and not m["lolcats"].finetune_feature_maps
    with pytest.raises(ValueError):
        L.methods(0)


def test_window_covering_the_context_reproduces_the_teacher(teacher, batches):
    method = L.Method("wide", "hedgehog", CTX, True, True, False)
    layers = L.attention_layers(teacher, method, generator=torch.Generator().manual_seed(0))
    student = L.linearize(teacher, layers)
    x = batches[0][:, :-1]
    assert torch.allclose(student(x), teacher(x), atol=1e-5)
    assert torch.allclose(L.layer_mse(layers, L.teacher_qkv(teacher, x)), torch.zeros(2), atol=1e-10)


def test_attention_transfer_trains_only_feature_maps_and_lowers_the_mse(teacher, batches):
    method = L.methods(4)["lolcats"]
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    layers = L.attention_layers(teacher, method, generator=torch.Generator().manual_seed(0))
    student = L.linearize(teacher, layers)
    frozen = {k: v.clone() for k, v in student.state_dict().items() if "attn_fn" not in k}
    mse0 = L.stage_one_mse(teacher, layers, batches[:2])
    losses = L.attention_transfer(teacher, layers, batches.repeat(3, 1, 1), lr=1e-2)
    assert len(losses) == 18
    assert L.stage_one_mse(teacher, layers, batches[:2]).mean() < mse0.mean()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in frozen.items())
    assert len(L.attention_parameters(layers)) == 2 * 3     # two feature maps and window factors per layer


def test_stage2_trains_lora_only_and_starts_at_the_stage1_function(teacher, batches):
    config = L.TrainConfig()
    lolcats = L.methods(4)["lolcats"]
    result = L.run_stage1(teacher, lolcats, batches[:2], config, seed=0)
    x = batches[0][:, :-1]
    before = result.model(x)
    L.run_stage2(result, batches[:0], config, seed=0)          # zero steps: LoRA with B = 0
    assert torch.allclose(result.model(x), before, atol=1e-6)
    trained = L.run_stage1(teacher, lolcats, batches[:2], config, seed=0)
    fmaps = [p.clone() for p in L.attention_parameters(trained.layers)]
    base = {k: v.clone() for k, v in trained.model.state_dict().items() if "attn_fn" not in k}
    L.run_stage2(trained, batches[:2], config, seed=0)
    lora = [m for m in trained.model.modules() if isinstance(m, LoRALinear)]
    assert len(lora) == 4 * 2 and all(m.lora_B.abs().sum() > 0 for m in lora)
    assert all(torch.equal(a, b) for a, b in zip(fmaps, L.attention_parameters(trained.layers), strict=True))
    after = trained.model.state_dict()
    for key, value in base.items():                           # base weights now live under `.base`
        name = key.replace("_proj.weight", "_proj.base.weight").replace("_proj.bias", "_proj.base.bias")
        assert torch.equal(value, after[name if name in after else key])


def test_run_methods_bookkeeping_sharing_and_determinism(teacher, batches):
    config = L.TrainConfig()
    recipes = L.methods(4)
    a = L.run_methods(teacher, recipes, batches[:3], batches[:3], config, seed=3)
    b = L.run_methods(teacher, recipes, batches[:3], batches[:3], config, seed=3)
    tokens = 3 * 2 * CTX
    for name in recipes:
        assert a[name].stage1_losses == b[name].stage1_losses and a[name].stage2_losses == b[name].stage2_losses
    assert a["lolcats"].stage1_losses == a["transfer_only"].stage1_losses
    assert a["lolcats"].stage1_tokens == tokens and a["t2r"].stage1_tokens == 0
    assert a["lolcats"].stage2_tokens == tokens and a["transfer_only"].stage2_tokens == 0
    # equal optimizer steps: single-stage methods pass over the linearization set twice
    for name in ("t2r", "t2r_full", "window_only", "lora_only"):
        assert a[name].stage2_tokens == 2 * tokens and a[name].steps == a["lolcats"].steps == 6, name
    assert a["transfer_only"].steps == 3
    c = L.run_methods(teacher, {"t2r": recipes["t2r"]}, batches[:3], batches[:3], config, seed=3, equal_steps=False)
    assert c["t2r"].steps == 3
    lora = 2 * 4 * 8 * (32 + 32)                               # layers · projections · rank · (in + out)
    assert a["lolcats"].stage2_trainable == lora
    assert a["t2r"].stage2_trainable > lora                    # LoRA plus the ReLU feature maps
    assert 0 < a["lolcats"].stage2_fraction < 1
    x = batches[0][:, :-1]
    for name in recipes:
        assert torch.allclose(a[name].model(x), b[name].model(x))
        assert not any(p.requires_grad for p in a[name].model.parameters())


def test_window_only_control_is_sliding_window_softmax_with_lora(teacher, batches):
    method = L.methods(4)["window_only"]
    layers = L.attention_layers(teacher, method, generator=torch.Generator().manual_seed(0))
    assert L.attention_parameters(layers) == []
    L.linearize(teacher, layers)
    x = batches[0][:, :-1]
    _, qkv = teacher(x, return_qkv=True)
    q, k, v = qkv[0]
    from common.attention.linear import sliding_window_attention
    assert torch.equal(layers[0](q, k, v), sliding_window_attention(q, k, v, 4))
    wide = L.linearize(teacher, L.attention_layers(teacher, L.Method("w", "none", CTX, False, True, False),
                                                   generator=torch.Generator()))
    assert torch.allclose(wide(x), teacher(x), atol=1e-5)    # a window covering the context is softmax
    result = L.run_stage2(L.run_stage1(teacher, method, batches[:2], L.TrainConfig(), 0), batches[:2],
                          L.TrainConfig(), 0)
    assert result.stage2_trainable == 2 * 4 * 8 * (32 + 32) and result.stage1_trainable == 0
    with pytest.raises(ValueError):
        L.Method("bad", "none", 0, False, True, False)


def test_t2r_full_finetune_trains_every_weight(teacher, batches):
    config = L.TrainConfig()
    method = L.methods(4)["t2r_full"]
    result = L.run_stage1(teacher, method, batches[:2], config, seed=0)
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    L.run_stage2(result, batches[:2], config, seed=0)
    after = result.model.state_dict()
    assert not any(isinstance(m, LoRALinear) for m in result.model.modules())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed)
    assert any("feature_map" in k for k in changed)
    assert result.stage2_fraction > 0.95
    assert not any(p.requires_grad for p in result.model.parameters())
    with pytest.raises(ValueError):
        L.Method("bad", "t2r_relu", 0, False, True, True, full_finetune=True)


def test_recall_accuracy_and_gap_closed():
    class Fixed(torch.nn.Module):
        def forward(self, idx):
            logits = torch.zeros(*idx.shape, 10)
            logits[..., 7] = 1.0
            return logits

    tokens = torch.zeros(4, 6, dtype=torch.long)
    acc = L.recall_accuracy(Fixed(), tokens, torch.tensor([5, 3, 2, 1]), torch.tensor([7, 7, 1, 7]), batch_size=3)
    assert acc == 0.75
    with pytest.raises(ValueError):
        L.recall_accuracy(Fixed(), tokens, torch.tensor([0, 3, 2, 1]), torch.tensor([7, 7, 1, 7]))
    assert L.gap_closed(10.0, 20.0, 5.0) == pytest.approx(2 / 3)
    assert L.gap_closed(20.0, 20.0, 5.0) == 0.0
    with pytest.raises(ValueError):
        L.gap_closed(1.0, 5.0, 5.0)
    assert math.isclose(L.perplexity_of(Fixed(), torch.zeros(1, 2, 5, dtype=torch.long)),
                        math.exp(-math.log(math.exp(0) / (9 + math.e))), rel_tol=1e-6)


def test_cached_targets_give_the_same_transfer_and_mse(teacher, batches):
    method = L.methods(4)["lolcats"]

    def make():
        return L.attention_layers(teacher, method, generator=torch.Generator().manual_seed(0))

    a, b = make(), make()
    targets = L.teacher_targets(teacher, batches[:3])
    direct = L.attention_transfer(teacher, a, batches[:3], lr=1e-2)
    cached = L.attention_transfer(None, b, None, lr=1e-2, targets=targets)
    assert direct == cached
    per_batch = [L.layer_mse(a, L.teacher_qkv(teacher, b[:, :-1])) for b in batches[3:]]
    assert torch.allclose(L.stage_one_mse(teacher, a, batches[3:]), sum(per_batch) / 3, atol=1e-7)


def test_linearization_steps_snapshot_the_transfer_run(teacher, batches):
    """Two-stage models continue from the transfer run after ``linearization_steps`` steps; the whole run's
    layers are kept for the stage-1 MSE; single-stage methods still take as many steps as two-stage ones."""
    recipes = {k: v for k, v in L.methods(4).items() if k in ("lolcats", "t2r", "transfer_only")}
    config = L.TrainConfig()
    res = L.run_methods(teacher, recipes, batches, batches[:2], config, seed=1, linearization_steps=2)
    short = L.run_methods(teacher, {"transfer_only": recipes["transfer_only"]}, batches[:2], batches[:2], config, seed=1)
    assert len(res["lolcats"].transfer_losses) == len(batches) and res["lolcats"].stage1_losses == res["lolcats"].transfer_losses[:2]
    assert res["transfer_only"].stage1_losses == short["transfer_only"].stage1_losses
    x = batches[0][:, :-1]
    assert torch.allclose(res["transfer_only"].model(x), short["transfer_only"].model(x))
    assert res["lolcats"].steps == res["t2r"].steps == 4 and res["transfer_only"].steps == 2
    assert res["lolcats"].stage1_tokens == 2 * 2 * CTX
    whole = L.stage_one_mse(teacher, res["lolcats"].transfer_layers, batches[:1])
    snap = L.stage_one_mse(teacher, res["lolcats"].layers, batches[:1])
    assert not torch.allclose(whole, snap)


def test_run_seed_and_intervals(teacher, batches):
    from common.tinylm import grammar as G  # noqa: F401  (episodes are built by hand below)

    tokens = torch.randint(1, 40, (4, 12), generator=torch.Generator().manual_seed(2))
    recall = (tokens, torch.full((4,), 11), tokens[:, 11])
    data = {"transfer": batches[:4], "val": batches[4:], "recall": recall}
    runs = [L.run_seed(teacher, L.methods(4), data, L.TrainConfig(), s, linearization_steps=2) for s in (0, 1, 2)]
    for run in runs:
        assert set(run["ppl"]) == {"teacher", *L.ORDER, "t2r_best"}
        assert run["ppl"]["t2r_best"] == min(run["ppl"]["t2r"], run["ppl"]["t2r_full"])
        assert run["max_ratio"] == max(run["mse_ratio"]) and run["transfer_steps"] == 4
        assert run["steps"]["lolcats"] == 4 and run["steps"]["t2r"] == 4
    arrays = L.across_seeds(runs)
    assert len(arrays["ppl.lolcats"]) == 3 and len(arrays["mse_ratio.layer1"]) == 3
    ci = L.comparisons(arrays)
    d = [a - b for a, b in zip(arrays["ppl.window_only"], arrays["ppl.lolcats"], strict=True)]
    assert math.isclose(ci["window_only_minus_lolcats"].estimate, sum(d) / 3, rel_tol=1e-12)
    assert ci["max_ratio"].n == 3 and ci["lolcats_gap_closed"].lo <= ci["lolcats_gap_closed"].hi
    assert math.isclose(ci["recall_lolcats"].estimate, sum(arrays["recall.lolcats"]) / 3, rel_tol=1e-12)


def test_corpus_mix_and_recall_chance():
    manifest = {"corpus": {"mix": {"narrative": 0.5, "recall_short_onehop": 0.5}}}
    assert L.corpus_kinds("default", manifest) is None
    assert L.corpus_kinds("teacher", manifest) == {"narrative": 0.5, "recall_short_onehop": 0.5}
    with pytest.raises(ValueError, match="corpus_mix"):
        L.corpus_kinds("alpaca", manifest)
    with pytest.raises(ValueError, match="no corpus mix"):
        L.corpus_kinds("teacher", {})
    assert L.recall_chance() == pytest.approx(1 / 12)
