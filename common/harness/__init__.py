"""The replication harness: notebook API, runner, claims, goldens, provenance, scoreboard.

Notebooks use only the first five names::

    from common.harness import record, figure, seed_everything, show_claims, claim_verdicts
"""

from .recording import claim_verdicts, figure, record, record_many, recorded, show_claims
from .seeding import seed_everything

__all__ = ["record", "record_many", "recorded", "figure", "seed_everything", "show_claims", "claim_verdicts"]
