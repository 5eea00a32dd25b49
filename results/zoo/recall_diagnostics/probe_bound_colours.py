"""Session 20: what does a model at the "some bound colour" plateau put its probability on?

Usage: ``python results/zoo/recall_diagnostics/probe_bound_colours.py WEIGHTS.safetensors|zoo:NAME [N]``.

For TinyGrammar recall episodes (``common.tinylm.grammar.recall_episodes``; 2 and 8 bindings) it reads the
teacher-forced next-token distribution at the answer position and splits it into the queried colour, the other
*bound* colours of the episode (the colours of the other bindings, if different from the answer) and the
remaining colours. A model that knows which colours were bound but not which belongs to the queried box puts its
mass on the bound colours and splits it between them; a model that looks the box up puts it on the answer.
Also: accuracy by queried binding (first or last bound: recency). ``WEIGHTS`` is a state dict saved by
``pilot_untied_teacher.py --save-weights`` (an untied TinyGPT with ``tinylm_ci``'s config) or ``zoo:NAME``.
"""
import json
import os
import sys

import torch

from common.tinylm import grammar as G
from common.tinylm import load_tinylm
from common.tinylm.model import TinyGPT, TinyGPTConfig

torch.set_num_threads(1)
V = G.VOCAB
COLOURS = torch.tensor(V.encode(list(G.COLORS)))
KEY, QMARK = V.encode(["key"])[0], V.encode(["?"])[0]


def load(spec: str) -> TinyGPT:
    if spec.startswith("zoo:"):
        return load_tinylm(spec[4:])[0].eval()
    from safetensors.torch import load_file

    manifest = json.load(open(os.path.join(os.path.dirname(G.__file__), "..", "zoo", "checkpoints", "tinylm_ci.json")))
    state = load_file(spec)
    config = TinyGPTConfig(**manifest["config"], tie_embeddings="head.weight" not in state)
    model = TinyGPT(config)
    model.load_state_dict(state)
    return model.eval()


def bound_colours(row: torch.Tensor, answer_pos: int) -> list[int]:
    """The colours after ``key`` in the bindings, i.e. before the query's ``?``."""
    q = (row[:answer_pos] == QMARK).nonzero()
    end = int(q[-1]) if len(q) else answer_pos
    keys = (row[:end] == KEY).nonzero().flatten()
    return [int(row[k + 1]) for k in keys]


@torch.no_grad()
def split(model: TinyGPT, n: int, distance: int, n_bindings: int, seed: int) -> dict:
    tokens, positions, answers = G.recall_episodes(n, distance, seed, n_bindings=n_bindings)
    probs = torch.softmax(model(tokens)[torch.arange(n), positions - 1], -1)
    out = {"acc": 0.0, "argmax_bound": 0.0, "p_answer": 0.0, "p_other_bound": 0.0, "p_other_colours": 0.0,
           "p_non_colour": 0.0, "n_with_other_bound": 0}
    first_hits, last_hits, n_first, n_last = 0, 0, 0, 0
    for i in range(n):
        bound = bound_colours(tokens[i], int(positions[i]))
        a = int(answers[i])
        others = sorted(set(bound) - {a})
        p = probs[i]
        pred = int(p.argmax())
        out["acc"] += pred == a
        out["argmax_bound"] += pred in bound
        out["p_answer"] += float(p[a])
        out["p_other_bound"] += float(p[others].sum()) if others else 0.0
        out["n_with_other_bound"] += bool(others)
        rest = sorted(set(COLOURS.tolist()) - set(bound))
        out["p_other_colours"] += float(p[rest].sum())
        out["p_non_colour"] += 1.0 - float(p[COLOURS].sum())
        # which binding was queried: the answer's colour position among the bindings (first or last bound)
        query_box = int(tokens[i][int(positions[i]) - 2])
        boxes = [int(tokens[i][k - 1]) for k in (tokens[i][: int(positions[i]) - 4] == KEY).nonzero().flatten()]
        if boxes and query_box == boxes[0]:
            first_hits, n_first = first_hits + (pred == a), n_first + 1
        if boxes and query_box == boxes[-1]:
            last_hits, n_last = last_hits + (pred == a), n_last + 1
    res = {k: (v / n if k != "n_with_other_bound" else v) for k, v in out.items()}
    res["acc_first_bound"] = first_hits / max(n_first, 1)
    res["acc_last_bound"] = last_hits / max(n_last, 1)
    return {k: round(float(v), 3) for k, v in res.items()}


def main():
    spec = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    model = load(spec)
    out = {"model": spec, "n": n}
    for nb, distances in ((2, (20, 40, 64, 80, 160)), (8, (64, 80, 160))):
        for d in distances:
            out[f"b{nb}.d{d}"] = split(model, n, d, nb, seed=1000 + 7 * d + nb)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
