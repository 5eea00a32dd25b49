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
- :func:`sample_clustered_qkv`: our reading of the generative model of the paper's analysis:
  queries and keys are unit vectors around C random cluster centres (intra-cluster distance
  δ), the logits are β·qᵀk (inverse temperature β), so each query's large entries are the keys
  of its cluster, a structure a hash can find;
- :func:`budget_split`: equal memory — budget r entries per query row: Performer m = r
  features, LSH r keys per bucket, Scatterbrain r/2 of each;
- :func:`approximations`: the normalised attention matrices of every method from one draw,
  including two oracles that need the exact matrix: ``topk_oracle`` (the r largest entries of
  each row) and ``sb_oracle`` (Scatterbrain with the r/2 largest entries as its sparse support
  instead of the LSH buckets, plus r/2 features), which separates "LSH misses the large
  entries" from "sparse + low rank cannot approximate this matrix";
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
METHODS = ("performer", "smyrf", "reformer", "scatterbrain", "topk_oracle", "sb_oracle")
REALISABLE = ("performer", "smyrf", "reformer", "scatterbrain")
BASELINES = ("performer", "smyrf")  # the low-rank and sparse halves of Scatterbrain, at full budget


def sample_qkv(n: int, d: int, s: float, generator: torch.Generator, *, d_v: int | None = None):
    """Q, K ~ N(0, I_d)·s and V ~ N(0, I_{d_v}) in float64 (``(n, d)``, ``(n, d)``, ``(n, d_v)``)."""
    if n <= 0 or d <= 0 or s <= 0:
        raise ValueError(f"n, d and s must be positive, got {n}, {d}, {s}")
    q = s * torch.randn(n, d, dtype=F64, generator=generator)
    k = s * torch.randn(n, d, dtype=F64, generator=generator)
    v = torch.randn(n, d_v or d, dtype=F64, generator=generator)
    return q, k, v


def sample_clustered_qkv(n: int, d: int, beta: float, generator: torch.Generator, *, delta: float = 0.3,
                         n_clusters: int = 16, d_v: int | None = None):
    """Clustered queries and keys with inverse temperature ``beta`` (float64; Q pre-scaled by β·√d).

    C = ``n_clusters`` centres μ_c uniform on the unit sphere; every query and key picks a
    centre uniformly and is the unit vector normalise(μ_c + δ·g/√d), g ~ N(0, I_d), so its
    distance to the centre is about δ. The logits with the default scale 1/√d are β·qᵀk:
    about β/(1 + δ²) within a cluster and β·μ_aᵀμ_b ≈ β·N(0, 1/d) across clusters. V ~ N(0, I).
    """
    if n <= 0 or d <= 0 or beta <= 0 or delta < 0 or n_clusters <= 0:
        raise ValueError(f"n, d, beta, n_clusters must be positive and delta >= 0, got {n}, {d}, {beta}, "
                         f"{n_clusters}, {delta}")
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, d, dtype=F64, generator=generator), dim=-1)

    def points():
        which = torch.randint(0, n_clusters, (n,), generator=generator)
        noise = torch.randn(n, d, dtype=F64, generator=generator) * (delta / math.sqrt(d))
        return torch.nn.functional.normalize(centres[which] + noise, dim=-1)

    q, k = points(), points()
    v = torch.randn(n, d_v or d, dtype=F64, generator=generator)
    return beta * math.sqrt(d) * q, k, v


