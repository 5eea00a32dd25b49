import math

import numpy as np
import pytest

from common.lm_oracles import (
    enumerate_sequences,
    exact_constrained_distribution,
    exact_oracle_values,
    first_sentence,
    formality_oracle,
    keyword_oracle,
    kl_divergence,
    parse_valid,
    rejection_sample,
)
from common.tinylm import VOCAB


def test_first_sentence_cuts_at_period_and_specials():
    assert first_sentence("the fox sees a dog . then".split()) == "the fox sees a dog .".split()
    assert first_sentence(VOCAB.encode("the fox <eos> sees".split())) == ["the", "fox"]
    assert first_sentence("sees a dog .".split(), prefix=["<bos>", "the", "fox"]) == "the fox sees a dog .".split()


def test_keyword_oracle_is_inflection_insensitive():
    c = keyword_oracle(["fox", "see"])
    assert c("the foxes saw the river .".split())
    assert not c("the fox chased the river .".split())
    with pytest.raises(ValueError):
        keyword_oracle([])
    with pytest.raises(ValueError):
        keyword_oracle(["zebra"])


def test_formality_oracle_and_parser():
    c = formality_oracle()
    assert c("the gentleman peruses the manuscript .".split())
    assert not c("the guy skims the comic .".split())
    assert not c("the gentleman peruses .".split())  # does not parse
    assert parse_valid("the fox sees the river .".split())
    assert not parse_valid("the fox sees .".split())
    with pytest.raises(ValueError):
        formality_oracle(0.0)


def test_rejection_sample_accepts_only_satisfying_samples():
    def sampler(n, rng):
        return list(rng.integers(0, 10, size=n))
    acc, draws = rejection_sample(sampler, lambda x: x < 3, 50, rng=0)
    assert len(acc) == 50 and all(a < 3 for a in acc)
    assert 0.15 < 50 / draws < 0.5
    acc, draws = rejection_sample(sampler, lambda x: False, 5, max_draws=100, rng=0)
    assert acc == [] and draws == 100
    with pytest.raises(ValueError):
        rejection_sample(sampler, bool, 0)


def _bigram(V=3, seed=0):
    rng = np.random.default_rng(seed)
    table = rng.dirichlet(np.ones(V), size=V + 1)
    return lambda prefix: table[prefix[-1] + 1 if prefix else 0]


def test_enumeration_is_a_distribution_and_refuses_large_spaces():
    probs = enumerate_sequences(_bigram(), 3, 4)
    assert len(probs) == 81 and sum(probs.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        enumerate_sequences(_bigram(), 3, 30)


def test_exact_constrained_distribution_and_r_values():
    probs = enumerate_sequences(_bigram(), 3, 3)
    def oracle(x):
        return x[-1] == 0
    target, z = exact_constrained_distribution(probs, oracle)
    assert z == pytest.approx(sum(p for x, p in probs.items() if x[-1] == 0))
    assert sum(target.values()) == pytest.approx(1.0)
    r = exact_oracle_values(probs, oracle)
    assert r[()] == pytest.approx(z)
    nxt = _bigram()
    for prefix in [(), (1,), (2, 0)]:  # consistency: R(x_<=t) = sum_v p(v | x_<=t) R(x_<=t v)
        assert r[prefix] == pytest.approx(sum(nxt(prefix)[v] * r[prefix + (v,)] for v in range(3)))
    for x in probs:
        assert r[x] == float(oracle(x))
    with pytest.raises(ValueError):
        exact_constrained_distribution(probs, lambda x: False)


def test_kl_divergence():
    p = {"a": 0.5, "b": 0.5}
    assert kl_divergence(p, p) == 0.0
    assert kl_divergence(p, {"a": 1.0}) == math.inf
    assert kl_divergence(p, {"a": 0.25, "b": 0.75}) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
