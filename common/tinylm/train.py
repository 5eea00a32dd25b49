"""Training and evaluation of TinyGPT on the TinyGrammar corpus.

Next-token cross-entropy on random windows of ``context + 1`` tokens of a training stream
(``corpus_tokens(n, seed)``), AdamW with linear warmup and cosine decay to ``min_lr_ratio * lr``, gradient
clipping; the validation stream comes from a different seed (``seed + VAL_SEED_OFFSET``), so no validation
document is a training document by construction (up to chance repeats of short documents).

Evaluation (all exact thanks to the grammar): validation loss and perplexity, per-kind validation loss,
recall accuracy at several distances, arithmetic answer accuracy, and the grammaticality, formality
and keyword coverage of sampled text.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from common.harness.seeding import seeded_training

from . import grammar as G
from .model import TinyGPT, TinyGPTConfig

VAL_SEED_OFFSET = 1_000_003


@dataclass
class TrainConfig:
    n_tokens: int = 1_000_000          # training tokens seen (steps * batch_size * context)
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    corpus_tokens: int | None = None    # size of the training stream (default: n_tokens, i.e. about one epoch)
    val_tokens: int = 65_536
    eval_every: int = 200
    log_every: int = 20
    threads: int = 1
    init_from: str | None = None        # continued training: start from this zoo checkpoint's weights (fresh AdamW)
    mix: dict | None = None             # document-kind weights of the training stream (None: grammar.DEFAULT_MIX)
    max_seconds: float | None = None    # wall-time budget: stop then, the cosine schedule follows elapsed time
    monitor_recall: int = 0             # > 0: recall accuracy (that many episodes per distance) at each evaluation
    colour_noise: float = 0.0           # > 0: add N(0, colour_noise^2) to the recall colours' embeddings at the start
                                        # (breaks their collapse in a parent checkpoint; see perturb_colour_embeddings)
    recall_format: str = "tg"           # binding format of the monitored recall episodes (grammar.RECALL_FORMATS)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["betas"] = list(self.betas)
        if d["recall_format"] == "tg":  # omitted at its default: manifests written before it existed are unchanged
            del d["recall_format"]
        return d


def lr_at(step: int, total: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay from ``lr`` to ``min_lr_ratio * lr``.

    With ``time_fraction`` (elapsed / budget of a wall-time-budgeted run) the decay follows the larger of
    the step and time fractions, so the schedule ends when the budget does.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if time_fraction is not None:
        progress = max(progress, min(1.0, time_fraction))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: TinyGPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, LayerNorm parameters)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def sample_batch(stream: torch.Tensor, batch_size: int, context: int, generator: torch.Generator):
    """Random windows: ``x = stream[s : s + context]``, ``y = stream[s + 1 : s + context + 1]``."""
    starts = torch.randint(0, len(stream) - context - 1, (batch_size,), generator=generator)
    offsets = torch.arange(context + 1)
    windows = stream[starts[:, None] + offsets[None, :]]
    return windows[:, :-1], windows[:, 1:]


def lm_loss(model: TinyGPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def stream_loss(model: TinyGPT, tokens: torch.Tensor, context: int | None = None, batch_size: int = 16) -> float:
    """Mean next-token loss over ``tokens`` cut into consecutive non-overlapping windows of ``context + 1``."""
    context = context or model.config.context
    n = (len(tokens) - 1) // context
    if n == 0:
        raise ValueError(f"need more than {context} tokens, got {len(tokens)}")
    x = tokens[: n * context].view(n, context)
    y = tokens[1 : n * context + 1].view(n, context)
    total = 0.0
    was_training = model.training
    model.eval()
    for i in range(0, n, batch_size):
        logits = model(x[i : i + batch_size])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i : i + batch_size].reshape(-1), reduction="sum").item()
    model.train(was_training)
    return total / (n * context)


def perplexity(model: TinyGPT, tokens: torch.Tensor, context: int | None = None, batch_size: int = 16) -> float:
    """``exp`` of :func:`stream_loss`."""
    return math.exp(stream_loss(model, tokens, context, batch_size))


@torch.no_grad()
def answer_accuracy(model: TinyGPT, tokens, positions, answers, batch_size: int = 64) -> float:
    """Fraction of rows where ``argmax logits[pos - 1] == answer`` (teacher-forced)."""
    model.eval()
    hits = 0
    for i in range(0, len(tokens), batch_size):
        logits = model(tokens[i : i + batch_size])
        rows = torch.arange(logits.shape[0])
        pred = logits[rows, positions[i : i + batch_size] - 1].argmax(-1)
        hits += (pred == answers[i : i + batch_size]).sum().item()
    return hits / len(tokens)


@torch.no_grad()
def sample_documents(model: TinyGPT, n: int, max_new_tokens: int = 48, prompt=None, temperature: float = 1.0, seed: int = 0):
    """Sample ``n`` continuations of ``<bos> prompt`` and cut each at its first ``<eos>``; returns word lists."""
    vocab = G.VOCAB
    ids = [vocab.bos_id] + (vocab.encode(prompt) if prompt else [])
    idx = torch.tensor([ids] * n)
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, generator=gen)[:, len(ids):]
    docs = []
    for row in out.tolist():
        words = vocab.decode(row)
        docs.append(words[: words.index("<eos>")] if "<eos>" in words else words)
    return docs


def sample_quality(model: TinyGPT, n: int = 64, seed: int = 0) -> dict:
    """Grammaticality of sampled narrative sentences and formality separation by register prompt.

    Unprompted samples: among the complete sentences of documents that are narrative, the grammatical
    fraction. Register: sentences sampled after a formal (``indeed ,``) or informal (``so ,``) opener.
    """
    docs = sample_documents(model, n, seed=seed)
    sentences = [s for d in docs if G.document_kind(d) == "narrative" for s in G.split_sentences(d) if s[-1] == "."]
    out = {"n_sampled_sentences": len(sentences),
           "grammatical_rate": sum(map(G.is_grammatical, sentences)) / max(1, len(sentences))}
    for reg, opener in (("formal", ["indeed", ","]), ("informal", ["so", ","])):
        docs = sample_documents(model, n, 16, prompt=opener, seed=seed + 1)
        first = [opener + G.split_sentences(d)[0] for d in docs if d]
        out[f"{reg}_prompt.mean_formality"] = sum(map(G.formality, first)) / max(1, len(first))
        out[f"{reg}_prompt.grammatical_rate"] = sum(map(G.is_grammatical, first)) / max(1, len(first))
    prompts = G.keyword_prompts(n, random_state=seed + 2)
    prompts = prompts[: max(1, n // 2)]
    docs = [sample_documents(model, 1, 16, prompt=p["prompt"], seed=seed + 3 + i)[0] for i, p in enumerate(prompts)]
    sents = [G.split_sentences(d)[0] if d else [] for d in docs]
    coverage = [G.keyword_coverage(p["keywords"], s) for p, s in zip(prompts, sents, strict=True)]
    out["keywords.coverage"] = sum(coverage) / len(coverage)
    out["keywords.grammatical_rate"] = sum(map(G.is_grammatical, sents)) / max(1, len(sents))
    return out


def evaluate(model: TinyGPT, seed: int = 0, val_tokens: int = 65_536, distances=(20, 40, 64, 80, 128, 160, 240),
             n_recall: int = 200, n_samples: int = 64, kinds=None, many_bindings: int = 8,
             recall_formats=("tg",)) -> dict:
    """All evaluation metrics of the manifest (validation streams from ``seed + VAL_SEED_OFFSET``).

    Recall: ``recall_accuracy.d{d}`` with 2 bindings (as ``recall_episodes`` makes them; a model that
    guesses one of the two bound colours scores about 0.5, chance is 1/12) and, for distances that fit,
    ``recall{many_bindings}_accuracy.d{d}`` with ``many_bindings`` bindings (guessing a bound colour scores
    about 1/many_bindings), for each binding format in ``recall_formats``; keys of the ``"onehop"`` format
    end their name in ``_onehop`` (``recall_onehop_accuracy.d64``), on the same episode seeds.

    ``kinds`` (per-kind validation losses): None means every kind of the grammar, the one-hop kinds only when
    ``"onehop"`` is among ``recall_formats`` (so a default evaluation has the keys it had before they existed).
    """
    if kinds is None:
        kinds = [k for k in G.ALL_KINDS if "onehop" in recall_formats or not k.endswith("_onehop")]
    vseed = seed + VAL_SEED_OFFSET
    ctx = model.config.context
    out = {"val_loss": stream_loss(model, G.corpus_tokens(val_tokens, vseed), ctx)}
    out["val_perplexity"] = math.exp(out["val_loss"])
    for kind in kinds:
        out[f"val_loss.{kind}"] = stream_loss(model, G.corpus_tokens(val_tokens // 4, vseed + 1, kinds=[kind]), ctx)
    if "val_loss.narrative" in out:
        out["val_perplexity.narrative"] = math.exp(out["val_loss.narrative"])
    for fmt in recall_formats:
        tag = "" if fmt == "tg" else f"_{fmt}"
        for d in distances:
            if d + 8 < ctx:
                out[f"recall{tag}_accuracy.d{d}"] = answer_accuracy(
                    model, *G.recall_episodes(n_recall, d, vseed + d, fmt=fmt))
            if many_bindings and d + 5 * many_bindings + 8 < ctx and d >= 5 * many_bindings + 7:
                out[f"recall{many_bindings}{tag}_accuracy.d{d}"] = answer_accuracy(
                    model, *G.recall_episodes(n_recall, d, vseed + 17 * d, n_bindings=many_bindings, fmt=fmt))
    for steps in (1, 4, 8):
        out[f"arithmetic_answer_accuracy.steps{steps}"] = answer_accuracy(model, *G.arithmetic_chains(n_recall, steps, vseed + steps))
    out.update(sample_quality(model, n_samples, seed=vseed))
    return out


MONITOR_DISTANCES = (64, 160)


def perturb_colour_embeddings(model: TinyGPT, std: float, seed: int = 0) -> None:
    """Add ``N(0, std^2)`` noise (seeded) to the token embeddings of the 12 recall colours, in place (with an
    untied head only the input side; the output side is the head's).

    Why: the colours are exchangeable everywhere in TinyGrammar (drawn uniformly in every binding), so until
    the model copies them nothing distinguishes them; in ``tinylm_ci`` their embeddings collapsed onto one
    vector (mean pairwise cosine 0.994), the model cannot tell them apart at input or output, and continued
    training on recall data stays at chance. Noise of about the other tokens' spread breaks the symmetry.
    """
    ids = torch.tensor(G.VOCAB.encode(list(G.COLORS)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.tok_emb.weight
        weight[ids] += std * torch.randn(len(ids), weight.shape[1], generator=gen).to(weight.dtype)


def init_weights(cfg: TrainConfig, model_config: TinyGPTConfig, directory=None) -> tuple[TinyGPT, dict | None]:
    """A fresh TinyGPT, or (``cfg.init_from``) the zoo checkpoint's weights with its manifest; the checkpoint's
    config must equal ``model_config``. With ``cfg.colour_noise`` the colours' embeddings are then perturbed."""
    model = TinyGPT(model_config)
    if not cfg.init_from:
        if cfg.colour_noise:
            perturb_colour_embeddings(model, cfg.colour_noise, cfg.seed)
        return model, None
    from common.zoo import load_checkpoint

    tensors, manifest = load_checkpoint(cfg.init_from, directory)
    if manifest["config"] != model_config.to_dict():
        raise ValueError(f"init_from={cfg.init_from!r} has config {manifest['config']}, not {model_config.to_dict()}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    if cfg.colour_noise:
        perturb_colour_embeddings(model, cfg.colour_noise, cfg.seed)
    return model, manifest


def train_tinylm(model_config: TinyGPTConfig, cfg: TrainConfig, *, callback=None, checkpoint_every_s: float | None = None,
                 on_checkpoint=None, progress: bool = True, init_directory=None):
    """Train a TinyGPT (fresh, or continued from ``cfg.init_from``); returns ``(model, history)``.

    ``history`` has ``step``, ``tokens``, ``train_loss`` (mean over each ``log_every`` window), ``val``
    (``(step, tokens, val_loss)`` every ``eval_every`` steps), ``seconds`` and ``tokens_per_s``.
    ``on_checkpoint(model, history)`` is called every ``checkpoint_every_s`` seconds (and never at the end:
    the caller saves the final model).

    ``cfg.mix`` sets the document kinds of the training stream (the validation stream keeps the default
    mix, so validation losses compare across checkpoints); ``cfg.max_seconds`` stops the run when its wall
    time is spent (``n_tokens`` is then an upper bound) and makes the cosine decay follow elapsed time, so
    such a run is not bit-reproducible (its tokens and schedule depend on the machine's speed; both are
    recorded). With ``cfg.monitor_recall``, ``history["recall"]`` gets ``(step, tokens, {distance: accuracy})``
    at every evaluation.
    """
    from tqdm.auto import tqdm

    G.check_recall_format(cfg.recall_format)
    gen = seeded_training(cfg.seed, threads=cfg.threads)
    model, parent = init_weights(cfg, model_config, init_directory)
    ctx = model_config.context
    steps = max(1, cfg.n_tokens // (cfg.batch_size * ctx))
    stream = G.corpus_tokens(cfg.corpus_tokens or max(cfg.n_tokens, 4 * ctx), cfg.seed, kinds=cfg.mix)
    val = G.corpus_tokens(cfg.val_tokens, cfg.seed + VAL_SEED_OFFSET)
    opt = make_optimizer(model, cfg)
    history = {"step": [], "tokens": [], "train_loss": [], "val": [], "lr": []}
    if parent is not None:
        history["init_from"] = {"name": cfg.init_from, "sha256": parent.get("sha256"),
                                "tokens_seen": parent.get("training", {}).get("tokens_seen")}
    if cfg.monitor_recall:
        history["recall"] = []
        episodes = {d: G.recall_episodes(cfg.monitor_recall, d, cfg.seed + VAL_SEED_OFFSET + 7 * d, fmt=cfg.recall_format)
                    for d in MONITOR_DISTANCES if d + 8 < ctx}
    start = last_ckpt = time.perf_counter()
    window = []
    model.train()
    for step in tqdm(range(steps), desc="tinylm", disable=not progress, mininterval=10):
        elapsed = time.perf_counter() - start
        if cfg.max_seconds is not None and step > 0 and elapsed >= cfg.max_seconds:
            break
        lr = lr_at(step, steps, cfg, None if cfg.max_seconds is None else elapsed / cfg.max_seconds)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sample_batch(stream, cfg.batch_size, ctx, gen)
        loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(loss.item())
        tokens = (step + 1) * cfg.batch_size * ctx
        last = step + 1 == steps or (cfg.max_seconds is not None and time.perf_counter() - start >= cfg.max_seconds)
        if (step + 1) % cfg.log_every == 0 or last:
            history["step"].append(step + 1)
            history["tokens"].append(tokens)
            history["train_loss"].append(sum(window) / len(window))
            history["lr"].append(lr)
            window = []
        if (step + 1) % cfg.eval_every == 0 or last:
            history["val"].append((step + 1, tokens, stream_loss(model, val, ctx)))
            if cfg.monitor_recall:
                history["recall"].append((step + 1, tokens, {d: answer_accuracy(model, *e) for d, e in episodes.items()}))
            model.train()
            if callback is not None:
                callback(step + 1, history)
        history["seconds"] = time.perf_counter() - start
        history["tokens_seen"] = tokens
        history["tokens_per_s"] = tokens / history["seconds"]
        if checkpoint_every_s and on_checkpoint and time.perf_counter() - last_ckpt > checkpoint_every_s and not last:
            model.eval()
            on_checkpoint(model, history)
            model.train()
            last_ckpt = time.perf_counter()
    model.eval()
    return model, history


def state_tensors(model: TinyGPT) -> dict:
    """The model's tensors for safetensors (a tied head is the embedding: no duplicate stored)."""
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}


def build_manifest(model: TinyGPT, cfg: TrainConfig, history: dict, evaluation: dict | None, notebook: str = "train_tinylm.ipynb",
                   status: str = "final") -> dict:
    """The zoo manifest: config, corpus version and hash, seed, tokens, losses, evaluation."""
    val = history["val"][-1][2] if history["val"] else None
    extra = {}
    if history.get("init_from"):
        extra["init_from"] = history["init_from"]
    if history.get("recall"):
        extra["recall_curve"] = [[s, t, {str(d): a for d, a in acc.items()}] for s, t, acc in history["recall"]]
    return {
        "architecture": "TinyGPT (common/tinylm/model.py): pre-LN GPT, RoPE, erf-GeLU MLP, "
                        + ("tied embeddings" if model.head is None else "untied output head"),
        "config": model.config.to_dict(),
        "n_parameters": model.n_parameters(),
        "n_parameters_non_embedding": model.n_parameters(non_embedding=True),
        "dtype": "float32",
        "corpus": {"grammar_version": G.GRAMMAR_VERSION, "corpus_hash_first_1000": G.CORPUS_HASH,
                   "kind_hashes_first_1000": G.KIND_HASHES,
                   "canonical_seed": G.CANONICAL_SEED, "vocab_size": G.VOCAB.size, "mix": cfg.mix or G.DEFAULT_MIX},
        "training": {**cfg.to_dict(), "status": status, "tokens_seen": history.get("tokens_seen", 0),
                     "seconds": round(history.get("seconds", 0.0), 1), "tokens_per_s": round(history.get("tokens_per_s", 0.0), 1),
                     "val_seed": cfg.seed + VAL_SEED_OFFSET, "final_train_loss": history["train_loss"][-1] if history["train_loss"] else None,
                     "final_val_loss": val, "torch": torch.__version__,
                     "loss_curve": {"tokens": history["tokens"], "train_loss": [round(v, 5) for v in history["train_loss"]],
                                    "val": [[s, t, round(v, 5)] for s, t, v in history["val"]]}, **extra},
        "evaluation": evaluation or {},
        "notebook": notebook,
    }


def train_and_save(model_config: TinyGPTConfig, cfg: TrainConfig, name: str | None = "tinylm_ci", directory=None,
                   checkpoint_every_s: float | None = 600.0, eval_kwargs: dict | None = None, progress: bool = True,
                   init_directory=None):
    """Train, evaluate and write the zoo checkpoint ``name`` (skipped when ``name`` is None).

    Every ``checkpoint_every_s`` seconds an intermediate checkpoint is written to the same name with
    ``training.status = "partial"`` and the tokens seen so far, so a usable model exists if the run is cut
    short. Returns ``(model, history, manifest)``.
    """
    from common.zoo import save_checkpoint

    def save_partial(model, history):
        manifest = build_manifest(model, cfg, history, {"val_loss": history["val"][-1][2] if history["val"] else None},
                                  status="partial")
        save_checkpoint(name, state_tensors(model), manifest, directory=directory)

    model, history = train_tinylm(model_config, cfg, checkpoint_every_s=checkpoint_every_s,
                                  on_checkpoint=save_partial if name else None, progress=progress,
                                  init_directory=init_directory)
    evaluation = evaluate(model, seed=cfg.seed, **(eval_kwargs or {}))
    manifest = build_manifest(model, cfg, history, evaluation)
    if name:
        save_checkpoint(name, state_tensors(model), manifest, directory=directory)
    return model, history, manifest
