"""Evaluating a paper's claims against the metrics a run recorded.

Status of a claim at a profile:

- ``reproduced``: the check holds;
- ``not_reproduced``: the check fails and the claim is marked ``expected_outcome:
  not_reproduced`` in paper.yaml (an honest negative result, stays visible);
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
from .spec import Claim, PaperSpec


@dataclass
class ClaimResult:
    id: str
    status: str
    value: Any
    paper_value: Any
    metrics: dict
    message: str = ""
    weight: float = 1.0

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def must_hold_but_failed(self) -> bool:
        return self.status == "failed"


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def evaluate_claim(claim: Claim, metrics: dict) -> ClaimResult:
    used = {name: metrics[name] for name in claim.metrics if name in metrics}
    try:
        holds = expressions.evaluate(claim.check, metrics)
    except expressions.MissingMetricError as exc:
        return ClaimResult(claim.id, "failed", None, claim.paper_value, used, str(exc), claim.weight)
    value = None
    if claim.value:
        try:
            value = _clean(expressions.evaluate(claim.value, metrics))
        except expressions.MissingMetricError as exc:
            return ClaimResult(claim.id, "failed", None, claim.paper_value, used, f"value: {exc}", claim.weight)
    if isinstance(holds, float) and math.isnan(holds):
        holds = False
    if holds:
        message = ""
        if claim.expected_outcome == "not_reproduced":
            message = "marked not_reproduced in paper.yaml but the check now holds: update the claim"
        return ClaimResult(claim.id, "reproduced", value, claim.paper_value, used, message, claim.weight)
    if claim.expected_outcome == "not_reproduced":
        return ClaimResult(claim.id, "not_reproduced", value, claim.paper_value, used, claim.explanation, claim.weight)
    return ClaimResult(claim.id, "failed", value, claim.paper_value, used, f"check does not hold: {claim.check}", claim.weight)


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
        results.append(evaluate_claim(claim, metrics))
    return results


def score(results: list[ClaimResult]) -> float | None:
    """Weighted fraction of claims reproduced (None when there are none)."""
    total = sum(r.weight for r in results)
    if not total:
        return None
    return sum(r.weight for r in results if r.status == "reproduced") / total


def verdict(results: list[ClaimResult]) -> str:
    """``Re`` (all reproduced), ``partial``, ``not-Re`` (none) or ``pending`` (no claims evaluated)."""
    value = score(results)
    if value is None or any(r.status == "pending" for r in results):
        return "pending"
    if value >= 1.0:
        return "Re"
    return "partial" if value > 0 else "not-Re"
