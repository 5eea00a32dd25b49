"""Scatterbrain (Chen et al., NeurIPS 2021): sparse + low-rank attention, on synthetic attention.

The paper's observation: a *low-rank* approximation (Performer random features) is good
when the softmax temperature is high (attention is spread out, high entropy), a *sparse*
one (LSH buckets) when it is low (each query attends to a few keys), and their
combination can beat both. Scatterbrain estimates the unnormalised attention exp(QKᵀ/√d) by

    Â = φ(Q)φ(K)ᵀ + S,   S_ij = exp(q_iᵀk_j/√d) − φ(q_i)ᵀφ(k_j) on the LSH support, 0 elsewhere,   (Sec. 4)

exact where LSH puts a pair in the same bucket and the Performer estimate elsewhere, with
one joint normaliser. Since the hash is independent of the features, E[Â] = exp(QKᵀ/√d)
(unbiased) and Var[Â_ij] = (1 − p_ij)·Var[φ(q_i)ᵀφ(k_j)] (Theorem 1, p_ij the collision
probability). The kernels themselves live in :mod:`common.attention`; this module builds the
paper's experiments on top of them:

- :func:`sample_qkv`: Q, K ~ N(0, I)·s, V ~ N(0, I); the scale s sets the temperature
  (logits have standard deviation s² for d-dimensional rows and scale 1/√d);
- :func:`budget_split`: equal memory — budget r entries per query row: Performer m = r
  features, LSH r keys per bucket, Scatterbrain r/2 of each;
- :func:`approximations`: the normalised attention matrices of every method from one draw;
- :func:`temperature_sweep`: errors of every method across temperatures, budgets and seeds;
- :func:`bias_study`: the mean of each *unnormalised* estimate over many independent draws
  against exp(QKᵀ/√d), and the same for the normalised Scatterbrain matrix (a ratio of
  unbiased estimates, hence not unbiased itself).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from common import attention as at

F64 = torch.float64
METHODS = ("performer", "smyrf", "reformer", "scatterbrain", "topk_oracle")
BASELINES = ("performer", "smyrf")  # the low-rank and sparse halves of Scatterbrain, at full budget


def sample_qkv(n: int, d: int, s: float, generator: torch.Generator, *, d_v: int | None = None):
    """Q, K ~ N(0, I_d)·s and V ~ N(0, I_{d_v}) in float64 (``(n, d)``, ``(n, d)``, ``(n, d_v)``)."""
    if n <= 0 or d <= 0 or s <= 0:
        raise ValueError(f"n, d and s must be positive, got {n}, {d}, {s}")
    q = s * torch.randn(n, d, dtype=F64, generator=generator)
    k = s * torch.randn(n, d, dtype=F64, generator=generator)
    v = torch.randn(n, d_v or d, dtype=F64, generator=generator)
    return q, k, v


def budget_split(r: int) -> dict:
    """Equal-memory settings for budget r (entries per query row; see ``attention_memory``)."""
    if r < 2 or r % 2:
        raise ValueError(f"the budget must be an even number >= 2, got {r}")
    return {"performer": {"num_features": r}, "lsh": {"bucket_size": r},
            "scatterbrain": {"num_features": r // 2, "bucket_size": r // 2}}


def topk_support(attn: torch.Tensor, r: int) -> torch.Tensor:
    """Oracle sparse support: the r largest entries of each row of the exact attention."""
    index = attn.topk(r, dim=-1).indices
    return torch.zeros_like(attn, dtype=torch.bool).scatter(-1, index, True)


def approximations(q: torch.Tensor, k: torch.Tensor, r: int, generator: torch.Generator,
                   exact: torch.Tensor | None = None) -> dict:
    """Normalised attention matrices of every method at budget r, drawn from ``generator``.

    ``smyrf`` and ``reformer`` are LSH attention with XBOX+/E2LSH and angular hashing;
    ``scatterbrain`` uses SMYRF hashing, as the official ``SBSmyrfAttention``;
    ``topk_oracle`` keeps each row's r largest exact entries (not realisable: it needs A).
    """
    n, d = q.shape
    split = budget_split(r)
    out = {}
    features = at.draw_random_features(d, split["performer"]["num_features"], generator=generator)
    out["performer"] = at.performer_attention_matrix(q, k, features)
    for name, kind in (("smyrf", "xbox"), ("reformer", "angular")):
        lsh = at.draw_lsh(d, kind=kind, n_buckets=at.default_n_buckets(n, r), generator=generator)
        out[name] = at.lsh_attention_matrix(q, k, lsh, bucket_size=r)
    m, b = split["scatterbrain"]["num_features"], split["scatterbrain"]["bucket_size"]
    features = at.draw_random_features(d, m, generator=generator)
    lsh = at.draw_lsh(d, kind="xbox", generator=generator)
    out["scatterbrain"] = at.scatterbrain_attention_matrix(q, k, features, lsh, bucket_size=b)
    exact = at.softmax_attention_matrix(q, k) if exact is None else exact
    support = topk_support(exact, r)
    sparse = torch.where(support, exact, torch.zeros_like(exact))
    out["topk_oracle"] = sparse / sparse.sum(-1, keepdim=True)
    return out


def temperature_sweep(n: int, d: int, temperatures, budgets, n_seeds: int, seed: int, progress=None) -> pd.DataFrame:
    """One row per (temperature, budget, seed, method): entropy and relative errors of A and A·V."""
    rows = []
    configs = [(ti, s, r, rep) for ti, s in enumerate(temperatures) for r in budgets for rep in range(n_seeds)]
    for ti, s, r, rep in (progress(configs) if progress else configs):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + ti * 10_007 + r * 101 + rep)
        q, k, v = sample_qkv(n, d, s, generator)
        exact = at.softmax_attention_matrix(q, k)
        entropy = float(at.row_entropy(exact).mean())
        for method, approx in approximations(q, k, r, generator, exact).items():
            errors = at.attention_errors(approx, exact, v)
            rows.append({"t": ti, "s": float(s), "r": r, "seed": rep, "method": method, "entropy": entropy,
                         "err_attn": errors["attn"], "err_out": errors["out"]})
    return pd.DataFrame(rows)


def summarize(sweep: pd.DataFrame, metric: str = "err_out") -> pd.DataFrame:
    """Mean error per (budget, temperature, method) as a wide table, with the entropy."""
    table = sweep.pivot_table(index=["r", "t", "s"], columns="method", values=metric, aggfunc="mean")
    table["entropy"] = sweep.groupby(["r", "t", "s"])["entropy"].mean()
    table["best_baseline"] = table[list(BASELINES)].min(axis=1)
    table["sb_over_best"] = table["scatterbrain"] / table["best_baseline"]
    return table.reset_index()


def sweep_statistics(table: pd.DataFrame, r: int) -> dict:
    """The claims' numbers at budget r (temperatures in increasing order of s, i.e. decreasing entropy)."""
    rows = table[table.r == r].sort_values("s")
    high, low = rows.iloc[0], rows.iloc[-1]
    diff = np.sign(rows["performer"].to_numpy() - rows["smyrf"].to_numpy())
    return {
        "worst_sb_over_best": float(rows["sb_over_best"].max()),
        "best_gain": float((1 / rows["sb_over_best"]).max()),
        "high_entropy_sparse_over_lowrank": float(high["smyrf"] / high["performer"]),
        "low_entropy_lowrank_over_sparse": float(low["performer"] / low["smyrf"]),
        "sign_changes": int((np.diff(diff[diff != 0]) != 0).sum()),
        "temperatures_sb_best": int((rows["sb_over_best"] <= 1).sum()),
    }


