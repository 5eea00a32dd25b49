"""Session 19 pilot: does the MQAR fix (untied head + N(0, 1) token embeddings) give TinyGPT recall on TinyGrammar?

Arm (one run, seed 0, diagnostic only; no zoo checkpoint is written):

    h_0    = E[x],            E ~ N(0, 1)        (token embeddings, re-initialised after reset_parameters)
    logits = LN_f(h_L) W^T,   W ~ N(0, 0.02)     (untied, bias-free head W in R^{V x d}; stock TinyGPT uses E^T)

Everything else is ``tinylm_ci``'s config and training (common/zoo/checkpoints/tinylm_ci.json: d_model 128,
4 layers, 4 heads, context 256; AdamW lr 3e-3, betas (0.9, 0.95), weight decay 0.1 on matrices (so on W
too), warm-up 200 steps, cosine to 0.1 lr, clip 1.0, batch 16, default mix, seed 0), trained from scratch
with ``common.tinylm.train.train_tinylm`` under ``max_seconds`` (default 1500; the cosine decay follows
elapsed time, so the tokens seen depend on the machine and are recorded). ``n_tokens`` = 25M as in
``tinylm_ci`` is only an upper bound.

The arm is injected by replacing ``common.tinylm.train.TinyGPT`` (the name ``init_weights`` constructs) with
:class:`UntiedTinyGPT`; ``evaluate`` / ``answer_accuracy`` call ``model(...)`` and so use the untied head
(checked by :func:`check_head_used`). Output: a JSON with the evaluation, tokens seen, loss and recall curves
(``--out``), printed as well. Usage::

    OMP_NUM_THREADS=1 python results/zoo/recall_diagnostics/pilot_untied_teacher.py --max-seconds 1500 \
        --out /tmp/pilot19/result.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

import common.tinylm.train as T
from common.tinylm.model import TinyGPT, TinyGPTConfig

EMB_STD = 1.0      # N(0, 1): nn.Embedding's default init
HEAD_STD = 0.02    # GPT-2 init of the untied head


class UntiedTinyGPT(TinyGPT):
    """TinyGPT with an untied bias-free head ``W ~ N(0, HEAD_STD)`` and token embeddings ``E ~ N(0, EMB_STD)``.

    ``forward`` is the parent's with ``logits = LN_f(h_L) W^T`` in place of ``LN_f(h_L) E^T``.
    """

    head_std: float | None = HEAD_STD  # None: nn.Linear's default (Kaiming-uniform, std 1/sqrt(3 d) ~ 0.051 at d 128)

    def __init__(self, config: TinyGPTConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)  # parent's reset_parameters: GPT-2 init of everything
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        with torch.no_grad():
            if self.head_std is not None:
                nn.init.normal_(self.head.weight, 0.0, self.head_std)
            nn.init.normal_(self.tok_emb.weight, 0.0, EMB_STD)

    def forward(self, idx: torch.Tensor, kv_cache=None, return_qkv: bool = False):
        """The parent's forward (its tied logits are discarded) with the untied head applied to LN_f's output,
        captured by a forward hook, so TinyGPT's forward is not written twice."""
        captured = {}
        handle = self.ln_f.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
        try:
            out = super().forward(idx, kv_cache, return_qkv)
        finally:
            handle.remove()
        logits = self.head(captured["h"])
        return (logits, out[1]) if return_qkv else logits


