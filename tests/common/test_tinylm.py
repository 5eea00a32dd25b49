"""TinyGrammar and TinyGPT: corpus hash, parser and oracles, KV cache, hooks, checkpoint, training smoke test."""

import json
import shutil

import pytest
import torch

from common import zoo
from common.tinylm import grammar as G
from common.tinylm import load_tinylm
from common.tinylm.model import KVCache, TinyGPT, TinyGPTConfig, gelu_erf, layer_norm, softmax_attention
from common.tinylm.train import TrainConfig, answer_accuracy, evaluate, train_and_save

torch.set_num_threads(1)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyGPT(TinyGPTConfig(G.VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=64, **kw)).eval()


# -- grammar -----------------------------------------------------------------------------------------
def test_corpus_hash_is_recorded():
    assert G.corpus_hash(1000, G.CANONICAL_SEED) == G.CORPUS_HASH
    for kind in G.ALL_KINDS:
        assert G.corpus_hash(1000, G.CANONICAL_SEED, [kind]) == G.KIND_HASHES[kind], kind


def test_recall_dense_is_outside_the_default_mix_and_its_answers_are_right():
    assert "recall_dense" not in G.DEFAULT_MIX and "recall_dense" not in G.KINDS
    g = G.TinyGrammar(3)
    assert all(g.document()[0] != "recall_dense" for _ in range(500))
    g = G.TinyGrammar(4)
    n_answers = 0
    for _ in range(200):
        words = g.recall_dense()
        answers = G.recall_answer_positions(words)
        assert len(words) <= 240 and len(answers) == words.count("?") >= 2
        assert all(ok for _, ok in answers) and G.document_kind(words) == "recall_dense"
        n_answers += len(answers)
    assert n_answers / 200 >= 4
    words = "box 3 key red . box 4 key blue . ? box 4 key red ? box 9 key red ? box 3 key red".split()
    assert G.recall_answer_positions(words) == [(14, False), (24, True)]
    mixed = G.corpus_tokens(5000, 0, {"recall_dense": 1.0, "narrative": 1.0})
    assert int(mixed.max()) < G.VOCAB.size
    with pytest.raises(ValueError):
        G.TinyGrammar(0, mix={"nonsense": 1.0})


def test_onehop_recall_kinds_same_draws_other_format():
    # the one-hop kinds (session 21) are outside the default mix, make the same draws as their grammar-format
    # twins (same boxes, colours, sentences) and only drop ``key``; their answers check in the one-hop format
    assert {"recall_dense_onehop", "recall_short_onehop"} <= set(G.EXTRA_KINDS) and not set(G.EXTRA_KINDS) & set(G.DEFAULT_MIX)
    for method in ("recall_dense", "recall_short"):
        for seed in range(400):  # an off-by-one in the budget arithmetic shows in about 1 recall_short seed in 700
            tg = getattr(G.TinyGrammar(seed), method)()
            one = getattr(G.TinyGrammar(seed), method)(fmt="onehop")
            assert [w for w in tg if w != "key"] == one
            answers = G.recall_answer_positions(one, fmt="onehop")
            assert len(answers) == one.count("?") >= 2 and all(ok for _, ok in answers)
            assert [one[i] for i, _ in answers] == [tg[i] for i, _ in G.recall_answer_positions(tg)]
            assert G.recall_answer_positions(one) == [] and G.document_kind(one) == "recall_dense_onehop"
    words = "box 3 red . box 4 blue . ? box 4 red ? box 9 red ? box 3 red".split()
    assert G.recall_answer_positions(words, fmt="onehop") == [(11, False), (19, True)]
    # a model's non-colour answer is scored wrong, as in the grammar format, not skipped
    assert G.recall_answer_positions("box 3 red . ? box 3 fox".split(), fmt="onehop") == [(7, False)]
    assert G.check_recall("box 3 red . ? box 3 fox", fmt="onehop") is False
    assert G.check_recall("box 3 key red . ? box 3 key fox") is False
    assert G.check_recall(words, fmt="onehop") is False and G.check_recall(words[:8] + words[16:], fmt="onehop") is True
    with pytest.raises(ValueError, match="recall format"):
        G.recall_answer_positions(words, fmt="mqar")
    g = G.TinyGrammar(3, mix={"recall_short_onehop": 1.0})
    assert {g.document()[0] for _ in range(20)} == {"recall_short_onehop"}


