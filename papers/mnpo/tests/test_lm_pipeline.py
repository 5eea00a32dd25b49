import math

import numpy as np
import pytest
import torch

from common.tinylm import VOCAB
from papers.mnpo.lm_pipeline import (
    JUDGES,
    Prompts,
    TrainConfig,
    build_pairs,
    has_cycle,
    judge_scores,
    load_reference,
    make_prompts,
    max_parameter_difference,
    pairwise_preference,
    response_mask,
    run_pipeline,
    sequence_logprob,
    split_prompts,
)


@pytest.fixture(scope="module")
def ref():
    return load_reference("tinylm_ci")


def test_prompts_are_keyword_prompts():
    p = make_prompts(5, random_state=3)
    assert p.ids.shape == (5, 7) and len(p) == 5
    for ids, keys in zip(p.ids, p.keywords, strict=True):
        words = VOCAB.decode(ids.tolist())
        assert words[:3] == ["<bos>", "keywords", ":"] and words[-1] == "=>" and words[3:6] == keys
    assert make_prompts(5, random_state=3).keywords == p.keywords
    with pytest.raises(ValueError):
        make_prompts(0)


def test_judge_scores_exact():
    keys = ["fox", "see", "hat"]
    s = judge_scores(keys, VOCAB.encode(["the", "fox", "sees", "a", "hat", ".", "<eos>", "the"]))
    assert s[0] == 1.0 and s[2] == -6.0
    unfinished = judge_scores(keys, VOCAB.encode(["the", "fox", "sees", "a"]))
    assert unfinished[1] == -1.0 and unfinished[2] == -math.inf
    assert judge_scores(keys, VOCAB.encode(["a", "hat", "."]))[0] == pytest.approx(1 / 3)


def test_pairwise_preference_and_cycles():
    # the Condorcet profile: three judges with rotated orders give a strict 3-cycle of the mixture
    scores = np.array([[3, 1, 2], [2, 3, 1], [1, 2, 3]], dtype=float)    # responses x judges
    P = pairwise_preference(scores).mean(-1)
    np.testing.assert_allclose(P + P.T, 1.0)
    assert has_cycle(P) and not has_cycle(np.full((3, 3), 0.5))
    transitive = pairwise_preference(np.array([[3.0], [2.0], [1.0]])).mean(-1)
    assert not has_cycle(transitive)
    assert len(JUDGES) == 3


def test_response_mask_stops_after_first_period():
    toks = torch.tensor([VOCAB.encode(["a", "fox", ".", "the", "."])])
    assert response_mask(toks).tolist() == [[True, True, True, False, False]]


def test_sequence_logprob_matches_token_sum(ref):
    p = make_prompts(2, random_state=1)
    toks = torch.tensor([VOCAB.encode(["the", "fox", ".", "a"]), VOCAB.encode(["a", "hat", "sees", "."])])
    lp = sequence_logprob(ref, p.ids, toks)
    with torch.no_grad():
        logits = ref(torch.cat([p.ids, toks], 1))
    logp = torch.log_softmax(logits, -1)
    manual = [sum(float(logp[b, 6 + t, toks[b, t]]) for t in range(n)) for b, n in ((0, 3), (1, 4))]
    np.testing.assert_allclose(lp.detach().numpy(), manual, rtol=1e-5)


def test_build_pairs_prefers_the_winner(ref):
    p = make_prompts(6, random_state=2)
    pairs = build_pairs(ref, p, n_samples=4, max_new_tokens=12, seed=0)
    assert pairs["y_w"].shape == pairs["y_l"].shape and len(pairs["y_w"]) == len(pairs["prompt_ids"])
    assert 0 < pairs["kept"] <= 1
    again = build_pairs(ref, p, n_samples=4, max_new_tokens=12, seed=0)
    assert torch.equal(again["y_w"], pairs["y_w"])


def test_mnpo_first_iterate_is_inpo_and_dpo_differs(ref):
    p = split_prompts(make_prompts(12, random_state=4), 2)
    kw = dict(T=2, n_samples=4, max_new_tokens=10, seed=5, config=TrainConfig(epochs=1, batch_size=4))
    inpo = run_pipeline("inpo", ref, p, strength=3.0, **kw)
    mnpo = run_pipeline("mnpo", ref, p, strength=3.0, **kw)
    dpo = run_pipeline("dpo", ref, p[:1], strength=0.3, **{**kw, "T": 1})
    assert max_parameter_difference(inpo["iterates"][1], mnpo["iterates"][1]) == 0.0
    # at t = 2 MNPO's population is (pi_1, pi_0): the iterates part
    assert max_parameter_difference(inpo["iterates"][2], mnpo["iterates"][2]) > 0.0
    assert max_parameter_difference(inpo["iterates"][1], dpo["iterates"][1]) > 0.0
    assert max_parameter_difference(ref, inpo["iterates"][0]) == 0.0
    with pytest.raises(ValueError):
        run_pipeline("ppo", ref, p, strength=1.0, **kw)
    with pytest.raises(ValueError):      # one prompt split per iteration (the official per-iteration data)
        run_pipeline("inpo", ref, p[0], strength=1.0, **kw)


def test_split_prompts_disjoint_consecutive():
    p = make_prompts(10, random_state=6)
    parts = split_prompts(p, 3)
    assert [len(q) for q in parts] == [3, 3, 3]
    assert [k for q in parts for k in q.keywords] == p.keywords[:9]
    with pytest.raises(ValueError):
        split_prompts(make_prompts(2), 3)


def test_empty_prompts_subset():
    p = make_prompts(3, random_state=0)
    assert isinstance(p.subset([0, 2]), Prompts) and len(p.subset([0, 2])) == 2
