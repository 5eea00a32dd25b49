"""MQAR probe, session 19: TinyGPT vs a torch reference over seeds, with one-change-at-a-time arms.

Usage: ``SEED=s ARM=tiny|ref [FMT=mqar|tg|onehop] [LAYERS=n] [flags] python results/zoo/recall_diagnostics/recall_mqar_probe2.py [STEPS] [LR]``.

Task (Zoology MQAR, offset 1): ``B1 C1 .. Bk Ck  Bq1 Cq1 .. Bqm Cqm`` with k = 4 distinct boxes (numbers 0-99),
colours drawn from 12, m = 8 queries drawn from the k keys; accuracy = argmax prediction of each query colour
``Cq`` given the prefix (the loss is the usual next-token cross entropy on every position). Model: 2 layers
(``LAYERS`` env var, default 2, as every session-19/20 log), d 128, 4 heads, MLP 512. Optimiser: ``make_optimizer`` (AdamW, wd 0.1 on tensors with dim >= 2), ``lr_at``
(50 warmup steps, cosine from lr to 0.1 lr over STEPS), batch 64, grad clip 1.0. Data, RNG order and both models
are those of ``recall_mqar_probe.py`` (fmt ``mqar``, K 4, M 8, LAYERS 2), so a seed means the same data stream.

Evaluation every 100 steps on 256 fixed episodes (generator seed 99); it also logs ``cos_num`` / ``cos_col``, the
mean pairwise cosine of the 100 number and the 12 colour token embeddings (the collapse of session 14). The run
stops at the first evaluation with accuracy >= STOP (default 0.9, the pre-declared "solved" threshold; STOP=2 disables the early stop).

Flags (each one difference, for the bisection in ``s19_notes.md``):
* ``REF_INIT=tiny``: TinyGPT's init on the reference: ``W ~ N(0, 0.02)`` (embeddings, positions, head, in-proj,
  first MLP matrix), ``W ~ N(0, 0.02 / sqrt(2 L))`` for the attention out-proj and second MLP matrix, biases 0,
  LayerNorm weights 1.
  ``REF_INIT=tiny-emb`` applies it to the token and position embeddings only, ``REF_INIT=tiny-body`` to every
  other parameter only (encoder, final LN, head).
* ``REF_ACT=gelu``: exact GeLU ``x Phi(x)`` in the reference MLP instead of ReLU.
* ``REF_TIE=1``: reference logits ``LN_f(h) E^T`` with the token embedding E (tied head).
* ``TG_INIT=torch``: PyTorch's default init for every ``nn.Linear`` (Kaiming-uniform, a = sqrt 5) and
  ``nn.Embedding`` (N(0, 1)) in TinyGPT (LayerNorms 1 / 0).
* ``TG_EMB=std``: TinyGPT token embedding ``E ~ N(0, std^2)`` (the reference's is N(0, 1)).
* ``TG_UNTIE=1``: TinyGPT logits ``LN_f(h) W^T`` with a separate head W (``nn.Linear`` default init, as the
  reference's) instead of the tied ``E^T``.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from common.tinylm import grammar as G
from common.tinylm.model import TinyGPT, TinyGPTConfig
from common.tinylm.train import TrainConfig, lr_at, make_optimizer

torch.set_num_threads(1)
K, M, D = 4, 8, 128
LAYERS = int(os.environ.get("LAYERS", 2))
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
LR = float(sys.argv[2]) if len(sys.argv) > 2 else 3e-3
SEED = int(os.environ.get("SEED", 0))
ARM = os.environ.get("ARM", "tiny")
STOP = float(os.environ.get("STOP", 0.9))
FMT = os.environ.get("FMT", "mqar")
if FMT not in ("mqar", "tg", "onehop"):
    raise ValueError(f"FMT must be mqar, tg or onehop, got {FMT!r}")
FLAGS = {f: os.environ.get(f) for f in ("REF_INIT", "REF_ACT", "REF_TIE", "TG_INIT", "TG_EMB", "TG_UNTIE") if os.environ.get(f)}
if ARM not in ("tiny", "ref"):
    raise ValueError(f"ARM must be tiny or ref, got {ARM!r}")
if any(f.startswith("REF_") for f in FLAGS) and ARM != "ref" or any(f.startswith("TG_") for f in FLAGS) and ARM != "tiny":
    raise ValueError(f"flags {FLAGS} do not apply to ARM={ARM}")
V = G.VOCAB
NUM = torch.tensor(V.encode(list(G.NUMBERS)))
COL = torch.tensor(V.encode(list(G.COLORS)))


def batch(n, gen):
    """``n`` episodes and the mask of the query-answer positions: ``[n, 2k + 2m]`` in the MQAR format, or
    ``[n, 5k + 5m]`` in TinyGrammar's (``FMT=tg``): bindings ``box B key C .``, queries ``? box B key C``, so the
    colour sits two tokens after its box with the same ``key`` before every colour (same draws, same order);
    ``[n, 4k + 4m]`` in the one-hop kinds' format (``FMT=onehop``, session 21): ``box B C .`` / ``? box B C``."""
    boxes = torch.stack([NUM[torch.randperm(100, generator=gen)[:K]] for _ in range(n)])
    cols = COL[torch.randint(0, 12, (n, K), generator=gen)]
    qi = torch.randint(0, K, (n, M), generator=gen)
    qb, qc = boxes.gather(1, qi), cols.gather(1, qi)
    if FMT == "onehop":
        box, qmark, dot = (torch.full((n, c), V.encode([w])[0]) for w, c in (("box", K), ("?", M), (".", K)))
        binds = torch.stack([box, boxes, cols, dot], 2).view(n, -1)
        queries = torch.stack([qmark, box[:, :1].expand(n, M), qb, qc], 2).view(n, -1)
        x = torch.cat([binds, queries], 1)
        ans = torch.zeros_like(x, dtype=torch.bool)
        ans[:, 4 * K + 3::4] = True
        return x, ans
    if FMT == "tg":
        box, key, qmark, dot = (torch.full((n, c), V.encode([w])[0]) for w, c in
                                (("box", K), ("key", K), ("?", M), (".", K)))
        binds = torch.stack([box, boxes, key, cols, dot], 2).view(n, -1)
        queries = torch.stack([qmark, box[:, :1].expand(n, M), qb, key[:, :1].expand(n, M), qc], 2).view(n, -1)
        x = torch.cat([binds, queries], 1)
        ans = torch.zeros_like(x, dtype=torch.bool)
        ans[:, 5 * K + 4::5] = True
        return x, ans
    x = torch.cat([torch.stack([boxes, cols], 2).view(n, -1), torch.stack([qb, qc], 2).view(n, -1)], 1)
    ans = torch.zeros_like(x, dtype=torch.bool)
    ans[:, 2 * K + 1::2] = True
    return x, ans


