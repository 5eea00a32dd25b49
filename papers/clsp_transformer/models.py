"""The two learned setup predictors: an encoder-decoder transformer (the paper's) and a BiLSTM tagger (LSTM-Opt).

Both read the same per-period features ``u_1..u_T`` (:func:`lot_sizing.features`) and output a setup
vector ``yhat in {0,1}^T``; both are trained on the MIP-optimal ``y*`` of the same training instances
with the same optimiser, learning rate, batch size and number of steps (:func:`train`).

**Transformer** (Cooper et al. 2024, Section 3). The encoder maps the instance to memory
``M = Enc(W u + P)``; the decoder generates the setup sequence autoregressively, token by token, each
step attending causally to the setups decided so far and across to ``M``:

    p(y_t | y_<t, u) = softmax(W_o Dec([BOS, y_1, ..., y_{t-1}] + P, M))_t          (6)

trained by teacher forcing (cross-entropy on the shifted targets) and decoded greedily. With
``with_eos`` the target sequence ends in an End-of-Sequence token after ``y_T`` (the paper's EOS variant);
a sequence that emits EOS before period ``T`` leaves the remaining periods closed (the repair step then
reopens what feasibility needs).

**BiLSTM tagger** (Yilmaz and Büyüktahtakın 2023). A bidirectional LSTM reads the features forward and
backward in time; a linear head gives ``P(y_t = 1) = sigmoid(w . [h_t^fwd, h_t^bwd])``, trained by binary
cross-entropy and thresholded at 1/2 (every period tagged independently given the hidden states).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

__all__ = ["SetupTransformer", "BiLSTMTagger", "train", "predict", "n_parameters"]

ZERO, ONE, BOS, EOS = 0, 1, 2, 3


class SetupTransformer(nn.Module):
    """Encoder-decoder transformer over periods; the decoder emits ``y_1..y_T`` (then EOS if ``with_eos``)."""

    def __init__(self, n_features: int, max_T: int, *, d_model: int = 32, n_heads: int = 4, d_ff: int = 64,
                 n_layers: int = 1, with_eos: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.max_T, self.with_eos = max_T, with_eos
        self.embed_in = nn.Linear(n_features, d_model)
        self.embed_tok = nn.Embedding(4, d_model)           # 0, 1, BOS, EOS
        self.pos = nn.Embedding(max_T + 1, d_model)         # shared by encoder and decoder (aligns period t)
        enc = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True)
        dec = nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, n_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, n_layers)
        self.head = nn.Linear(d_model, 3 if with_eos else 2)  # logits over {0, 1, EOS} or {0, 1}

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        T = u.shape[1]
        if T > self.max_T:
            raise ValueError(f"T={T} exceeds the model's max_T={self.max_T}")
        return self.encoder(self.embed_in(u) + self.pos.weight[:T])

    def decode(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(L)
        h = self.decoder(self.embed_tok(tokens) + self.pos.weight[:L], memory, tgt_mask=causal, tgt_is_causal=True)
        return self.head(h)

    def loss(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of (6) on ``y`` (``(B, T)`` long), plus the EOS target if used."""
        B, T = y.shape
        target = torch.cat([y, torch.full((B, 1), EOS - 1)], 1) if self.with_eos else y   # EOS is class 2
        inputs = torch.cat([torch.full((B, 1), BOS), y], 1)[:, : target.shape[1]]        # shifted right
        logits = self.decode(inputs, self.encode(u))
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    @torch.no_grad()
    def predict(self, u: torch.Tensor) -> torch.Tensor:
        """Greedy decoding of (6); returns ``(B, T)`` setups in {0, 1}.

        An EOS emitted before period ``T`` closes every remaining period; ``self.ended_early`` (a ``(B,)``
        bool array) records which sequences ended so, for the last batch decoded.
        """
        B, T = u.shape[:2]
        memory = self.encode(u)
        tokens = torch.full((B, 1), BOS)
        ended = torch.zeros(B, dtype=torch.bool)
        out = torch.zeros(B, T, dtype=torch.long)
        for t in range(T):
            step = self.decode(tokens, memory)[:, -1].argmax(-1)
            ended |= step == EOS - 1
            y_t = torch.where(ended, torch.zeros_like(step), step)
            out[:, t] = y_t
            tokens = torch.cat([tokens, y_t[:, None]], 1)
        self.ended_early = ended.numpy().copy()
        return out


class BiLSTMTagger(nn.Module):
    """Bidirectional LSTM sequence tagger: ``P(y_t = 1)`` from the forward and backward states at ``t``."""

    def __init__(self, n_features: int, *, hidden: int = 32, n_layers: int = 1):
        super().__init__()
        self.embed_in = nn.Linear(n_features, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=n_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 1)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed_in(u))
        return self.head(h).squeeze(-1)

    def loss(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self.logits(u), y.float())

    @torch.no_grad()
    def predict(self, u: torch.Tensor) -> torch.Tensor:
        return (self.logits(u) > 0).long()


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(model: nn.Module, u: np.ndarray, y: np.ndarray, *, steps: int, batch_size: int = 64, lr: float = 3e-3,
          seed: int = 0) -> list[float]:
    """Adam on ``model.loss`` for ``steps`` minibatches drawn with a generator seeded by ``seed``.

    The caller builds the model after seeding (``common.harness.seeding.seeded_training``), so the same
    seed gives the same initialisation and batches. Returns the per-step losses.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    u_t, y_t = torch.as_tensor(u, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    if u_t.shape[:2] != y_t.shape:
        raise ValueError(f"features {tuple(u_t.shape)} and labels {tuple(y_t.shape)} disagree")
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, u_t.shape[0], (batch_size,), generator=generator)
        loss = model.loss(u_t[idx], y_t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def predict(model: nn.Module, u: np.ndarray) -> tuple[np.ndarray, float]:
    """Setups for a batch of instances and the wall time of the forward pass (seconds, whole batch)."""
    u_t = torch.as_tensor(u, dtype=torch.float32)
    model.eval()
    start = time.perf_counter()
    y = model.predict(u_t)
    return y.numpy().astype(np.int8), time.perf_counter() - start
