"""Notebook 03's study on the 16×16 UNet teacher: distil both students over a set of seeds, evaluate the teacher's
solvers on the same noise, and record every comparison under one metric prefix.

The same functions record the first run (seeds 0–4, lr 8e-6, metrics ``u16.*``) and the confirmatory run
(seeds 5–9, lr 2e-6, ``u16c.*``), so the two are measured by identical code. They live here rather than in
:mod:`papers.slam.slam` because that module's whole source is part of the trained students' cache key
(:func:`papers.slam.slam.training_cache_key`): evaluation and recording code must not force a retrain.

Paired comparisons (``common.stats``): FD gain = FD(other) − FD(SLAM) (positive: SLAM better), accuracy gain =
acc(SLAM) − acc(LCM), Student-t 95 % intervals over seeds; training speed = the first evaluated iteration at which
SLAM's 4-step curve reaches LCM's final value, as a fraction of the iterations (2 when never reached).
"""

from __future__ import annotations

import numpy as np

from common import stats
from common.consistency import DistillConfig
from common.harness import record
from common.workers import process_map
from papers.slam.slam import METHODS, iteration_ratio, run_task, teacher_solver_fd

STEPS = (1, 2, 4)
SOLVERS = ("ddim", "dpmpp")


def distil_students(teacher_checkpoint: str, seeds, *, train_steps: int, batch_size: int, lr: float, n_samples: int,
                    n_curve_samples: int, eval_every: int, n_probe: int, cache_dir=None, n_jobs: int = 1,
                    progress: bool = True) -> dict[str, list[dict]]:
    """Both students (LCM, SLAM) for every seed, in ``n_jobs`` worker processes (:func:`papers.slam.slam.run_task`);
    returns ``{method: [result per seed]}`` in the order of ``seeds``. Seed s fixes the distillation stream (data,
    labels, timesteps, noise) and the sampling noise, identical for both students."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    tasks = [{"teacher_checkpoint": teacher_checkpoint, "arm": m, "steps": STEPS, "n_samples": n_samples,
              "n_curve_samples": n_curve_samples, "eval_every": eval_every, "cache_dir": cache_dir, "n_probe": n_probe,
              "cfg": DistillConfig(steps=train_steps, batch_size=batch_size, lr=lr, seed=s)}
             for s in seeds for m in METHODS]
    runs = list(process_map(run_task, tasks, n_jobs=n_jobs, progress=progress, desc="students"))
    return {m: [r for t, r in zip(tasks, runs, strict=True) if t["arm"] == m] for m in METHODS}


def record_students(prefix: str, by: dict[str, list[dict]]) -> dict:
    """Record each student's per-seed losses, curve end points, FD/KID/accuracy at 1, 2, 4 steps and diagnostics
    under ``prefix``; returns a small summary (mean FD per step count, mean first/last-10 losses)."""
    record(f"{prefix}.setup.cached_students", sum(int(r["cached"]) for m in METHODS for r in by[m]))
    for m in METHODS:
        runs = by[m]
        record(f"{prefix}.{m}.initial_loss", [r["initial_loss"] for r in runs])
        record(f"{prefix}.{m}.final_loss", [r["final_loss"] for r in runs])
        record(f"{prefix}.first_step_std.steps4.{m}", [r["spread"] for r in runs])
        record(f"{prefix}.{m}.curve_first", [r["curve"][min(r["curve"])] for r in runs])  # iteration 0: the teacher
        record(f"{prefix}.{m}.curve_last", [r["curve"][max(r["curve"])] for r in runs])
        record(f"{prefix}.off_subspace.steps4.{m}", [r["off_subspace"] for r in runs])  # unseen by the 8×8 preimage
        for probe_input in METHODS:
            record(f"{prefix}.consistency.{probe_input}_input.{m}", [r["consistency"][probe_input] for r in runs])
        for n in STEPS:
            record(f"{prefix}.fd.steps{n}.{m}", [r["fd"][n] for r in runs])
            record(f"{prefix}.kid.steps{n}.{m}", [r["kid"][n] for r in runs])
            record(f"{prefix}.acc.steps{n}.{m}", [r["acc"][n] for r in runs])
    return {m: {"fd": {n: round(float(np.mean([r["fd"][n] for r in by[m]])), 2) for n in STEPS},
                "loss first/last 10 it.": (round(float(np.mean([r["initial_loss"] for r in by[m]])), 5),
                                           round(float(np.mean([r["final_loss"] for r in by[m]])), 5))}
            for m in METHODS}


def teacher_fds(teacher, seeds, n_samples: int, reference_steps: int, dim: int) -> tuple[dict, float]:
    """The teacher's DDIM and DPM-Solver++(2M) FD at 1, 2, 4 steps for every seed (noise stream 1000 + s, as the
    students'), and its ``reference_steps``-step DDIM on the first seed: ``({solver: {n: [per seed]}}, ref_fd)``."""
    out = {name: {n: [] for n in STEPS} for name in SOLVERS}
    ref_fd = None
    for i, s in enumerate(seeds):
        res = teacher_solver_fd(teacher, STEPS, n_samples, 1_000 + int(s),
                                reference_steps=reference_steps if i == 0 else None, dim=dim)
        for name in SOLVERS:
            for n in STEPS:
                out[name][n].append(res[name][n])
        if i == 0:
            ref_fd = res["reference"]
    return out, ref_fd


