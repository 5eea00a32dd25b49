"""Claim kinds, the decisive condition and verdicts computed from paper claims only."""

import pytest

from common.harness import claims, expressions
from common.harness.spec import Claim


def claim(id="c", check="m > 0", kind="paper", decisive="", outcome="reproduced", explanation="why"):
    return Claim(id=id, statement="s", source="Sec. 1", check=check, profiles=("ci",), kind=kind,
                 decisive=decisive, expected_outcome=outcome, explanation=explanation)


def test_decisive_false_makes_the_claim_inconclusive_whatever_the_check():
    for m in (1.0, -1.0):
        result = claims.evaluate_claim(claim(decisive="noise < 0.5"), {"m": m, "noise": 2.0})
        assert result.status == "inconclusive"
        assert result.holds is (m > 0)
        assert "cannot decide" in result.message
    assert claims.evaluate_claim(claim(decisive="noise < 0.5"), {"m": -1.0, "noise": 0.1}).status == "failed"


def test_verdict_and_score_count_paper_claims_only():
    results = [
        claims.evaluate_claim(claim("a"), {"m": 1.0}),
        claims.evaluate_claim(claim("b", check="m < 0", outcome="not_reproduced"), {"m": 1.0}),
        claims.evaluate_claim(claim("s", kind="sanity"), {"m": 1.0}),
        claims.evaluate_claim(claim("p", kind="peer"), {"m": 1.0}),
        claims.evaluate_claim(claim("i", decisive="n > 1"), {"m": 1.0, "n": 0}),
    ]
    assert [r.status for r in results] == ["reproduced", "not_reproduced", "reproduced", "reproduced", "inconclusive"]
    assert claims.score(results) == 0.5
    assert claims.verdict(results) == "partial"
    table = claims.counts(results)
    assert table["paper"]["reproduced"] == 1 and table["paper"]["inconclusive"] == 1
    assert table["sanity"]["reproduced"] == 1 and table["peer"]["reproduced"] == 1
    # identities alone never make a paper "reproduced"
    assert claims.verdict(results[2:4]) == "inconclusive"
    assert claims.verdict([results[0], results[4]]) == "Re"
    assert claims.verdict([results[4]]) == "inconclusive"


def test_a_failing_sanity_claim_fails_the_run():
    assert claims.evaluate_claim(claim(kind="sanity"), {"m": -1.0}).must_hold_but_failed


def test_bad_expression_names_the_claim():
    with pytest.raises(expressions.ExpressionError, match="claim big: overflow"):
        claims.evaluate_claim(claim("big", check="m ** 1e6 > 0"), {"m": 10.0})


def test_nan_never_decides_and_arrays_must_be_reduced():
    nan = float("nan")
    assert claims.evaluate_claim(claim(check="not (m > 1)"), {"m": nan}).status == "failed"
    result = claims.evaluate_claim(claim(decisive="n > 1"), {"m": 1.0, "n": nan})
    assert result.status == "failed" and "NaN" in result.message
    assert claims.evaluate_claim(claim(check="min(m) > 1"), {"m": [5.0, None]}).status == "failed"
    assert claims.evaluate_claim(claim(check="m > 0", outcome="not_reproduced"), {"m": nan}).status == "not_reproduced"
    with pytest.raises(expressions.ExpressionError, match="reduce it first"):
        claims.evaluate_claim(claim(check="m"), {"m": [-1.0, -2.0]})


def test_only_sanity_claims_give_an_inconclusive_verdict_after_a_run():
    results = [claims.evaluate_claim(claim("s", kind="sanity"), {"m": 1.0})]
    assert claims.verdict(results) == "inconclusive"