def lsh_kernel_matrix(q: torch.Tensor, k: torch.Tensor, lsh: at.LSHHash, bucket_size: int) -> torch.Tensor:
    """The sparse-only estimate of exp(QKᵀ/√d): exact on the LSH support, zero elsewhere (biased)."""
    support = at.lsh_support(q, k, lsh, bucket_size=bucket_size) > 0
    return torch.where(support, at.unnormalized_attention_matrix(q, k), torch.zeros((), dtype=F64))


def bias_study(n: int, d: int, s: float, r: int, draws: int, seed: int, progress=None) -> dict:
    """Mean over ``draws`` independent features/hashes of each estimate, against its target.

    Returns :func:`common.attention.bias_report` dictionaries for the unnormalised
    Scatterbrain, Performer and LSH estimates (target exp(QKᵀ/√d)) and for the normalised
    Scatterbrain matrix (target softmax(QKᵀ/√d)), plus the entropy of the exact attention.
    """
    generator = torch.Generator().manual_seed(int(seed))
    q, k, _ = sample_qkv(n, d, s, generator)
    kernel = at.unnormalized_attention_matrix(q, k)
    attn = at.softmax_attention_matrix(q, k)
    split = budget_split(r)["scatterbrain"]
    m, b = split["num_features"], split["bucket_size"]
    moments = {name: at.SeedMoments() for name in ("scatterbrain", "performer", "lsh", "scatterbrain_normalized")}
    for _ in (progress(range(draws)) if progress else range(draws)):
        features = at.draw_random_features(d, m, generator=generator)
        lsh = at.draw_lsh(d, kind="xbox", generator=generator)
        sb = at.scatterbrain_kernel_matrix(q, k, features, lsh, bucket_size=b)
        moments["scatterbrain"].add(sb)
        moments["scatterbrain_normalized"].add(sb / sb.sum(-1, keepdim=True))
        moments["performer"].add(at.performer_kernel_matrix(q, k, features))
        moments["lsh"].add(lsh_kernel_matrix(q, k, lsh, b))
    reports = {name: at.bias_report(mom, attn if name.endswith("normalized") else kernel)
               for name, mom in moments.items()}
    reports["variance_ratio_sb_over_performer"] = moments["scatterbrain"].variance_sum / moments["performer"].variance_sum
    reports["entropy"] = float(at.row_entropy(attn).mean())
    reports["logit_std"] = float((q @ k.T / math.sqrt(d)).std())
    return reports