def sparse_lowrank_with_support(q: torch.Tensor, k: torch.Tensor, features: at.RandomFeatures,
                                support: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Row-normalised Scatterbrain estimate with a given sparse support (exact there, Performer elsewhere)."""
    estimate = torch.where(support, at.unnormalized_attention_matrix(q, k, causal=causal),
                           at.performer_kernel_matrix(q, k, features, causal=causal))
    return estimate / estimate.sum(-1, keepdim=True).clamp_min(torch.finfo(estimate.dtype).tiny)


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
                   exact: torch.Tensor | None = None, causal: bool = False) -> dict:
    """Normalised attention matrices of every method at budget r, drawn from ``generator``.

    ``smyrf`` and ``reformer`` are LSH attention with XBOX+/E2LSH and angular hashing;
    ``scatterbrain`` uses SMYRF hashing, as the official ``SBSmyrfAttention``;
    ``topk_oracle`` keeps each row's r largest exact entries and ``sb_oracle`` is Scatterbrain with
    each row's r/2 largest exact entries as its support (r/2 features); neither is realisable
    (both need A).
    """
    n, d = q.shape[-2:]
    split = budget_split(r)
    out = {}
    features = at.draw_random_features(d, split["performer"]["num_features"], generator=generator)
    out["performer"] = at.performer_attention_matrix(q, k, features, causal=causal)
    for name, kind in (("smyrf", "xbox"), ("reformer", "angular")):
        lsh = at.draw_lsh(d, kind=kind, n_buckets=at.default_n_buckets(n, r), generator=generator)
        out[name] = at.lsh_attention_matrix(q, k, lsh, bucket_size=r, causal=causal)
    m, b = split["scatterbrain"]["num_features"], split["scatterbrain"]["bucket_size"]
    features = at.draw_random_features(d, m, generator=generator)
    lsh = at.draw_lsh(d, kind="xbox", generator=generator)
    out["scatterbrain"] = at.scatterbrain_attention_matrix(q, k, features, lsh, bucket_size=b, causal=causal)
    exact = at.softmax_attention_matrix(q, k, causal=causal) if exact is None else exact
    visible = exact > 0
    support = topk_support(exact, r) & visible
    sparse = torch.where(support, exact, torch.zeros_like(exact))
    out["topk_oracle"] = sparse / sparse.sum(-1, keepdim=True)
    features = at.draw_random_features(d, m, generator=generator)
    out["sb_oracle"] = sparse_lowrank_with_support(q, k, features, topk_support(exact, b) & visible, causal=causal)
    return out


def temperature_sweep(n: int, d: int, temperatures, budgets, n_seeds: int, seed: int, progress=None,
                      sampler=sample_qkv) -> pd.DataFrame:
    """One row per (temperature, budget, seed, method): entropy and relative errors of A and A·V.

    ``sampler(n, d, temperature, generator)`` draws Q, K, V (:func:`sample_qkv` by default; a
    ``functools.partial`` of :func:`sample_clustered_qkv` for the clustered model).
    """
    rows = []
    configs = [(ti, s, r, rep) for ti, s in enumerate(temperatures) for r in budgets for rep in range(n_seeds)]
    for ti, s, r, rep in (progress(configs) if progress else configs):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + ti * 10_007 + r * 101 + rep)
        q, k, v = sampler(n, d, s, generator)
        exact = at.softmax_attention_matrix(q, k)
        entropy = float(at.row_entropy(exact).mean())
        for method, approx in approximations(q, k, r, generator, exact).items():
            errors = at.attention_errors(approx, exact, v)
            rows.append({"t": ti, "s": float(s), "r": r, "seed": rep, "method": method, "entropy": entropy,
                         "err_attn": errors["attn"], "err_out": errors["out"]})
    return pd.DataFrame(rows)


def summarize(sweep: pd.DataFrame, metric: str = "err_out") -> pd.DataFrame:
    """Mean error per (budget, temperature, method) as a wide table, with the entropy.

    ``informative`` is False where every realisable method (Performer, both LSH, Scatterbrain)
    has a mean error above 1, i.e. is worse than outputting zero: such rows say nothing about
    which approximation is better.
    """
    table = sweep.pivot_table(index=["r", "t", "s"], columns="method", values=metric, aggfunc="mean")
    table["entropy"] = sweep.groupby(["r", "t", "s"])["entropy"].mean()
    table["best_baseline"] = table[list(BASELINES)].min(axis=1)
    table["sb_over_best"] = table["scatterbrain"] / table["best_baseline"]
    table["informative"] = table[[m for m in REALISABLE if m in table]].min(axis=1) <= 1
    return table.reset_index()


def sweep_statistics(table: pd.DataFrame, r: int) -> dict:
    """The claims' numbers at budget r, over the informative temperatures only.

    Temperatures are in increasing order of s (decreasing entropy); rows where every realisable
    method has an error above 1 are left out (``n_informative`` counts the rest; with none the
    comparative numbers are NaN). ``sb_oracle_over_best`` is the same ratio as
    ``worst_sb_over_best`` for Scatterbrain with the oracle top-r/2 support.
    """
    everything = table[table.r == r].sort_values("s")
    rows = everything[everything["informative"]]
    stats = {"n_temperatures": len(everything), "n_informative": len(rows),
             "low_entropy_informative": bool(everything["informative"].iloc[-1])}
    if len(rows) == 0:
        nan = float("nan")
        return stats | {"worst_sb_over_best": nan, "best_gain": nan, "high_entropy_sparse_over_lowrank": nan,
                        "low_entropy_lowrank_over_sparse": nan, "sign_changes": 0, "temperatures_sb_best": 0,
                        "worst_sb_oracle_over_best": nan, "best_gain_sb_oracle": nan}
    high, low = rows.iloc[0], rows.iloc[-1]
    diff = np.sign(rows["performer"].to_numpy() - rows["smyrf"].to_numpy())
    oracle_ratio = rows["sb_oracle"] / rows["best_baseline"]
    return stats | {
        "worst_sb_over_best": float(rows["sb_over_best"].max()),
        "best_gain": float((1 / rows["sb_over_best"]).max()),
        "high_entropy_sparse_over_lowrank": float(high["smyrf"] / high["performer"]),
        "low_entropy_lowrank_over_sparse": float(low["performer"] / low["smyrf"]),
        "sign_changes": int((np.diff(diff[diff != 0]) != 0).sum()),
        "temperatures_sb_best": int((rows["sb_over_best"] <= 1).sum()),
        "worst_sb_oracle_over_best": float(oracle_ratio.max()),
        "best_gain_sb_oracle": float((1 / oracle_ratio).max()),
    }


def real_attention_errors(qkvs, r: int, n_seeds: int, seed: int) -> pd.DataFrame:
    """Errors of every method on a model's own causal attention: one row per (layer, seed, method).

    ``qkvs[l] = (q, k, v)`` of shape ``(B, H, T, d_h)`` (a model's ``return_qkv``); the error is the
    relative Frobenius error of A·V over all sequences and heads of the layer, in float64.
    """
    rows = []
    for layer, (q, k, v) in enumerate(qkvs):
        q, k, v = (t.detach().double() for t in (q, k, v))
        exact = at.softmax_attention_matrix(q, k, causal=True)
        for rep in range(n_seeds):
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + layer * 101 + rep)
            for method, approx in approximations(q, k, r, generator, exact, causal=True).items():
                errors = at.attention_errors(approx, exact, v)
                rows.append({"layer": layer, "seed": rep, "method": method, "err_out": errors["out"],
                             "entropy": float(at.row_entropy(exact).mean())})
    return pd.DataFrame(rows)


def dropin_perplexity(model, tokens: torch.Tensor, r: int, n_seeds: int, seed: int,
                      methods=("performer", "smyrf", "scatterbrain")) -> dict:
    """Perplexity of a causal LM with every layer's attention replaced by each method at budget r.

    Returns ``{"exact": ppl, method: [ppl per seed]}``; each seed draws fresh features and hashes
    for every call from its own generator (the same seeds for every method). The model's
    ``set_attn_fn`` hook is restored to exact attention afterwards.
    """
    from common.tinylm import perplexity

    split = budget_split(r)
    settings = {"performer": dict(num_features=r), "smyrf": dict(bucket_size=r), "reformer": dict(bucket_size=r),
                "scatterbrain": dict(num_features=split["scatterbrain"]["num_features"],
                                     bucket_size=split["scatterbrain"]["bucket_size"], lsh_kind="xbox")}
    model.set_attn_fn(None)
    result = {"exact": perplexity(model, tokens)}
    try:
        for method in methods:
            kernel = at.make_attention(method, **settings[method])
            values = []
            for rep in range(n_seeds):
                generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + rep)
                model.set_attn_fn(lambda q, k, v, kernel=kernel, g=generator: kernel(q, k, v, causal=True, generator=g))
                values.append(perplexity(model, tokens))
            result[method] = values
    finally:
        model.set_attn_fn(None)
    return result


def lsh_kernel_matrix(q: torch.Tensor, k: torch.Tensor, lsh: at.LSHHash, bucket_size: int) -> torch.Tensor:
    """The sparse-only estimate of exp(QKᵀ/√d): exact on the LSH support, zero elsewhere (biased)."""
    support = at.lsh_support(q, k, lsh, bucket_size=bucket_size) > 0
    return torch.where(support, at.unnormalized_attention_matrix(q, k), torch.zeros((), dtype=F64))


def bias_study(n: int, d: int, s: float, r: int, draws: int, seed: int, progress=None, n_batches: int = 10) -> dict:
    """Mean over ``draws`` independent features/hashes of each estimate, against its target.

    Returns :func:`common.attention.bias_report` dictionaries for the unnormalised
    Scatterbrain, Performer and LSH estimates (target exp(QKᵀ/√d)) and for the normalised
    Scatterbrain matrix (target softmax(QKᵀ/√d)), plus the entropy of the exact attention and
    Theorem 1's variance check: ``variance_ratio_sb_over_performer`` (total variance of
    Scatterbrain over Performer's, same features), its standard error from ``n_batches``
    batches of draws, ``variance_ratio_theory`` = Σ(1 − p̂_ij)·Var̂_P,ij / ΣVar̂_P,ij with p̂_ij
    the measured collision frequency of each pair (the theorem, pair by pair), and
    ``collision_mean`` = mean p̂ (= b/n when every query shares a chunk with exactly b keys,
    so 1 − b/n is the ratio when collisions are independent of the variance).
    """
    if draws % n_batches:
        raise ValueError(f"draws ({draws}) must be a multiple of n_batches ({n_batches})")
    generator = torch.Generator().manual_seed(int(seed))
    q, k, _ = sample_qkv(n, d, s, generator)
    kernel = at.unnormalized_attention_matrix(q, k)
    attn = at.softmax_attention_matrix(q, k)
    split = budget_split(r)["scatterbrain"]
    m, b = split["num_features"], split["bucket_size"]
    moments = {name: at.SeedMoments() for name in ("scatterbrain", "performer", "lsh", "scatterbrain_normalized")}
    batch_moments = [{name: at.SeedMoments() for name in ("scatterbrain", "performer")} for _ in range(n_batches)]
    performer_sq = torch.zeros_like(kernel)
    collisions = torch.zeros_like(kernel)
    for i in (progress(range(draws)) if progress else range(draws)):
        features = at.draw_random_features(d, m, generator=generator)
        lsh = at.draw_lsh(d, kind="xbox", generator=generator)
        support = at.lsh_support(q, k, lsh, bucket_size=b) > 0
        performer = at.performer_kernel_matrix(q, k, features)
        sb = torch.where(support, kernel, performer)   # = scatterbrain_kernel_matrix (tested)
        moments["scatterbrain"].add(sb)
        moments["scatterbrain_normalized"].add(sb / sb.sum(-1, keepdim=True))
        moments["performer"].add(performer)
        moments["lsh"].add(torch.where(support, kernel, torch.zeros((), dtype=F64)))
        batch = batch_moments[i * n_batches // draws]
        batch["scatterbrain"].add(sb)
        batch["performer"].add(performer)
        performer_sq += performer.square()
        collisions += support
    reports = {name: at.bias_report(mom, attn if name.endswith("normalized") else kernel)
               for name, mom in moments.items()}
    reports["variance_ratio_sb_over_performer"] = moments["scatterbrain"].variance_sum / moments["performer"].variance_sum
    ratios = np.array([bm["scatterbrain"].variance_sum / bm["performer"].variance_sum for bm in batch_moments])
    reports["variance_ratio_batches"] = ratios.tolist()
    reports["variance_ratio_se"] = float(ratios.std(ddof=1) / math.sqrt(n_batches))
    p_hat = collisions / draws
    var_performer = (performer_sq - draws * moments["performer"].mean.square()) / (draws - 1)
    reports["variance_ratio_theory"] = float(((1 - p_hat) * var_performer).sum() / var_performer.sum())
    reports["collision_mean"] = float(p_hat.mean())
    reports["entropy"] = float(at.row_entropy(attn).mean())
    reports["logit_std"] = float((q @ k.T / math.sqrt(d)).std())
    return reports


def support_mass(q: torch.Tensor, k: torch.Tensor, r: int, generator: torch.Generator, n_draws: int = 5) -> dict:
    """Mean fraction of each row's exact attention mass inside the LSH chunks (buckets of r) and the top-r entries."""
    exact = at.softmax_attention_matrix(q, k)
    out = {"topk": float((exact * topk_support(exact, r)).sum(-1).mean())}
    for name, kind in (("smyrf", "xbox"), ("reformer", "angular")):
        masses = []
        for _ in range(n_draws):
            lsh = at.draw_lsh(q.shape[-1], kind=kind, n_buckets=at.default_n_buckets(q.shape[-2], r), generator=generator)
            support = at.lsh_support(q, k, lsh, bucket_size=r) > 0
            masses.append(float((exact * support).sum(-1).mean()))
        out[name] = float(np.mean(masses))
    return out