class Ref(torch.nn.Module):
    """Reference: token + learned position embeddings, pre-LN ``nn.TransformerEncoder``, final LN, head."""

    def __init__(self, T):
        super().__init__()
        self.emb, self.pos = torch.nn.Embedding(V.size, D), torch.nn.Embedding(T, D)
        act = "gelu" if FLAGS.get("REF_ACT") == "gelu" else "relu"
        layer = torch.nn.TransformerEncoderLayer(D, 4, 4 * D, 0.0, act, batch_first=True, norm_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.ln = torch.nn.LayerNorm(D)
        self.head = None if FLAGS.get("REF_TIE") else torch.nn.Linear(D, V.size, bias=False)

    def forward(self, x):
        T = x.shape[1]
        h = self.emb(x) + self.pos(torch.arange(T))
        h = self.enc(h, mask=torch.nn.Transformer.generate_square_subsequent_mask(T), is_causal=True)
        h = self.ln(h)
        return h @ self.emb.weight.T if self.head is None else self.head(h)


def tiny_init(model, part="all", std=0.02):
    """TinyGPT's ``reset_parameters`` scheme on the reference's parameters (``part``: all, emb, body)."""
    for name, p in model.named_parameters():
        is_emb = name in ("emb.weight", "pos.weight")
        if part == "emb" and not is_emb or part == "body" and is_emb:
            continue
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif "norm" in name or name.startswith("ln."):
            torch.nn.init.ones_(p)
        elif name.endswith("out_proj.weight") or name.endswith("linear2.weight"):
            torch.nn.init.normal_(p, 0.0, std / math.sqrt(2 * LAYERS))
        else:
            torch.nn.init.normal_(p, 0.0, std)


gen = torch.Generator().manual_seed(SEED)
torch.manual_seed(SEED)
x0, _ = batch(1, gen)
if ARM == "ref":
    model = Ref(x0.shape[1])
    if FLAGS.get("REF_INIT"):
        parts = {"tiny": "all", "tiny-emb": "emb", "tiny-body": "body"}
        if FLAGS["REF_INIT"] not in parts:
            raise ValueError(f"REF_INIT must be one of {sorted(parts)}, got {FLAGS['REF_INIT']!r}")
        tiny_init(model, parts[FLAGS["REF_INIT"]])
else:
    model = TinyGPT(TinyGPTConfig(V.size, d_model=D, n_layers=LAYERS, n_heads=4, context=x0.shape[1]))
    if FLAGS.get("TG_INIT") not in (None, "torch"):
        raise ValueError(f"TG_INIT must be torch, got {FLAGS['TG_INIT']!r}")
    if FLAGS.get("TG_INIT") == "torch":
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                mod.reset_parameters()
    if FLAGS.get("TG_EMB"):
        torch.nn.init.normal_(model.tok_emb.weight, 0.0, float(FLAGS["TG_EMB"]))
    if FLAGS.get("TG_UNTIE"):
        model.head = torch.nn.Linear(D, V.size, bias=False)

        def untied_forward(idx):
            """TinyGPT's forward with ``LN_f(h) W^T`` (separate head) as the logits."""
            h, pos = model.tok_emb(idx), torch.arange(idx.shape[1])
            for block in model.blocks:
                h, _ = block(h, pos)
            return model.head(model.ln_f(h))
        model.forward = untied_forward
cfg = TrainConfig(lr=LR, weight_decay=0.1, warmup_steps=50)
opt = make_optimizer(model, cfg)
xe, ae = batch(256, torch.Generator().manual_seed(99))
t0, best, hit = time.time(), 0.0, None
for s in range(STEPS):
    for g in opt.param_groups:
        g["lr"] = lr_at(s, STEPS, cfg)
    x, _ = batch(64, gen)
    lg = model(x[:, :-1])
    loss = F.cross_entropy(lg.reshape(-1, V.size), x[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if (s + 1) % 100 == 0:
        with torch.no_grad():
            p = model(xe[:, :-1]).argmax(-1)
        acc = (p == xe[:, 1:])[ae[:, 1:]].float().mean().item()
        E = F.normalize(model.emb.weight if ARM == "ref" else model.tok_emb.weight, dim=-1)
        cos = {n: round(((E[ids] @ E[ids].T).sum().item() - len(ids)) / (len(ids) * (len(ids) - 1)), 3)
               for n, ids in (("cos_num", NUM), ("cos_col", COL))}
        best = max(best, acc)
        hit = hit or (s + 1 if acc >= 0.9 else None)
        print(json.dumps({"arm": ARM, "fmt": FMT, "layers": LAYERS, "flags": FLAGS, "seed": SEED, "lr": LR, "budget": STEPS, "step": s + 1,
                          "s": round(time.time() - t0), "loss": round(loss.item(), 3), "answer_acc": round(acc, 3), **cos}),
              flush=True)
        if acc >= STOP:
            break
print(json.dumps({"final": True, "arm": ARM, "fmt": FMT, "layers": LAYERS, "flags": FLAGS, "seed": SEED, "lr": LR, "budget": STEPS,
                  "best_acc": round(best, 3), "step_ge_0.9": hit, "solved": best >= 0.9}), flush=True)
