"""The learn-then-optimise pipeline and its evaluation against the exact MIP (Cooper et al. 2024, Algorithm 1).

For each test instance: the model predicts setups ``yhat``; post-processing repairs ``yhat`` until (5)
holds (:func:`lot_sizing.repair_setups`); the LP with ``y`` fixed gives quantities and stocks; setups the
LP leaves idle (``x_t = 0``) are closed, which lowers the cost by their ``f_t`` and keeps the plan
feasible. The result is compared with the MIP optimum of the same instance:

    gap = (cost(pipeline) - cost(MIP)) / cost(MIP)                                     (7)

and the pipeline's time (the model's batch forward pass shared equally over the batch, plus repair and
LP) with HiGHS's time on the MIP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.mip import InfeasibleError
from papers.clsp_transformer.lot_sizing import (
    Instances,
    is_feasible,
    plan_cost,
    repair_setups,
    solve_fixed_setup_lp,
)

__all__ = ["Dataset", "load_dataset", "PipelineResult", "run_pipeline", "train_and_evaluate", "compare_models",
           "gap_intervals", "mip_reference", "mip_at_gap", "dp_mismatch", "KINDS"]

KINDS = ("transformer", "lstm", "transformer_noeos")
"""The compared models: the transformer (with EOS), the BiLSTM of LSTM-Opt, and the transformer without EOS."""

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass
class Dataset:
    train: Instances
    train_setups: np.ndarray
    test: Instances
    test_setups: np.ndarray
    test_objective: np.ndarray
    test_mip_seconds: np.ndarray


def load_dataset(T: int, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """The committed labelled instances of ``make_dataset.py`` (first ``n_train`` / ``n_test`` of each split)."""
    path = DATA_DIR / f"clsp_T{T}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m papers.clsp_transformer.make_dataset --T {T}`")
    data = np.load(path)
    inst = Instances.from_dict(data)
    total_train = int(data["n_train"])
    n_train = total_train if n_train is None else n_train
    n_test = inst.n - total_train if n_test is None else n_test
    if not 0 < n_train <= total_train or not 0 < n_test <= inst.n - total_train:
        raise ValueError(f"asked for {n_train} train / {n_test} test instances; the file has "
                         f"{total_train} / {inst.n - total_train}")
    tr = np.arange(n_train)
    te = total_train + np.arange(n_test)
    return Dataset(train=inst[tr], train_setups=data["setups"][tr], test=inst[te], test_setups=data["setups"][te],
                   test_objective=data["objective"][te], test_mip_seconds=data["mip_seconds"][te])


@dataclass
class PipelineResult:
    """Per-instance arrays of one model's pipeline on a test set."""

    feasible_before_repair: np.ndarray   # bool: did yhat satisfy (5)?
    opened_by_repair: np.ndarray         # setups opened by repair
    infeasible_after: np.ndarray         # bool: the LP found no plan even after repair
    objective: np.ndarray
    gap: np.ndarray                      # (7)
    setup_accuracy: np.ndarray           # fraction of periods where yhat == y*
    seconds: np.ndarray                  # model share + repair + LP


def run_pipeline(inst: Instances, predicted, optimum, model_seconds: float, optimal_setups=None) -> PipelineResult:
    """Repair, LP, idle-setup closing and gap (7) for every instance of ``inst``."""
    predicted = np.asarray(predicted, dtype=np.int8)
    optimum = np.asarray(optimum, dtype=float)
    if predicted.shape != (inst.n, inst.T) or optimum.shape != (inst.n,):
        raise ValueError(f"predicted {predicted.shape} / optimum {optimum.shape} do not match {inst.n} instances")
    share = model_seconds / inst.n
    feasible = is_feasible(inst.demand, inst.capacity, predicted)
    out = {k: np.zeros(inst.n) for k in ("opened", "infeasible", "objective", "seconds")}
    for i in range(inst.n):
        start = time.perf_counter()
        y, opened = repair_setups(inst, i, predicted[i])
        try:
            lp = solve_fixed_setup_lp(inst, i, y)
        except InfeasibleError:
            out["infeasible"][i] = 1.0
            out["objective"][i] = np.nan
            out["seconds"][i] = time.perf_counter() - start + share
            continue
        T = inst.T
        x, s = lp.x[:T], lp.x[T:]
        y_used = (y == 1) & (x > 1e-9)                  # close setups the LP leaves idle
        out["objective"][i] = plan_cost(inst, i, x, s, y_used)
        out["opened"][i] = opened
        out["seconds"][i] = time.perf_counter() - start + share
    gap = (out["objective"] - optimum) / optimum
    acc = (np.mean(predicted == np.asarray(optimal_setups), axis=1) if optimal_setups is not None
           else np.full(inst.n, np.nan))
    return PipelineResult(feasible_before_repair=feasible, opened_by_repair=out["opened"],
                          infeasible_after=out["infeasible"].astype(bool), objective=out["objective"], gap=gap,
                          setup_accuracy=acc, seconds=out["seconds"])


