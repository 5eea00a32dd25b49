"""Attempt-2 probes: a short seeded run of one parameterisation, then its held-out eps loss and sample quality.

``OMP_NUM_THREADS=1 python -m common.digits16.probe --prediction x0 --steps 300 --out probe_x0.json``.
The decision rule between the parameterisations is in ``results/zoo/digits16_attempt2/README.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common.diffusion.model import build_denoiser
from common.digits16.evaluate import sample_quality
from common.digits16.model import PREDICTIONS
from common.digits16.train import Train16Config, heldout_loss16, train_digits16_eps


def run_probe(prediction: str, steps: int, seed: int = 0, batch_size: int = 64, n_eval: int = 200,
              warmup_steps: int = 50, eval_seed: int = 2) -> dict:
    torch.set_num_threads(1)
    cfg = Train16Config(steps=steps, batch_size=batch_size, warmup_steps=warmup_steps, seed=seed, prediction=prediction)
    result = train_digits16_eps(cfg, log_every=50)
    net = result.ema
    heldout = {"heldout_eps_loss_conditional": heldout_loss16(net, label_dropout=0.0),
               "heldout_eps_loss_unconditional": heldout_loss16(net, label_dropout=1.0)}
    quality, _ = sample_quality(build_denoiser(net), n=n_eval, seed=eval_seed)
    return {"prediction": prediction, "steps": steps, "batch_size": batch_size, "seed": seed, "warmup_steps": warmup_steps,
            "n_eval": n_eval, "eval_seed": eval_seed, "final_loss": result.final_loss(100),
            "seconds": round(result.seconds, 1), "cpu_seconds": round(result.cpu_seconds, 1),
            "seconds_per_step": round(result.seconds / steps, 3), **heldout, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prediction", choices=PREDICTIONS, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = run_probe(args.prediction, args.steps, args.seed, args.batch_size, args.n_eval)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(json.dumps(record, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