def test_onehop_recall_episodes_exact_distance():
    tokens, pos, ans = G.recall_episodes(20, 40, random_state=1, fmt="onehop")
    assert torch.equal(tokens[torch.arange(20), pos], ans)
    for row, p in zip(tokens, pos, strict=True):
        words = G.VOCAB.decode(row[: p + 1])
        assert "key" not in words and G.check_recall(words, fmt="onehop") is True
        binding = [i for i in range(p - 3) if words[i] == "box" and words[i + 1] == words[p - 1]][0] + 2
        assert p - binding == 40
    G.recall_episodes(2, 4 * 2 + 7, fmt="onehop")  # the smallest distance that fits two one-hop bindings
    with pytest.raises(ValueError, match="too small"):
        G.recall_episodes(2, 4 * 2 + 6, fmt="onehop")


def test_recall_format_in_train_config_and_evaluation(monkeypatch):
    from common.tinylm import train as T

    assert "recall_format" not in T.TrainConfig().to_dict()  # omitted at its default: earlier manifests unchanged
    assert T.TrainConfig(recall_format="onehop").to_dict()["recall_format"] == "onehop"
    formats, original = [], G.recall_episodes

    def spy(*args, **kwargs):
        formats.append(kwargs.get("fmt", "tg"))
        return original(*args, **kwargs)

    monkeypatch.setattr(T.G, "recall_episodes", spy)
    ev = evaluate(tiny_model(), val_tokens=4 * 65, distances=(20,), n_recall=4, n_samples=2,
                  recall_formats=("tg", "onehop"))
    assert {"recall_accuracy.d20", "recall_onehop_accuracy.d20", "val_loss.recall_short_onehop"} <= set(ev)
    assert formats == ["tg", "onehop"]
    formats.clear()
    default = evaluate(tiny_model(), val_tokens=4 * 65, distances=(20,), n_recall=4, n_samples=2)
    assert not any("onehop" in k for k in default) and formats == ["tg"]  # the keys a default evaluation always had
    assert {f"val_loss.{k}" for k in ("narrative", "recall", "arithmetic", "keywords", "recall_dense", "recall_short")} <= set(default)
    # the monitor during training reads episodes in cfg.recall_format; an unknown format fails before training
    formats.clear()
    mcfg = TinyGPTConfig(G.VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=80)  # fits the distance-64 monitor
    cfg = T.TrainConfig(n_tokens=8 * 80, corpus_tokens=4096, batch_size=8, warmup_steps=1, eval_every=1, val_tokens=1024,
                        monitor_recall=2, recall_format="onehop")
    T.train_tinylm(mcfg, cfg, progress=False)
    assert formats and set(formats) == {"onehop"}
    with pytest.raises(ValueError, match="recall format"):
        T.train_tinylm(mcfg, T.TrainConfig(n_tokens=8 * 64, recall_format="mqar"), progress=False)


