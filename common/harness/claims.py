"""Evaluating a paper's claims against the metrics a run recorded.

Every claim has a ``kind`` (see :data:`common.harness.spec.CLAIM_KINDS`): ``paper`` (a claim the
paper makes), ``sanity`` (true by construction or by a theorem) or ``peer`` (agreement with a peer
library). Only ``paper`` claims make a paper's verdict and score; the other kinds are checked the same
way and shown separately, so an identity can never pass for a reproduced result.

Status of a claim at a profile:

- ``reproduced``: the check holds;
- ``not_reproduced``: the check fails and the claim is marked ``expected_outcome:
  not_reproduced`` in paper.yaml (an honest negative result, stays visible);
- ``inconclusive``: the claim's ``decisive`` expression is false: this experiment cannot decide the
  claim (the teacher cannot do the task, the effect is inside the seed noise, the baseline is at
  chance). The check is still computed and shown, but weighs nothing in the verdict;
- ``failed``: the check fails (or its metrics were never recorded) although the
  claim is expected to hold; this fails the run;
- ``pending``: not evaluated (no run at this profile yet).

A claim marked not_reproduced whose check now holds is reported as ``reproduced``
with a note, so that a fixed replication is noticed rather than hidden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from . import expressions
from .spec import CLAIM_KINDS, CLAIM_STATUSES, Claim, PaperSpec


@dataclass
class ClaimResult:
    id: str
    status: str
    value: Any
    paper_value: Any
    metrics: dict
    message: str = ""
    weight: float = 1.0
    kind: str = "paper"
    holds: bool | None = None  # the check's own truth value (also for inconclusive claims)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def must_hold_but_failed(self) -> bool:
        return self.status == "failed"

    @property
    def counts(self) -> bool:
        """Counts in the verdict: a paper claim the experiment could decide."""
        return self.kind == "paper" and self.status != "inconclusive"


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def _truth(value) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


def _is_nan(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_is_nan(v) for v in value)
    return value is None or (isinstance(value, float) and math.isnan(value))


def _nan_metrics(claim: Claim, metrics: dict) -> list[str]:
    """Metrics read by the check or the decisive condition that are NaN (or hold a NaN element)."""
    names = expressions.metric_names(claim.check)
    if claim.decisive:
        names += expressions.metric_names(claim.decisive)
    return sorted({n for n in names if n in metrics and _is_nan(metrics[n])})


def evaluate_claim(claim: Claim, metrics: dict) -> ClaimResult:
    """The status of one claim; raises :class:`expressions.ExpressionError` naming the claim."""
    used = {name: metrics[name] for name in claim.metrics if name in metrics}

    def result(status, value=None, message="", holds=None):
        return ClaimResult(claim.id, status, value, claim.paper_value, used, message, claim.weight, claim.kind, holds)

    nan = _nan_metrics(claim, metrics)
    if nan:
        # a NaN never decides anything: `not (x > 1)` would pass and a NaN `decisive` would hide a failure
        status = "not_reproduced" if claim.expected_outcome == "not_reproduced" else "failed"
        return result(status, message=f"metric(s) recorded as NaN: {', '.join(nan)}")
    try:
        try:
            holds = _truth(expressions.evaluate(claim.check, metrics))
            value = _clean(expressions.evaluate(claim.value, metrics)) if claim.value else None
            decisive = _truth(expressions.evaluate(claim.decisive, metrics)) if claim.decisive else True
        except expressions.MissingMetricError as exc:
            return result("failed", message=str(exc))
    except expressions.ExpressionError as exc:
        raise expressions.ExpressionError(f"claim {claim.id}: {exc}") from None
    if not decisive:
        return result("inconclusive", value, f"the experiment cannot decide ({claim.decisive} is false): "
                      f"{claim.explanation}", holds)
    if holds:
        message = ""
        if claim.expected_outcome == "not_reproduced":
            message = "marked not_reproduced in paper.yaml but the check now holds: update the claim"
        return result("reproduced", value, message, holds)
    if claim.expected_outcome == "not_reproduced":
        return result("not_reproduced", value, claim.explanation, holds)
    return result("failed", value, f"check does not hold: {claim.check}", holds)


def evaluate_claims(spec: PaperSpec, profile: str, metrics: dict, *, only_recorded: bool = False) -> list[ClaimResult]:
    """Evaluate every claim of ``spec`` that must hold at ``profile``.

    With ``only_recorded`` (used inside a notebook), claims whose metrics were not all
    recorded by this kernel are skipped instead of failing: they belong to another
    notebook of the paper.
    """
    results = []
    for claim in spec.claims_for(profile):
        if only_recorded and not all(name in metrics for name in claim.metrics):
            continue
        try:
            results.append(evaluate_claim(claim, metrics))
        except expressions.ExpressionError as exc:
            raise expressions.ExpressionError(f"{spec.slug}: {exc}") from None
    return results


def score(results: list[ClaimResult]) -> float | None:
    """Weighted fraction of the decidable ``paper`` claims that reproduced (None when there are none)."""
    counted = [r for r in results if r.counts]
    total = sum(r.weight for r in counted)
    if not total:
        return None
    return sum(r.weight for r in counted if r.status == "reproduced") / total


def verdict(results: list[ClaimResult]) -> str:
    """From the ``paper`` claims only: ``Re`` (all decidable ones reproduced), ``partial``, ``not-Re``
    (none), ``inconclusive`` (no paper claim could be decided, or the paper has none at this profile) or
    ``pending`` (not evaluated)."""
    if not results or any(r.status == "pending" for r in results):
        return "pending"
    papers = [r for r in results if r.kind == "paper"]
    value = score(papers)
    if value is None:
        return "inconclusive"
    if value >= 1.0:
        return "Re"
    return "partial" if value > 0 else "not-Re"


def counts(results: list[ClaimResult]) -> dict:
    """``{kind: {status: number}}`` for every kind and status (zeros included, for stable tables)."""
    table = {kind: {status: 0 for status in CLAIM_STATUSES} for kind in CLAIM_KINDS}
    for r in results:
        table[r.kind][r.status] += 1
    return table