def train_and_evaluate(kind: str, data: Dataset, *, seed: int, steps: int, batch_size: int = 64, lr: float = 3e-3,
                       d_model: int = 32, with_eos: bool = True) -> tuple[PipelineResult, dict]:
    """Train one model (``"transformer"`` or ``"lstm"``) on ``data.train`` and run the pipeline on ``data.test``.

    Both kinds get the same features, seed, optimiser, learning rate, batch size and ``steps``; their
    widths are chosen so the parameter counts are close (reported in ``info``). ``with_eos=False`` trains
    the transformer without the End-of-Sequence target (the EOS ablation). ``info["train_accuracy"]`` is
    the setup accuracy on the first ``n_test`` training instances (fit, as opposed to generalisation);
    ``info["early_eos_share"]`` the share of test sequences the transformer ended with an EOS before period T
    (which closes the remaining periods; ``None`` for the BiLSTM).
    """
    from common.harness.seeding import seeded_training
    from papers.clsp_transformer.lot_sizing import N_FEATURES, features
    from papers.clsp_transformer.models import BiLSTMTagger, SetupTransformer, n_parameters, predict, train

    seeded_training(seed)
    if kind == "transformer":
        model = SetupTransformer(N_FEATURES, data.test.T, d_model=d_model, n_heads=2, d_ff=2 * d_model,
                                 with_eos=with_eos)
    elif kind == "lstm":
        model = BiLSTMTagger(N_FEATURES, hidden=d_model)
    else:
        raise ValueError(f"kind must be 'transformer' or 'lstm', got {kind!r}")
    start = time.process_time()
    losses = train(model, features(data.train), data.train_setups, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    train_cpu = time.process_time() - start
    setups, seconds = predict(model, features(data.test))
    early_eos = float(np.mean(model.ended_early)) if kind == "transformer" else None
    result = run_pipeline(data.test, setups, data.test_objective, seconds, data.test_setups)
    # setup accuracy on (the first n_test) training instances: separates under-fitting from generalisation
    n_fit = min(data.train.n, data.test.n)
    train_pred, _ = predict(model, features(data.train[np.arange(n_fit)]))
    info = {"n_parameters": n_parameters(model), "final_loss": float(np.mean(losses[-20:])), "train_cpu_s": train_cpu,
            "predict_seconds": seconds, "train_accuracy": float(np.mean(train_pred == data.train_setups[:n_fit])),
            "early_eos_share": early_eos}
    return result, info


def compare_models(data: Dataset, seeds, *, kinds=KINDS, steps: int, batch_size: int = 64, lr: float = 3e-3,
                   d_model: int = 32, progress: bool = True, log=print) -> tuple[dict, dict]:
    """Train and evaluate every kind of :data:`KINDS` in ``kinds`` on every seed: same data, features,
    optimiser, learning rate, batch size, steps and seeds for all.

    Returns ``rows`` (``{kind: [(PipelineResult, info), ...]}`` in seed order) and ``per_seed``
    (``{kind: {summary: one value per seed}}``, plus the scalar ``n_parameters``): mean and max gap (7), the
    share of instances solved exactly, test and training setup accuracy, the share of raw predictions that
    violate (5), instances still infeasible after repair, the smallest gap, the median and mean pipeline
    seconds, and (transformers) the share of sequences ended early by EOS.
    """
    from tqdm.auto import tqdm

    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    rows = {kind: [] for kind in kinds}
    for s, kind in tqdm([(s, kind) for s in seeds for kind in kinds], desc=f"train + pipeline (T={data.test.T})",
                        disable=not progress):
        result, info = train_and_evaluate("lstm" if kind == "lstm" else "transformer", data, seed=s, steps=steps,
                                          batch_size=batch_size, lr=lr, d_model=d_model,
                                          with_eos=kind != "transformer_noeos")
        rows[kind].append((result, info))
        log(f"T={data.test.T} seed {s} {kind:<17} params {info['n_parameters']:>6}  acc "
            f"{result.setup_accuracy.mean():.3f} (train {info['train_accuracy']:.3f})  feasible before repair "
            f"{result.feasible_before_repair.mean():.2f}  gap {np.mean(result.gap):.4f}  optimal "
            f"{np.mean(result.gap < 1e-6):.2f}  median {np.median(result.seconds) * 1e3:.2f} ms")
    per_seed = {}
    for kind, runs in rows.items():
        res = [r for r, _ in runs]
        per_seed[kind] = {
            "gap_mean": [float(np.mean(r.gap)) for r in res],
            "gap_max": [float(np.max(r.gap)) for r in res],
            "optimal_share": [float(np.mean(r.gap < 1e-6)) for r in res],
            "accuracy": [float(r.setup_accuracy.mean()) for r in res],
            "train_accuracy": [info["train_accuracy"] for _, info in runs],
            "infeasible_before": [float(1 - r.feasible_before_repair.mean()) for r in res],
            "infeasible_after": [int(r.infeasible_after.sum()) for r in res],
            "min_gap": [float(np.min(r.gap)) for r in res],
            "n_parameters": runs[0][1]["n_parameters"],
            "median_seconds": [float(np.median(r.seconds)) for r in res],
            "mean_seconds": [float(np.mean(r.seconds)) for r in res],
        }
        if runs[0][1]["early_eos_share"] is not None:
            per_seed[kind]["early_eos_share"] = [info["early_eos_share"] for _, info in runs]
    return rows, per_seed


def gap_intervals(per_seed: dict) -> dict:
    """95 % t-intervals over seeds (:mod:`common.stats`): each kind's mean gap, and the paired differences
    transformer - BiLSTM and (when both were trained) EOS - no EOS."""
    from common import stats

    out = {f"gap.{kind}": stats.mean_interval(v["gap_mean"]) for kind, v in per_seed.items()}
    if {"transformer", "lstm"} <= set(per_seed):
        out["gap.transformer_minus_lstm"] = stats.paired_difference(per_seed["transformer"]["gap_mean"],
                                                                    per_seed["lstm"]["gap_mean"])
    if {"transformer", "transformer_noeos"} <= set(per_seed):  # EOS ablation: same seeds, steps and data
        out["gap.eos_minus_noeos"] = stats.paired_difference(per_seed["transformer"]["gap_mean"],
                                                             per_seed["transformer_noeos"]["gap_mean"])
    return out


def mip_reference(data: Dataset, n_instances: int) -> dict:
    """Re-solve the first ``n_instances`` test MIPs: their HiGHS times here, and two exactness checks.

    ``max_rel_mismatch_stored``: largest relative difference between the re-solved and the stored optima.
    ``max_rel_mismatch_lp``: largest relative difference between the LP with the optimal ``y`` fixed and the
    MIP optimum (0 up to solver tolerance: once ``y`` is right, the LP step loses nothing).
    """
    from papers.clsp_transformer.lot_sizing import solve_clsp_mip

    if not 0 < n_instances <= data.test.n:
        raise ValueError(f"n_instances must be in 1..{data.test.n}, got {n_instances}")
    seconds, stored, lp_gap = [], [], []
    for i in range(n_instances):
        result, y = solve_clsp_mip(data.test, i)
        seconds.append(result.wall_time)
        stored.append(abs(result.objective - data.test_objective[i]) / abs(data.test_objective[i]))
        lp = solve_fixed_setup_lp(data.test, i, y)
        lp_gap.append(abs(lp.objective - result.objective) / abs(result.objective))
    return {"seconds": np.array(seconds), "median_seconds": float(np.median(seconds)),
            "mean_seconds": float(np.mean(seconds)), "max_rel_mismatch_stored": float(max(stored)),
            "max_rel_mismatch_lp": float(max(lp_gap))}


def mip_at_gap(data: Dataset, n_instances: int, rel_gap: float) -> dict:
    """HiGHS on the first ``n_instances`` test MIPs, stopped at relative gap ``rel_gap`` (for example the
    pipeline's mean gap): the solver's time at the pipeline's solution quality.

    Returns the median and mean seconds and ``mean_excess``, the mean relative excess of the returned
    solutions over the stored optima (at most ``rel_gap`` by HiGHS's certificate).
    """
    from papers.clsp_transformer.lot_sizing import solve_clsp_mip

    if not 0 < n_instances <= data.test.n:
        raise ValueError(f"n_instances must be in 1..{data.test.n}, got {n_instances}")
    seconds, excess = [], []
    for i in range(n_instances):
        result, _ = solve_clsp_mip(data.test, i, mip_rel_gap=rel_gap)
        seconds.append(result.wall_time)
        excess.append((result.objective - data.test_objective[i]) / data.test_objective[i])
    return {"median_seconds": float(np.median(seconds)), "mean_seconds": float(np.mean(seconds)),
            "mean_excess": float(np.mean(excess))}


def dp_mismatch(data: Dataset) -> float:
    """Largest relative difference between the stored optima of all test instances and
    :func:`lot_sizing.dp_optimum` (a solver-independent check of the labels)."""
    from papers.clsp_transformer.lot_sizing import dp_optimum

    return float(max(abs(dp_optimum(data.test, i) - data.test_objective[i]) / abs(data.test_objective[i])
                     for i in range(data.test.n)))