def check_head_used(config: TinyGPTConfig) -> None:
    """Assert the untied head (not ``tok_emb``) produces the logits, and the init is as declared."""
    torch.manual_seed(123)
    m = UntiedTinyGPT(config).eval()
    x = torch.randint(0, config.vocab_size, (2, 8))
    with torch.no_grad():
        a = m(x)
        m.head.weight.add_(0.1)
        b = m(x)
        if torch.allclose(a, b):
            raise AssertionError("perturbing the head did not change the logits: head unused")
        manual = m.head(m.ln_f(m.tok_emb(x)))  # shape check only
        if manual.shape != b.shape:
            raise AssertionError("head output shape mismatch")
    emb_std, head_std = m.tok_emb.weight.std().item(), (m.head.weight - 0.1).std().item()
    want = UntiedTinyGPT.head_std or 1 / (3 * config.d_model) ** 0.5
    if not (0.9 < emb_std < 1.1 and 0.75 * want < head_std < 1.25 * want):
        raise AssertionError(f"init stds off: emb {emb_std:.3f}, head {head_std:.4f}")
    if m.head.weight.data_ptr() == m.tok_emb.weight.data_ptr():
        raise AssertionError("head is tied to the embedding")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-seconds", type=float, default=1500.0)
    ap.add_argument("--monitor-recall", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-tokens", type=int, default=25_000_000)
    ap.add_argument("--out", default="/tmp/pilot19/result.json")
    ap.add_argument("--mix", default=None, help="document-kind weights as JSON (default: the grammar's DEFAULT_MIX)")
    ap.add_argument("--head-init", choices=("gpt2", "torch"), default="gpt2",
                    help="gpt2: N(0, 0.02); torch: nn.Linear's default (the fastest MQAR arm)")
    ap.add_argument("--save-weights", default=None,
                    help="also write the trained weights (safetensors) to this path, for later probes")
    args = ap.parse_args()
    if args.head_init == "torch":
        UntiedTinyGPT.head_std = None

    manifest = json.load(open(os.path.join(os.path.dirname(T.__file__), "..", "zoo", "checkpoints", "tinylm_ci.json")))
    model_config = TinyGPTConfig(**manifest["config"])
    tr = manifest["training"]
    check_head_used(model_config)

    cfg = T.TrainConfig(n_tokens=args.n_tokens, batch_size=tr["batch_size"], lr=tr["lr"], min_lr_ratio=tr["min_lr_ratio"],
                        warmup_steps=tr["warmup_steps"], weight_decay=tr["weight_decay"], betas=tuple(tr["betas"]),
                        grad_clip=tr["grad_clip"], seed=args.seed, val_tokens=tr["val_tokens"], eval_every=tr["eval_every"],
                        log_every=tr["log_every"], threads=1, max_seconds=args.max_seconds,
                        monitor_recall=args.monitor_recall, mix=None if args.mix is None else json.loads(args.mix))
    T.TinyGPT = UntiedTinyGPT  # the name init_weights constructs
    t0 = time.perf_counter()

    def log(step, history):
        s, tok, v = history["val"][-1]
        rec = history["recall"][-1][2] if history.get("recall") else {}
        print(f"[{time.perf_counter() - t0:7.1f}s] step {s} tokens {tok} val {v:.4f} recall {rec}", flush=True)

    model, history = T.train_tinylm(model_config, cfg, callback=log, progress=False)
    if not isinstance(model, UntiedTinyGPT):
        raise AssertionError("train_tinylm did not build the untied arm")
    print(f"training done: {history['tokens_seen']} tokens in {history['seconds']:.1f}s", flush=True)
    evaluation = T.evaluate(model, seed=args.seed)
    out = {"arm": f"untied head ({args.head_init} init) + tok_emb N(0,1)", "config": model_config.to_dict(), "train_config": cfg.to_dict(),
           "tokens_seen": history["tokens_seen"], "seconds": history["seconds"], "tokens_per_s": history["tokens_per_s"],
           "n_parameters": model.n_parameters(), "evaluation": evaluation,
           "val_curve": history["val"], "recall_curve": history.get("recall", []),
           "train_loss_curve": list(zip(history["tokens"], history["train_loss"], strict=True)),
           "tinylm_ci": {k: v for k, v in manifest["evaluation"].items() if "recall" in k or k == "val_loss"}}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    if args.save_weights:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save_weights)
        print(f"wrote {args.save_weights}", flush=True)
    print(json.dumps({k: v for k, v in evaluation.items() if "recall" in k or k.startswith("val_loss")}, indent=1))
    print(f"wrote {args.out} ({time.perf_counter() - t0:.1f}s total)", flush=True)


if __name__ == "__main__":
    main()
