"""Post-hoc probe (the referee's; not part of ``select_encoder.py``'s rule, adopts nothing): the
deterministic encoder trained on the official product-Bernoulli relaxation instead of straight-through.

``select_encoder.py`` trains ``WBUConfig(encoder="deterministic")`` through a straight-through table: every
loss *value* is that of the one-hot Heaviside row (:func:`deterministic_hard_table`), only the gradient
comes from the smoothed bits. Here, as in the official code's training, the loss values use the smoothed
bits ``σ(2x/T)`` themselves, spread over the ``2^n`` corners as independent bits
(:func:`deterministic_relaxed_table`, ``T = 2/3``); the encoder is still read through the Heaviside at
evaluation (``WAEMDP.tables()``, hence ``state_recovery``, runs without gradients and gets the hard row).
The belief updater's targets are also built from ``tables()`` (hard rows); they do not feed back into the
latent model, so the recorded state recovery does not depend on them.

Same protocol as the decision run: candidates A (steady state ``"uniform"`` at 100) and B (off), tuning
seeds 1000-1004, the ci budget and parameters, state recovery only. Decided nothing: the rule's decision
(``encoder_selection.json``) stands; this probe only asks whether the straight-through emulation caused
its failure.

Run: ``OMP_NUM_THREADS=1 python -m papers.wasserstein_believer.probe_relaxed_encoder`` (prints; writes
nothing).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from papers.wasserstein_believer.select_encoder import CANDIDATES, recovery_for_candidate
from papers.wasserstein_believer.select_steady_state import ci_parameters, tuning_seeds
from papers.wasserstein_believer.wasserstein_believer import (
    WAEMDP,
    deterministic_hard_table,
    deterministic_relaxed_table,
)


@contextlib.contextmanager
def product_bernoulli_training():
    """Within the block, a deterministic encoder's table is the relaxed product-Bernoulli table when
    gradients are on (training) and the Heaviside one-hot table when they are off (evaluation)."""
    original = WAEMDP.encoder_table

    def encoder_table(self, states):
        if self.config.encoder != "deterministic":
            return original(self, states)
        logits = self.encode_logits(states)
        if torch.is_grad_enabled():
            return deterministic_relaxed_table(logits, self.config.encoder_temperature)
        return deterministic_hard_table(logits)

    WAEMDP.encoder_table = encoder_table
    try:
        yield
    finally:
        WAEMDP.encoder_table = original


def main() -> dict[str, list[float]]:
    torch.set_num_threads(1)
    params, seeds, table = ci_parameters(), tuning_seeds(), {}
    with product_bernoulli_training():
        for cand in CANDIDATES:
            rec = recovery_for_candidate(cand, seeds, params)
            table[cand["name"]] = rec
            print(f"{cand['name']} (product-Bernoulli training, steady_state {cand['steady_state']}): state "
                  f"recovery {', '.join(f'{x:.3f}' for x in rec)}  min {min(rec):.3f}  mean {np.mean(rec):.3f}",
                  flush=True)
    return table


if __name__ == "__main__":
    main()
