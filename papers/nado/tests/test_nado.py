import math

import numpy as np
import pytest
import torch

from common.lm_oracles import (
    enumerate_sequences,
    exact_constrained_distribution,
    exact_oracle_values,
    kl_divergence,
)
from common.tinylm import VOCAB
from papers.nado.nado import (
    BaseLM,
    PrefixClassifier,
    TokenHead,
    _end_mask,
    distinct_n,
    guide_log_weights,
    make_task,
    nado_losses,
    sample,
    score,
)


@pytest.fixture(scope="module")
def base():
    return BaseLM.load("tinylm_ci")


def test_tasks_have_the_promised_shape():
    a = make_task("keywords", 5, random_state=3, n_keywords=2)
    assert all(p[:3] == ["<bos>", "keywords", ":"] and p[-1] == "=>" and len(p) == 6 for p in a.prompts)
    assert all(len(k) == 2 for k in a.keywords)
    b = make_task("formal", 5, random_state=3)
    assert all(len(p) == 3 for p in b.prompts)
    with pytest.raises(ValueError):
        make_task("nope", 3)


def test_task_oracles_on_hand_written_sentences():
    a = make_task("keywords", 1, random_state=0)
    a.keywords[0] = ["fox", "see"]
    assert a.satisfied(0, "the foxes saw a river . more words".split())
    assert not a.satisfied(0, "the fox chases a dog .".split())
    b = make_task("formal", 1, random_state=0)
    b.prompts[0] = ["<bos>", "the", "man"]
    assert b.satisfied(0, "peruses the manuscript . lol".split())
    assert not b.satisfied(0, "skims the comic .".split())


def test_end_mask_stops_after_first_period():
    t = torch.tensor([VOCAB.encode("the fox . sees".split())])
    assert _end_mask(t).tolist() == [[True, True, True, False]]


def test_zero_initialised_heads_leave_p_unchanged(base):
    task = make_task("formal", 4, random_state=0)
    prompts = torch.tensor([VOCAB.encode(p) for p in task.prompts])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = sample(base, prompts, 6, "base", generator=g1)
    head = TokenHead(base.d_model, base.vocab_size)
    out = sample(base, prompts, 6, "nado", head, generator=g2)
    assert torch.equal(ref["tokens"], out["tokens"])
    torch.testing.assert_close(out["logq"], out["logp"], atol=1e-5, rtol=0)
    s = score(base, prompts, ref["tokens"], "fudge", PrefixClassifier(base.vocab_size))
    torch.testing.assert_close(s["logq"], s["logp"], atol=1e-5, rtol=0)


def test_sample_and_score_agree(base):
    task = make_task("formal", 3, random_state=1)
    prompts = torch.tensor([VOCAB.encode(p) for p in task.prompts])
    torch.manual_seed(0)
    head = TokenHead(base.d_model, base.vocab_size)
    torch.nn.init.normal_(head.out.weight, std=0.5)
    out = sample(base, prompts, 5, "nado", head, generator=torch.Generator().manual_seed(1))
    s = score(base, prompts, out["tokens"], "nado", head)
    torch.testing.assert_close(s["logq"], out["logq"], atol=1e-4, rtol=0)
    torch.testing.assert_close(s["logp"], out["logp"], atol=1e-4, rtol=0)


def test_nado_with_exact_r_recovers_the_constrained_distribution():
    """The closed form: with the exact R^C, prod_t p(x_t|x_<t) R(x_<=t)/R(x_<t) = p(x|C) (tabular model)."""
    rng = np.random.default_rng(0)
    V, T = 3, 3
    tables = {}

    def nxt(prefix):
        if prefix not in tables:
            tables[prefix] = rng.dirichlet(np.ones(V))
        return tables[prefix]

    probs = enumerate_sequences(nxt, V, T)
    def oracle(x):
        return x.count(2) >= 2
    target, _ = exact_constrained_distribution(probs, oracle)
    r = exact_oracle_values(probs, oracle)
    q = {}
    for x in probs:
        lq = 0.0
        for t in range(1, T + 1):
            w = np.array([nxt(x[:t - 1])[v] * (r[x[:t - 1] + (v,)] if not math.isnan(r[x[:t - 1] + (v,)]) else 0)
                          for v in range(V)])
            lq += math.log(w[x[t - 1]] / w.sum()) if w[x[t - 1]] > 0 else -math.inf
        q[x] = math.exp(lq)
    assert kl_divergence(target, q) == pytest.approx(0.0, abs=1e-12)
    assert sum(q.values()) == pytest.approx(1.0)


def test_nado_regulariser_vanishes_for_consistent_r():
    """With sigmoid(r) constant in v and equal to R(x_<=t), the consistency KL is 0."""
    B, L, V, P = 2, 5, 12, 2
    logp = torch.log_softmax(torch.randn(B, L, V), -1)
    r = torch.full((B, L, V), 0.3)
    tokens = torch.tensor([[1, 1, 5, 6, 7], [1, 1, 8, 9, 10]])  # no stop token (ids 0-4) among generated ids
    ce, reg = nado_losses(r, logp, tokens, torch.tensor([1.0, 0.0]), P)
    assert float(reg) == pytest.approx(0.0, abs=1e-6)
    expected = 0.5 * (-math.log(torch.sigmoid(torch.tensor(0.3)).item()) - math.log(1 - torch.sigmoid(torch.tensor(0.3)).item()))
    assert float(ce) == pytest.approx(expected, rel=1e-5)


def test_guides_and_metrics():
    out = torch.zeros(2, 3)
    torch.testing.assert_close(guide_log_weights("nado", out), torch.full((2, 3), math.log(0.5)))
    assert torch.equal(guide_log_weights("finetune", out), out)
    with pytest.raises(ValueError):
        guide_log_weights("x", out)
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)


def test_adam_matches_torch():
    from papers.nado.nado import _Adam
    torch.manual_seed(0)
    a = torch.randn(5, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    mine, ref = _Adam([a], 0.01), torch.optim.Adam([b], lr=0.01)
    for _ in range(5):
        for p, opt in ((a, mine), (b, ref)):
            opt.zero_grad()
            ((p ** 3).sum() + p.sin().sum()).backward()
            opt.step()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_base_log_probs_use_an_untied_head():
    from common.tinylm import TinyGPT, TinyGPTConfig

    torch.manual_seed(2)
    model = TinyGPT(TinyGPTConfig(VOCAB.size, d_model=32, n_layers=2, n_heads=2, context=64, tie_embeddings=False))
    lm = BaseLM(model)
    idx = torch.randint(0, VOCAB.size, (2, 12), generator=torch.Generator().manual_seed(3))
    h, logp = lm.features(idx)
    with torch.no_grad():
        torch.testing.assert_close(logp, torch.log_softmax(model(idx), -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(lm.logp_of(h), logp, atol=0, rtol=0)
