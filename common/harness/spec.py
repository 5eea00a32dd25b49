"""The paper contract: loading and validating ``papers/<slug>/paper.yaml``.

Every error names the file and the field, so a malformed ``paper.yaml`` is fixed in
one look. See CONTRIBUTING.md for the full contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from . import expressions

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPERS_ROOT = REPO_ROOT / "papers"
PROFILES = ("ci", "full")
CLAIM_STATUSES = ("reproduced", "not_reproduced", "inconclusive", "failed", "pending")
# What kind of evidence a claim is. Only `paper` claims make a paper's verdict and score.
CLAIM_KINDS = {
    "paper": "a claim the paper makes (counts in the verdict)",
    "sanity": "true by construction or by a theorem the code must satisfy (identities, equivariance by "
              "construction, parameter counts, NFE arithmetic, a budget rule)",
    "peer": "agreement with a peer library",
}
SLUG_RE = re.compile(r"^[a-z][a-z0-9_]*$")
NOTEBOOK_RE = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
CLAIM_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
DEFAULT_CELL_TIMEOUT_S = {"ci": 600, "full": 7200}

REQUIRED_FIELDS = {
    "title": str,
    "authors": list,
    "year": int,
    "venue": str,
    "official_code": str,
    "notebooks": list,
    "claims": list,
}
OPTIONAL_FIELDS = {
    "arxiv": str,
    "doi": str,
    "peers": list,
    "profiles": dict,
    "cell_timeout_s": dict,
    "summary": str,
    "resources": dict,
}
# What a profile needs from a machine (BACKEND=ray schedules with it; the scoreboard lists GPU papers).
RESOURCE_KEYS = {"cpus": (int, float), "gpus": (int, float), "memory_gb": (int, float), "minutes": (int, float)}


class PaperSpecError(ValueError):
    """paper.yaml is missing, malformed or inconsistent."""


class UnknownPaperError(LookupError):
    """No folder papers/<slug>/ with a paper.yaml."""


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str
    check: str
    profiles: tuple[str, ...]
    weight: float = 1.0
    paper_value: Any = None
    value: str = ""
    expected_outcome: str = "reproduced"
    explanation: str = ""
    kind: str = "paper"
    decisive: str = ""
    #: per-profile overrides of ``expected_outcome`` (``expected_outcome: {ci: reproduced, full: not_reproduced}``)
    outcome_by_profile: tuple[tuple[str, str], ...] = ()

    def for_profile(self, profile: str) -> "Claim":
        """This claim with ``expected_outcome`` resolved for ``profile``."""
        outcome = dict(self.outcome_by_profile).get(profile, self.expected_outcome)
        return self if outcome == self.expected_outcome else replace(self, expected_outcome=outcome)

    def expected_label(self) -> str:
        """``not reproduced``, ``not reproduced at full``, or "" for the table's marker."""
        bad = [p for p in self.profiles if self.for_profile(p).expected_outcome == "not_reproduced"]
        if not bad:
            return ""
        return "not reproduced" if len(bad) == len(self.profiles) else f"not reproduced at {', '.join(bad)}"

    @property
    def metrics(self) -> list[str]:
        """Every metric the claim reads (its check, its displayed value and its decisive condition)."""
        names = expressions.metric_names(self.check)
        for extra in (self.value, self.decisive):
            if extra:
                names += [n for n in expressions.metric_names(extra) if n not in names]
        return names

    @property
    def counts(self) -> bool:
        """Only the paper's own claims make the verdict."""
        return self.kind == "paper"

    def applies_to(self, profile: str) -> bool:
        return profile in self.profiles


@dataclass(frozen=True)
class PaperSpec:
    slug: str
    root: Path
    title: str
    authors: tuple[str, ...]
    year: int
    venue: str
    official_code: str
    notebooks: tuple[str, ...]
    claims: tuple[Claim, ...]
    arxiv: str = ""
    doi: str = ""
    peers: tuple[str, ...] = ()
    profiles: dict = field(default_factory=dict)
    cell_timeout_s: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    summary: str = ""

    @property
    def yaml_path(self) -> Path:
        return self.root / "paper.yaml"

    def notebook_path(self, notebook: str) -> Path:
        return self.root / "notebooks" / notebook

    @staticmethod
    def notebook_key(notebook: str) -> str:
        """``01_soug.ipynb`` -> ``01_soug`` (the key used in profiles, metrics and goldens)."""
        return notebook.removesuffix(".ipynb")

    def overrides(self, profile: str, notebook: str) -> dict:
        """Parameter overrides of ``profile`` for ``notebook`` (``ci`` has none by definition)."""
        if profile == "ci":
            return {}
        return dict((self.profiles.get(profile) or {}).get(self.notebook_key(notebook)) or {})

    def timeout(self, profile: str) -> int:
        return int(self.cell_timeout_s.get(profile, DEFAULT_CELL_TIMEOUT_S[profile]))

    def claims_for(self, profile: str) -> list[Claim]:
        return [c.for_profile(profile) for c in self.claims if c.applies_to(profile)]


