"""Why TinyGPT checkpoints did not recall, and the experiments that showed it (2026-12-04).

``tinylm_ci`` and ``tinylm_recall`` answer every recall query with one fixed colour. The checks here rule
out the evaluation and the model as the cause and point at the data's symmetry instead:

* :func:`check_evaluation` -- a hand-written oracle "model" (python lookup of the bound colour) scores 1.0
  with :func:`~common.tinylm.train.answer_accuracy` on :func:`~common.tinylm.grammar.recall_episodes`, so the
  answer positions, the ``pos - 1`` logit and the tokenisation (box numbers and colours are single tokens,
  identical in binding and query) are right;
* :func:`check_causality` -- logits of a prefix equal the prefix of the logits, and changing a future token
  leaves the past logits unchanged (no leak, no blocked attention);
* :func:`answer_losses` -- the checkpoints' loss on query answers is ``log 12`` exactly (uniform over the
  colours), not merely wrong;
* :func:`colour_collapse` -- the reason: the 12 colour embeddings of ``tinylm_ci`` have mean pairwise
  cosine 0.994 (numbers and words: far apart). Colours are exchangeable everywhere in TinyGrammar (drawn
  uniformly in every binding), so until the model copies them nothing distinguishes them; their tied
  embeddings drift together and the model can no longer tell them apart at input or output. Continued
  training on recall data cannot leave that point (no gradient towards copying an indistinguishable token);
  :func:`common.tinylm.train.perturb_colour_embeddings` (``TrainConfig.colour_noise``) breaks the symmetry.
* :func:`probe_training` -- the small experiments (a positive control from scratch, continued training with
  and without the colour noise), printed as JSON lines.

Run: ``python -m common.tinylm.recall_diagnostics checks`` (seconds) and
``python -m common.tinylm.recall_diagnostics probe --help`` (minutes per experiment on one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import grammar as G
from .model import TinyGPT, TinyGPTConfig
from .train import (
    TrainConfig,
    answer_accuracy,
    lr_at,
    make_optimizer,
    perturb_colour_embeddings,
    sample_batch,
)

COLOUR_IDS = G.VOCAB.encode(list(G.COLORS))


class OracleRecall(nn.Module):
    """A "model" whose logits at ``? box B key`` (``fmt="onehop"``: ``? box B``) put all mass on the colour
    bound to box ``B`` earlier."""

    def __init__(self, fmt: str = "tg"):
        super().__init__()
        self.fmt = G.check_recall_format(fmt)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        out = torch.zeros(b, t, G.VOCAB.size)
        lag = 2 if self.fmt == "tg" else 1  # the answer is predicted ``lag`` tokens after ``box`` (at ``key`` / at B)
        for row in range(b):
            words, bound = G.VOCAB.decode(idx[row]), {}
            for i in range(lag + 1, t):
                box = words[i - lag + 1]
                if words[i - lag] != "box" or (self.fmt == "tg" and words[i] != "key") or (
                        self.fmt == "onehop" and box not in G.NUMBERS):
                    continue
                if words[i - lag - 1] == "?":
                    if box in bound:
                        out[row, i, G.VOCAB.index[bound[box]]] = 1.0
                elif i + 1 < t:
                    bound[box] = words[i + 1]
        return out


def check_evaluation(distances=(20, 64, 160, 240), n: int = 100, fmt: str = "tg") -> dict:
    """Recall accuracy of :class:`OracleRecall` through the evaluation code (must be 1.0 everywhere)."""
    oracle = OracleRecall(fmt)
    return {d: answer_accuracy(oracle, *G.recall_episodes(n, d, d, fmt=fmt)) for d in distances}


@torch.no_grad()
def check_causality(model: TinyGPT, seed: int = 3) -> dict:
    """``prefix``: max |logits(x[:k]) - logits(x)[:k]|; ``future``: max change of past logits when a later token changes."""
    ctx = model.config.context
    x = G.corpus_tokens(ctx, seed)[None]
    full = model(x)
    k = ctx // 2
    x2 = x.clone()
    x2[0, k + 10] = (x2[0, k + 10] + 1) % G.VOCAB.size
    return {"prefix": (model(x[:, :k]) - full[:, :k]).abs().max().item(),
            "future": (model(x2)[:, : k + 10] - full[:, : k + 10]).abs().max().item()}


@torch.no_grad()
def colour_collapse(model: TinyGPT) -> dict:
    """Mean pairwise cosine of the embeddings of the colours, of the numbers 0-99 and of 100 lexicon words."""
    emb = model.tok_emb.weight.detach()

    def mean_cos(ids):
        e = F.normalize(emb[ids], dim=1)
        n = len(ids)
        return ((e @ e.T).sum().item() - n) / (n * n - n)

    numbers = G.VOCAB.encode(list(G.NUMBERS))
    words = list(range(numbers[-1] + 1, numbers[-1] + 101))
    return {"colours": mean_cos(COLOUR_IDS), "numbers": mean_cos(numbers), "words": mean_cos(words)}


@torch.no_grad()
def answer_losses(model: TinyGPT, n_windows: int = 40, seed: int = 5) -> dict:
    """Mean loss on query answers and on binding colours in ``recall_dense`` windows (``log 12`` = uniform)."""
    ctx = model.config.context
    s = G.corpus_tokens(ctx * n_windows, seed, kinds=["recall_dense"]).view(n_windows, ctx)
    ce = F.cross_entropy(model(s[:, :-1]).reshape(-1, G.VOCAB.size), s[:, 1:].reshape(-1), reduction="none")
    ce = ce.view(n_windows, ctx - 1)
    is_answer = torch.zeros_like(ce, dtype=torch.bool)
    for row in range(n_windows):
        w = G.VOCAB.decode(s[row])
        for i in range(4, ctx):
            is_answer[row, i - 1] = w[i - 4] == "?" and w[i - 3] == "box" and w[i - 1] == "key"
    target = s[:, 1:]
    is_colour = (target >= min(COLOUR_IDS)) & (target <= max(COLOUR_IDS))
    return {"query_answers": ce[is_answer].mean().item(), "binding_colours": ce[is_colour & ~is_answer].mean().item(),
            "log12": math.log(len(G.COLORS)), "n_answers": int(is_answer.sum())}


def probe_training(layers=2, d_model=128, heads=4, context=64, steps=1500, batch_size=32, lr=3e-3, weight_decay=0.1,
                   mix=None, init_from=None, colour_noise=0.0, seed=0, eval_every=250, n_eval=200, log=print):
    """Train a TinyGPT on ``mix`` (default: ``recall_short`` only) and log recall accuracy and colour collapse.

    Returns the list of logged records ``{step, seconds, loss, colour_cos, acc: {distance: accuracy}}``.
    """
    from common.harness.seeding import seeded_training

    gen = seeded_training(seed, threads=1)
    config = TinyGPTConfig(G.VOCAB.size, d_model=d_model, n_layers=layers, n_heads=heads, context=context)
    model = TinyGPT(config)
    if init_from:
        from . import load_tinylm

        parent, _, _ = load_tinylm(init_from)
        if parent.config != config:
            raise ValueError(f"{init_from} has config {parent.config}, not {config}")
        model.load_state_dict(parent.state_dict())
    if colour_noise:
        perturb_colour_embeddings(model, colour_noise, seed)
    stream = G.corpus_tokens(max(steps * batch_size * context // 2, 200_000), seed, kinds=mix or {"recall_short": 1.0})
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, warmup_steps=min(100, steps // 10))
    opt = make_optimizer(model, cfg)
    episodes = {d: G.recall_episodes(n_eval, d, 1000 + d) for d in (20, 40, 64, 128, 160) if d + 8 < context}
    records, window, start = [], [], time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        x, y = sample_batch(stream, batch_size, context, gen)
        loss = F.cross_entropy(model(x).reshape(-1, G.VOCAB.size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            acc = {d: round(answer_accuracy(model, *e), 3) for d, e in episodes.items()}
            model.train()
            rec = {"step": step + 1, "seconds": round(time.perf_counter() - start), "loss": round(sum(window) / len(window), 4),
                   "colour_cos": round(colour_collapse(model)["colours"], 3), "acc": acc}
            window = []
            records.append(rec)
            log(json.dumps(rec))
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.tinylm.recall_diagnostics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    checks = sub.add_parser("checks", help="evaluation, causality, answer losses and colour collapse of checkpoints")
    checks.add_argument("--checkpoints", nargs="*", default=["tinylm_ci", "tinylm_recall"])
    checks.add_argument("--directory", default=None)
    probe = sub.add_parser("probe", help="a small training experiment (JSON lines)")
    for name, typ, default in (("layers", int, 2), ("d_model", int, 128), ("heads", int, 4), ("context", int, 64),
                               ("steps", int, 1500), ("batch_size", int, 32), ("lr", float, 3e-3),
                               ("weight_decay", float, 0.1), ("colour_noise", float, 0.0), ("seed", int, 0),
                               ("eval_every", int, 250)):
        probe.add_argument(f"--{name}", type=typ, default=default)
    probe.add_argument("--mix", type=json.loads, default=None, help='JSON weights, e.g. \'{"recall_short": 1}\'')
    probe.add_argument("--init_from", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "checks":
        from . import load_tinylm

        print("oracle through the evaluation code:", check_evaluation())
        for name in args.checkpoints:
            model, _, _ = load_tinylm(name, args.directory)
            print(name, "causality", check_causality(model))
            print(name, "answer losses", answer_losses(model))
            print(name, "embedding mean pairwise cosine", colour_collapse(model))
        return 0
    kw = {k: v for k, v in vars(args).items() if k != "command"}
    probe_training(layers=kw.pop("layers"), heads=kw.pop("heads"), **kw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