def record_teacher(prefix: str, teacher_fd: dict, ref_fd: float) -> dict:
    """Record :func:`teacher_fds`'s output under ``prefix``; returns the mean FD per solver and step count."""
    for name in SOLVERS:
        for n in STEPS:
            record(f"{prefix}.fd.steps{n}.teacher_{name}", teacher_fd[name][n])
    record(f"{prefix}.fd.teacher_ddim_reference", ref_fd)
    return {name: {n: round(float(np.mean(v[n])), 2) for n in STEPS} for name, v in teacher_fd.items()}


def curves_of(by: dict[str, list[dict]]) -> tuple[list[int], dict[str, list[dict]]]:
    """(evaluated iterations, ``{method: [curve per seed]}``) of the 4-step training curves."""
    curves = {m: [r["curve"] for r in by[m]] for m in METHODS}
    return sorted(curves[METHODS[0]][0]), curves


def record_comparison(prefix: str, by: dict[str, list[dict]], teacher_fd: dict, train_steps: int) -> dict:
    """Record the paired comparisons the claims read (FD and accuracy gains at 1, 2, 4 steps, SLAM against the
    teacher's solvers at 4 steps, the iteration ratio) and the curves; then, as diagnostics no claim reads, the
    per-seed curves and the paired interval of the curve's FD(LCM) − FD(SLAM) at every evaluated iteration.
    Returns the FD-gain intervals and the ratios."""
    fd = {m: {n: [r["fd"][n] for r in by[m]] for n in STEPS} for m in METHODS}
    acc = {m: {n: [r["acc"][n] for r in by[m]] for n in STEPS} for m in METHODS}
    for n in STEPS:
        stats.record_interval(f"{prefix}.fd.steps{n}.gain", stats.paired_difference(fd["lcm"][n], fd["slam"][n]))
        stats.record_interval(f"{prefix}.acc.steps{n}.gain", stats.paired_difference(acc["slam"][n], acc["lcm"][n]))
    for name in SOLVERS:
        stats.record_interval(f"{prefix}.fd.steps4.gain_vs_{name}",
                              stats.paired_difference(teacher_fd[name][4], fd["slam"][4]))
    its, curves = curves_of(by)
    ratios = [iteration_ratio(c_lcm, c_slam, train_steps)
              for c_lcm, c_slam in zip(curves["lcm"], curves["slam"], strict=True)]
    record(f"{prefix}.iters.ratio", ratios)
    stats.record_interval(f"{prefix}.iters.ratio.mean", stats.mean_interval(ratios))
    for m in METHODS:
        record(f"{prefix}.curve.fd4.{m}", [float(np.mean([c[i] for c in curves[m]])) for i in its])
    for i in its:
        for m in METHODS:
            record(f"{prefix}.curve_seeds.it{i}.{m}", [c[i] for c in curves[m]])
        if i > 0:
            stats.record_interval(f"{prefix}.curve_gain.it{i}",
                                  stats.paired_difference([c[i] for c in curves["lcm"]], [c[i] for c in curves["slam"]]))
    return {"fd gain (LCM - SLAM)": {n: stats.paired_difference(fd["lcm"][n], fd["slam"][n]) for n in STEPS},
            "ratios": ratios}


def plot_comparison(by: dict[str, list[dict]], teacher_fd: dict, title: str = ""):
    """Left: mean FD against sampling steps for both students and the teacher's solvers; right: the 4-step training
    curves (mean and each seed). Returns the figure."""
    import matplotlib.pyplot as plt

    its, curves = curves_of(by)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for m, colour in zip(METHODS, ("tab:blue", "tab:red"), strict=True):
        axes[0].plot(STEPS, [np.mean([r["fd"][n] for r in by[m]]) for n in STEPS], "o-", color=colour, label=m.upper())
        axes[1].plot(its, [np.mean([c[i] for c in curves[m]]) for i in its], "o-", color=colour, label=m.upper())
        for c in curves[m]:  # per seed
            axes[1].plot(its, [c[i] for i in its], "-", color=colour, alpha=0.25, lw=0.8)
    for name, style in zip(SOLVERS, ("s--", "^--"), strict=True):
        axes[0].plot(STEPS, [np.mean(teacher_fd[name][n]) for n in STEPS], style, color="grey", label=f"teacher {name}")
    axes[0].set(xlabel="sampling steps", ylabel="FD to train (mean over seeds)", yscale="log", xticks=list(STEPS))
    axes[1].set(xlabel="distillation iteration", ylabel="4-step FD (curve samples)", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_samples(by: dict[str, list[dict]], seed: int):
    """The first seed's 4-step samples of both students (labels 0..9, 0..9). Returns the figure."""
    import matplotlib.pyplot as plt

    from common.digits16.data import to_images16

    fig, axes = plt.subplots(2, 1, figsize=(9, 2.2))
    for ax, m in zip(axes, METHODS, strict=True):
        imgs = to_images16(by[m][0]["grid"])
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray_r", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{m.upper()}, 4 steps (seed {seed})", fontsize=8)
    fig.tight_layout()
    return fig