def paper_dir(slug: str, papers_root: Path | None = None) -> Path:
    return Path(papers_root or PAPERS_ROOT) / slug


def list_papers(papers_root: Path | None = None) -> list[str]:
    """Slugs of every folder under papers/ that has a paper.yaml, sorted."""
    root = Path(papers_root or PAPERS_ROOT)
    return sorted(p.parent.name for p in root.glob("*/paper.yaml"))


def load(slug: str, papers_root: Path | None = None) -> PaperSpec:
    """Load and validate ``papers/<slug>/paper.yaml``."""
    root = paper_dir(slug, papers_root).resolve()
    path = root / "paper.yaml"
    if not SLUG_RE.match(slug or ""):
        raise UnknownPaperError(f"{slug!r} is not a valid paper slug (lowercase letters, digits, underscores)")
    if not path.is_file():
        known = ", ".join(list_papers(papers_root)) or "none"
        raise UnknownPaperError(f"unknown paper {slug!r}: {path} does not exist (papers with a paper.yaml: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PaperSpecError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, slug=slug, root=root, where=str(path))


def parse(data: Any, *, slug: str, root: Path, where: str) -> PaperSpec:
    def fail(message: str):
        raise PaperSpecError(f"{where}: {message}")

    if not isinstance(data, dict):
        fail("the top level must be a mapping")
    unknown = set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        fail(f"unknown field(s) {sorted(unknown)}; allowed: {sorted({**REQUIRED_FIELDS, **OPTIONAL_FIELDS})}")
    for name in REQUIRED_FIELDS:
        if name not in data:
            fail(f"missing required field {name!r}")
    for name, kind in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        if name in data and not isinstance(data[name], kind):
            fail(f"field {name!r} must be of type {kind.__name__}, got {type(data[name]).__name__}")

    if not data["authors"] or not all(isinstance(a, str) for a in data["authors"]):
        fail("authors must be a non-empty list of names")
    notebooks = data["notebooks"]
    if not notebooks:
        fail("notebooks must list at least one notebook")
    for nb in notebooks:
        if not isinstance(nb, str) or not NOTEBOOK_RE.match(nb):
            fail(f"notebook {nb!r} must be named NN_<name>.ipynb (lowercase, digits, underscores)")
    if len(set(notebooks)) != len(notebooks):
        fail("notebooks are listed twice")

    profiles = data.get("profiles") or {}
    keys = {PaperSpec.notebook_key(nb) for nb in notebooks}
    for profile, per_notebook in profiles.items():
        if profile not in PROFILES:
            fail(f"profiles.{profile}: unknown profile; allowed: {list(PROFILES)}")
        if profile == "ci":
            fail("profiles.ci: the ci profile is the notebooks' own defaults and takes no overrides")
        if not isinstance(per_notebook, dict):
            fail(f"profiles.{profile} must map notebook names (without .ipynb) to parameter overrides")
        for key, overrides in per_notebook.items():
            if key not in keys:
                fail(f"profiles.{profile}.{key}: no such notebook; notebooks: {sorted(keys)}")
            if overrides is not None and not isinstance(overrides, dict):
                fail(f"profiles.{profile}.{key} must be a mapping of parameter names to values")

    timeouts = data.get("cell_timeout_s") or {}
    for profile, seconds in timeouts.items():
        if profile not in PROFILES or not isinstance(seconds, int) or seconds <= 0:
            fail(f"cell_timeout_s.{profile}: must be a positive integer for a known profile")

    resources = data.get("resources") or {}
    for profile, needs in resources.items():
        if profile not in PROFILES:
            fail(f"resources.{profile}: unknown profile; allowed: {list(PROFILES)}")
        if not isinstance(needs, dict):
            fail(f"resources.{profile} must be a mapping such as {{gpus: 1, memory_gb: 16, minutes: 30}}")
        for key, value in needs.items():
            if key not in RESOURCE_KEYS:
                fail(f"resources.{profile}.{key}: unknown; allowed: {sorted(RESOURCE_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, RESOURCE_KEYS[key]) or value < 0:
                fail(f"resources.{profile}.{key}: must be a non-negative number, got {value!r}")

    claims = []
    for index, raw in enumerate(data["claims"]):
        claims.append(_parse_claim(raw, f"claims[{index}]", fail))
    ids = [c.id for c in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        fail(f"duplicate claim id(s): {duplicates}")

    return PaperSpec(
        slug=slug,
        root=root,
        title=data["title"],
        authors=tuple(data["authors"]),
        year=data["year"],
        venue=data["venue"],
        official_code=data["official_code"],
        notebooks=tuple(notebooks),
        claims=tuple(claims),
        arxiv=str(data.get("arxiv", "")),
        doi=str(data.get("doi", "")),
        peers=tuple(data.get("peers") or ()),
        profiles=profiles,
        cell_timeout_s=timeouts,
        resources=resources,
        summary=data.get("summary", ""),
    )


_CLAIM_REQUIRED = ("id", "kind", "statement", "source", "check", "profiles")
_CLAIM_OPTIONAL = ("weight", "paper_value", "value", "expected_outcome", "explanation", "decisive")


def _parse_claim(raw: Any, where: str, fail) -> Claim:
    if not isinstance(raw, dict):
        fail(f"{where} must be a mapping")
    unknown = set(raw) - set(_CLAIM_REQUIRED) - set(_CLAIM_OPTIONAL)
    if unknown:
        fail(f"{where}: unknown field(s) {sorted(unknown)}")
    for name in _CLAIM_REQUIRED:
        if name not in raw:
            fail(f"{where}: missing required field {name!r}")
    claim_id = raw["id"]
    where = f"claims[{claim_id}]" if isinstance(claim_id, str) else where
    if not isinstance(claim_id, str) or not CLAIM_ID_RE.match(claim_id):
        fail(f"{where}: id must be lowercase letters, digits and underscores")
    for name in ("statement", "source", "check"):
        if not isinstance(raw[name], str) or not raw[name].strip():
            fail(f"{where}: {name} must be a non-empty string")
    profiles = raw["profiles"]
    if not isinstance(profiles, list) or not profiles or not set(profiles) <= set(PROFILES):
        fail(f"{where}: profiles must be a non-empty list drawn from {list(PROFILES)}")
    try:
        expressions.validate(raw["check"])
        if not expressions.metric_names(raw["check"]):
            fail(f"{where}: check {raw['check']!r} names no metric, so it asserts nothing")
    except expressions.ExpressionError as exc:
        fail(f"{where}: {exc}")
    if raw["kind"] not in CLAIM_KINDS:
        fail(f"{where}: kind must be one of {list(CLAIM_KINDS)} "
             f"({'; '.join(f'{k}: {v}' for k, v in CLAIM_KINDS.items())}), got {raw['kind']!r}")
    for name in ("value", "decisive"):
        text = raw.get(name, "")
        if text:
            if not isinstance(text, str):
                fail(f"{where}: {name} must be an expression string")
            try:
                expressions.validate(text)
            except expressions.ExpressionError as exc:
                fail(f"{where}: {name}: {exc}")
    value = raw.get("value", "")
    decisive = raw.get("decisive", "")
    if decisive and not expressions.metric_names(decisive):
        fail(f"{where}: decisive {decisive!r} names no metric, so it cannot tell whether the experiment decides")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        fail(f"{where}: weight must be a positive number")
    outcome = raw.get("expected_outcome", "reproduced")
    by_profile: dict = {}
    if isinstance(outcome, dict):
        # one expected outcome per profile, e.g. {ci: reproduced, full: not_reproduced}
        unknown = sorted(set(outcome) - set(profiles))
        if unknown:
            fail(f"{where}: expected_outcome names profile(s) {unknown} the claim does not apply to ({profiles})")
        by_profile, outcome = dict(outcome), "reproduced"
    for value_ in [outcome, *by_profile.values()]:
        if value_ not in ("reproduced", "not_reproduced"):
            fail(f"{where}: expected_outcome must be 'reproduced' or 'not_reproduced' "
                 "(or a mapping from profile to one of them)")
    explanation = raw.get("explanation", "")
    if "not_reproduced" in [outcome, *by_profile.values()] and not (isinstance(explanation, str) and explanation.strip()):
        fail(f"{where}: a not_reproduced claim needs an explanation")
    if decisive and not (isinstance(explanation, str) and explanation.strip()):
        fail(f"{where}: a claim with `decisive:` needs an explanation (shown when the experiment cannot decide)")
    return Claim(
        id=claim_id,
        statement=raw["statement"].strip(),
        source=raw["source"].strip(),
        check=raw["check"].strip(),
        profiles=tuple(profiles),
        weight=float(weight),
        paper_value=raw.get("paper_value"),
        value=(value or "").strip(),
        expected_outcome=outcome,
        outcome_by_profile=tuple(sorted(by_profile.items())),
        explanation=(explanation or "").strip(),
        kind=raw["kind"],
        decisive=(decisive or "").strip(),
    )