def test_corpus_is_deterministic_and_seed_dependent():
    a, b, c = G.corpus_tokens(3000, 5), G.corpus_tokens(3000, 5), G.corpus_tokens(3000, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.long and a[0] == G.VOCAB.bos_id and int(a.max()) < G.VOCAB.size


def test_vocabulary_round_trip_and_specials():
    v = G.VOCAB
    assert v.encode(["<pad>"]) == [0] and 300 <= v.size <= 700
    words = "the fox sees the river .".split()
    assert v.decode(v.encode(words)) == words
    with pytest.raises(ValueError, match="not in the TinyGrammar vocabulary"):
        v.encode(["zebra"])


def test_generated_sentences_parse_in_both_registers():
    g = G.TinyGrammar(3)
    formal = [g.sentence("formal") for _ in range(300)]
    informal = [g.sentence("informal") for _ in range(300)]
    assert all(map(G.is_grammatical, formal + informal))
    assert all(G.formality(s) >= 0.5 for s in formal) and all(G.formality(s) <= 0.5 for s in informal)
    assert sum(map(G.is_formal, formal)) > 200 and not any(map(G.is_formal, informal))


@pytest.mark.parametrize("sentence", [
    "the fox sees the river .",
    "indeed , the gentleman perused the ancient manuscript promptly .",
    "so , some kids munch the snacks lol .",
    "the dogs sleep near a river .",
])
def test_grammatical_examples(sentence):
    assert G.is_grammatical(sentence)


@pytest.mark.parametrize("sentence", [
    "the fox see the river .",          # agreement
    "the river eats the bread .",       # subject restriction
    "the man drinks the bread .",       # object restriction
    "a foxes sees the river .",         # determiner number
    "the fox sleeps near the bread .",  # PP must be a place
    "the fox sees the river",           # no full stop
])
def test_ungrammatical_examples(sentence):
    assert not G.is_grammatical(sentence)


def test_recall_episodes_exact_distance_and_answers():
    tokens, pos, ans = G.recall_episodes(20, 40, random_state=1)
    assert torch.equal(tokens[torch.arange(20), pos], ans)
    for row, p in zip(tokens, pos, strict=True):
        words = G.VOCAB.decode(row[: p + 1])
        assert G.check_recall(words) is True
        q = words[p - 2]
        binding = [i for i in range(len(words) - 5) if words[i] == "box" and words[i + 1] == q][0] + 3
        assert p - binding == 40
    with pytest.raises(ValueError):
        G.recall_episodes(2, 5)


def test_arithmetic_and_keywords_oracles():
    tokens, pos, ans = G.arithmetic_chains(5, 4, random_state=0)
    for row in tokens:
        r = G.check_arithmetic(row)
        assert r["all_steps_correct"] and r["answer_correct"] and r["n_steps"] == 4
    assert not G.check_arithmetic("calc 5 + 3 = 9 ; answer 9".split())["all_steps_correct"]
    assert G.check_arithmetic("calc 98 + 3 = 1 ; answer 1".split())["answer_correct"]
    for p in G.keyword_prompts(20, random_state=0):
        assert G.keyword_coverage(p["keywords"], p["reference"]) == 1.0 and G.is_grammatical(p["reference"])
    assert G.keyword_coverage(["fox", "see"], "the foxes saw the river .") == 1.0


# -- model -------------------------------------------------------------------------------------------
def test_parameter_count_of_ci_size():
    n = TinyGPT(TinyGPTConfig(G.VOCAB.size)).n_parameters()
    assert 0.8e6 < n < 0.9e6


def test_cached_decoding_equals_uncached():
    model = tiny_model()
    prompt = torch.randint(0, G.VOCAB.size, (3, 7), generator=torch.Generator().manual_seed(0))
    a, la = model.generate(prompt, 30, use_cache=True, temperature=0, return_logits=True)
    b, lb = model.generate(prompt, 30, use_cache=False, temperature=0, return_logits=True)
    assert torch.equal(a, b)
    assert torch.allclose(la, lb, atol=1e-5)
    sa = model.generate(prompt, 20, use_cache=True, generator=torch.Generator().manual_seed(1))
    sb = model.generate(prompt, 20, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sa, sb)


def test_kv_cache_read_write_access():
    model = tiny_model()
    x = torch.randint(0, G.VOCAB.size, (2, 12), generator=torch.Generator().manual_seed(2))
    cache = KVCache(model.config.n_layers)
    full, qkv = model(x, return_qkv=True)
    model(x[:, :8], kv_cache=cache)
    step = model(x[:, 8:], kv_cache=cache)
    assert cache.length == 12 and torch.allclose(step, full[:, 8:], atol=1e-5)
    k, v = cache.get(0)
    assert torch.allclose(k, qkv[0][1], atol=1e-5) and torch.allclose(v, qkv[0][2], atol=1e-5)
    # writing the cache changes what later tokens see; restoring it restores the logits
    cache.truncate(11)
    saved = cache.clone()
    cache.set(0, k[..., :11, :], v[..., :11, :] + 5.0)
    changed = model(x[:, 11:], kv_cache=cache)
    assert not torch.allclose(changed, full[:, 11:], atol=1e-3)
    restored = model(x[:, 11:], kv_cache=saved)
    assert torch.allclose(restored, full[:, 11:], atol=1e-5)


def test_attn_fn_hook_and_return_qkv_shapes():
    model = tiny_model()
    x = torch.randint(0, G.VOCAB.size, (2, 16), generator=torch.Generator().manual_seed(3))
    ref, qkv = model(x, return_qkv=True)
    assert len(qkv) == 2 and all(t.shape == (2, 2, 16, 16) for layer in qkv for t in layer)
    calls = []

    def explicit(q, k, v):
        calls.append(q.shape)
        return softmax_attention(q, k, v)

    model.set_attn_fn(explicit)
    assert torch.allclose(model(x), ref, atol=1e-5) and len(calls) == 2
    model.set_attn_fn([None, lambda q, k, v: torch.zeros_like(q)])
    assert not torch.allclose(model(x), ref, atol=1e-3)
    with pytest.raises(ValueError, match="one function per layer"):
        model.set_attn_fn([None])
    scale = torch.nn.Linear(1, 1)  # an attn_fn with parameters becomes a submodule
    model.set_attn_fn(None)
    model.blocks[0].attn.attn_fn = scale
    assert any(n.startswith("blocks.0.attn.attn_fn") for n, _ in model.named_parameters())


def test_act_norm_softmax_hooks_are_used():
    model = tiny_model()
    x = torch.randint(0, G.VOCAB.size, (1, 10), generator=torch.Generator().manual_seed(4))
    ref = model(x)
    used = {"act": 0, "norm": 0, "softmax": 0}

    def act(z):
        used["act"] += 1
        return gelu_erf(z)

    def norm(z, w, b, eps):
        used["norm"] += 1
        return layer_norm(z, w, b, eps)

    def smax(s, dim):
        used["softmax"] += 1
        return torch.softmax(s, dim)

    model.set_act_fn(act)
    model.set_norm_fn(norm)
    model.set_softmax_fn(smax)
    assert torch.allclose(model(x), ref, atol=1e-5)
    assert used == {"act": 2, "norm": 5, "softmax": 2}
    model.set_act_fn(torch.relu)
    assert not torch.allclose(model(x), ref, atol=1e-4)


def test_context_limit_and_config_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        TinyGPTConfig(100, d_model=30, n_heads=4)


def test_untied_head_option_keeps_the_default_model_and_uses_its_own_head(tmp_path):
    base = TinyGPTConfig(G.VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=64)
    assert base.to_dict() == {k: v for k, v in vars(base).items()
                              if k not in ("tie_embeddings", "emb_std", "head_init")}  # manifests unchanged
    untied = TinyGPTConfig(**{**base.to_dict(), "tie_embeddings": False, "emb_std": 1.0, "head_init": "uniform"})
    assert untied.to_dict()["tie_embeddings"] is False and TinyGPTConfig(**untied.to_dict()) == untied
    torch.manual_seed(0)
    tied_model = TinyGPT(base)
    torch.manual_seed(0)
    model = TinyGPT(untied)
    assert tied_model.head is None and tied_model.output_weight is tied_model.tok_emb.weight
    # every weight but the embedding and the head is drawn as in the tied model with the same seed
    shared = {k: v for k, v in tied_model.state_dict().items() if k != "tok_emb.weight"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in shared.items())
    assert 0.9 < model.tok_emb.weight.std().item() < 1.1
    bound = 32 ** -0.5
    assert model.head.weight.abs().max().item() <= bound and model.head.weight.std().item() > 0.8 * bound / 3 ** 0.5
    x = torch.randint(0, G.VOCAB.size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ref, model.ln_f(model.blocks[1](model.blocks[0](model.tok_emb(x), torch.arange(9))[0],
                                                           torch.arange(9))[0]) @ model.head.weight.T)
        model.head.weight.add_(0.1)
        assert not torch.allclose(model(x), ref)
    assert model.n_parameters() == tied_model.n_parameters() + G.VOCAB.size * 32
    with pytest.raises(ValueError, match="head_init"):
        TinyGPTConfig(G.VOCAB.size, head_init="kaiming")
    with pytest.raises(ValueError, match="untied"):
        TinyGPTConfig(G.VOCAB.size, head_init="uniform")
    for bad in (0.0, float("inf"), True):
        with pytest.raises(ValueError, match="emb_std"):
            TinyGPTConfig(G.VOCAB.size, emb_std=bad)
    with pytest.raises(ValueError, match="tie_embeddings"):
        TinyGPTConfig(G.VOCAB.size, tie_embeddings="false")
    # an untied checkpoint round-trips through the zoo with its config
    cfg = TrainConfig(n_tokens=2 * 8 * 64, batch_size=8, warmup_steps=1, eval_every=2, log_every=1, val_tokens=2048)
    trained, _, manifest = train_and_save(untied, cfg, "tinylm_untied", directory=tmp_path, progress=False,
                                          eval_kwargs={"val_tokens": 2048, "distances": (), "n_recall": 4, "n_samples": 2})
    assert manifest["config"]["tie_embeddings"] is False and manifest["architecture"].endswith("untied output head")
    loaded, _, _ = load_tinylm("tinylm_untied", directory=tmp_path)
    assert loaded.head is not None and torch.equal(loaded(x), trained(x))


# -- zoo ---------------------------------------------------------------------------------------------
def test_training_smoke_and_checkpoint_round_trip(tmp_path):
    cfg = TrainConfig(n_tokens=16 * 8 * 64, batch_size=8, warmup_steps=4, eval_every=8, log_every=4, val_tokens=2048, seed=0)
    mcfg = TinyGPTConfig(G.VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=64)
    model, history, manifest = train_and_save(mcfg, cfg, "tinylm_smoke", directory=tmp_path, progress=False,
                                              eval_kwargs={"val_tokens": 4096, "distances": (24,), "n_recall": 8, "n_samples": 4})
    assert history["step"][-1] == 16 and history["train_loss"][-1] < history["train_loss"][0]
    assert manifest["training"]["tokens_seen"] == 16 * 8 * 64
    assert manifest["corpus"]["corpus_hash_first_1000"] == G.CORPUS_HASH
    loaded, vocab, man = load_tinylm("tinylm_smoke", directory=tmp_path)
    x = torch.randint(0, vocab.size, (1, 20))
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    path = tmp_path / "tinylm_smoke.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ChecksumError):
        load_tinylm("tinylm_smoke", directory=tmp_path)


def test_continued_training_init_from_mix_and_time_budget(tmp_path):
    mcfg = TinyGPTConfig(G.VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=64)
    small = {"val_tokens": 2048, "distances": (), "n_recall": 4, "n_samples": 2, "kinds": ("narrative",)}
    base = TrainConfig(n_tokens=4 * 8 * 64, batch_size=8, warmup_steps=2, eval_every=4, log_every=2, val_tokens=2048)
    parent, _, _ = train_and_save(mcfg, base, "parent", directory=tmp_path, progress=False, eval_kwargs=small)
    # zero learning rate: the continued model is the parent, bit for bit
    frozen = TrainConfig(n_tokens=8 * 64, batch_size=8, lr=0.0, warmup_steps=1, weight_decay=0.0, val_tokens=2048,
                         init_from="parent", mix={"recall_dense": 1.0})
    child, history, man = train_and_save(mcfg, frozen, None, progress=False, eval_kwargs=small, init_directory=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(parent.state_dict().values(), child.state_dict().values(), strict=True))
    sha = zoo.load_manifest("parent", tmp_path)["sha256"]
    assert man["training"]["init_from"] == {"name": "parent", "sha256": sha, "tokens_seen": 4 * 8 * 64}
    assert man["corpus"]["mix"] == {"recall_dense": 1.0}
    # a wall-time budget ends the run early; at least one step; recall monitored at each evaluation
    timed = TrainConfig(n_tokens=10**9, corpus_tokens=20_000, batch_size=8, warmup_steps=1, eval_every=2, val_tokens=2048,
                        init_from="parent", mix={"recall_dense": 1.0, "narrative": 1.0}, max_seconds=1e-9, monitor_recall=4)
    _, history, man = train_and_save(mcfg, timed, None, progress=False, eval_kwargs=small, init_directory=tmp_path)
    assert history["step"] == [1] and len(history["val"]) == 1 and man["training"]["tokens_seen"] == 8 * 64
    assert len(man["training"]["recall_curve"]) == 1
    bad = TinyGPTConfig(G.VOCAB.size, d_model=64, n_layers=2, n_heads=2, context=64)
    with pytest.raises(ValueError):
        train_and_save(bad, frozen, None, progress=False, eval_kwargs=small, init_directory=tmp_path)


def test_committed_checkpoint_loads_and_is_verified(tmp_path):
    if "tinylm_ci" not in zoo.available():
        pytest.skip("tinylm_ci not trained yet")
    model, vocab, manifest = load_tinylm("tinylm_ci")
    assert manifest["corpus"]["corpus_hash_first_1000"] == G.CORPUS_HASH
    assert manifest["config"]["context"] == 256 and 0.8e6 < manifest["n_parameters"] < 0.9e6
    for ext in ("safetensors", "json"):
        shutil.copy(zoo.CHECKPOINT_DIR / f"tinylm_ci.{ext}", tmp_path / f"tinylm_ci.{ext}")
    manifest["sha256"] = "0" * 64
    (tmp_path / "tinylm_ci.json").write_text(json.dumps(manifest))
    with pytest.raises(zoo.ChecksumError):
        load_tinylm("tinylm_ci", directory=tmp_path)
    metrics = evaluate(model, val_tokens=4 * 257, distances=(), n_recall=4, n_samples=2)
    assert metrics["val_loss"] < 2.5


def test_onehop_recall_teacher_checkpoint():
    # session 21's pilot 4 (results/zoo/train_tinylm_recall_onehop.ipynb): recalls in the one-hop format, not in
    # the grammar's own (two-hop) format; the weights are verified against the manifest's sha256 on load
    if "tinylm_recall_onehop" not in zoo.available():
        pytest.skip("tinylm_recall_onehop not in the zoo")
    model, _, manifest = load_tinylm("tinylm_recall_onehop")
    assert manifest["config"]["tie_embeddings"] is False and manifest["training"]["recall_format"] == "onehop"
    assert manifest["corpus"]["corpus_hash_first_1000"] == G.CORPUS_HASH
    assert manifest["evaluation"]["recall_onehop_accuracy.d64"] >= 0.8
    onehop = answer_accuracy(model, *G.recall_episodes(48, 64, random_state=321, fmt="onehop"))
    two_hop = answer_accuracy(model, *G.recall_episodes(48, 64, random_state=321))
    assert onehop >= 0.9 and two_hop <= 0.75, (onehop, two_hop)


def test_recall_evaluation_scores_an_oracle_perfectly_and_the_model_is_causal():
    # the answer positions / ``pos - 1`` logits of the recall evaluation are right: a lookup oracle scores 1.0
    from common.tinylm.recall_diagnostics import check_causality, check_evaluation

    assert check_evaluation(distances=(20, 160), n=16) == {20: 1.0, 160: 1.0}
    assert check_evaluation(distances=(20, 160), n=16, fmt="onehop") == {20: 1.0, 160: 1.0}
    causality = check_causality(tiny_model())
    assert causality["prefix"] < 1e-5 and causality["future"] == 0.0


def test_colour_noise_breaks_the_collapse_of_the_colour_embeddings():
    from common.tinylm.recall_diagnostics import COLOUR_IDS, colour_collapse
    from common.tinylm.train import init_weights, perturb_colour_embeddings

    model = tiny_model()
    before = model.tok_emb.weight.detach().clone()
    with torch.no_grad():  # a collapsed checkpoint: every colour has the same embedding
        model.tok_emb.weight[COLOUR_IDS] = before[COLOUR_IDS].mean(0)
    assert colour_collapse(model)["colours"] > 0.999
    perturb_colour_embeddings(model, 0.05, seed=1)
    assert colour_collapse(model)["colours"] < 0.5
    others = torch.ones(G.VOCAB.size, dtype=torch.bool)
    others[COLOUR_IDS] = False
    assert torch.equal(model.tok_emb.weight[others], before[others])
    again = tiny_model()
    with torch.no_grad():
        again.tok_emb.weight[COLOUR_IDS] = before[COLOUR_IDS].mean(0)
    perturb_colour_embeddings(again, 0.05, seed=1)
    assert torch.equal(again.tok_emb.weight, model.tok_emb.weight)  # seeded
    # the train option: 0 (default) leaves the initialisation untouched
    mcfg = TinyGPTConfig(G.VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=64)
    torch.manual_seed(0)
    plain, _ = init_weights(TrainConfig(), mcfg)
    torch.manual_seed(0)
    noisy, _ = init_weights(TrainConfig(colour_noise=0.1), mcfg)
    diff = (noisy.tok_emb.weight - plain.tok_emb.weight).abs().sum(1)
    assert (diff[COLOUR_IDS] > 0).all() and diff[others].sum() == 0
    assert TrainConfig().to_dict()["colour_noise"] == 0.0
