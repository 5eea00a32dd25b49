"""The held-out style experiment: meta-learned initialisation against direct, joint and feed-forward.

For every seed, on the same base avatar, the same training and held-out styles, the same renders and
the same adaptation budget, each method's adaptation learning rate is chosen from the same grid on
validation styles drawn from the *training* set (equal tuning effort; held-out styles are never used
for tuning). Meta-training (Reptile), joint training and the feed-forward stylizer get the same number
of gradient evaluations (``meta_iters × inner_steps``).
"""

from __future__ import annotations

import numpy as np
import torch

from papers.altered_avatar.altered_avatar import (
    RandomGramLoss,
    Task,
    adapt,
    joint_init,
    reptile,
    sample_styles,
    sample_views,
    steps_to_threshold,
    train_feedforward,
)

ADAPTED = ("direct", "joint", "meta")


def eval_style(task_eval: Task, bias: torch.Tensor) -> tuple[float, float, float]:
    """Held-out-view ``L_style`` (mean over renders), its std across views/expressions, and ``L_struct``."""
    with torch.no_grad():
        style, struct = task_eval.terms(bias)
    return float(style.mean()), float(style.std()), float(struct.mean())


def run_seed(field, seed: int, *, n_train: int, n_test: int, n_val: int, resolution: int, n_views: int,
             n_eval_views: int, meta_iters: int, inner_steps: int, inner_lr: float, meta_lr: float,
             joint_lr: float, ff_lr: float, lr_grid: list, tune_steps: int, checkpoints: list, k_ref: int,
             structure_weight: float, loss_seed: int) -> dict:
    """One seed of the experiment; returns per-method, per-held-out-style metrics."""
    if n_val > n_train:
        raise ValueError(f"n_val ({n_val}) must not exceed n_train ({n_train})")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    loss = RandomGramLoss(random_state=loss_seed)
    train, test = sample_styles(n_train, rng), sample_styles(n_test, rng)
    codes, eval_codes = sample_views(n_views, rng), sample_views(n_eval_views, rng)
    base = field.bias.detach().clone()
    cache: dict = {}

    def make(styles, key, cds):
        def f(i):
            if (key, i) not in cache:
                cache[(key, i)] = Task(field, loss, styles[i], cds, resolution, structure_weight, base)
            return cache[(key, i)]
        return f

    train_task, test_task, test_eval = make(train, "train", codes), make(test, "test", codes), make(test, "eval", eval_codes)
    budget = meta_iters * inner_steps
    inits = {
        "direct": base,
        "meta": reptile(train_task, n_train, base, meta_iters, inner_steps, inner_lr, meta_lr, rng),
        "joint": joint_init(train_task, n_train, base, budget, joint_lr, rng),
    }
    descr = lambda tasks, n: [loss.stats_vector(tasks(i).target) for i in range(n)]  # noqa: E731
    ff = train_feedforward(train_task, descr(train_task, n_train), n_train, base, budget, ff_lr, rng,
                           random_state=seed)
    # equal tuning effort: the same lr grid, the same validation styles (training styles), the same steps
    val_idx = rng.choice(n_train, n_val, replace=False)
    lrs = {}
    for m in ADAPTED:
        scores = [np.mean([adapt(train_task(int(i)), inits[m], tune_steps, lr)[1][-1] for i in val_idx])
                  for lr in lr_grid]
        lrs[m] = float(lr_grid[int(np.argmin(scores))])
    k_max = max(max(checkpoints), k_ref)
    out = {m: {"curve": [], **{f"K{k}": [] for k in checkpoints}, **{f"K{k}_std": [] for k in checkpoints},
               **{f"K{k}_struct": [] for k in checkpoints}} for m in ADAPTED}
    out["feedforward"] = {"K0": [], "K0_std": [], "K0_struct": []}
    out["lr"] = lrs
    test_descr = descr(test_task, n_test)
    for j in range(n_test):
        for m in ADAPTED:
            _, curve, snaps = adapt(test_task(j), inits[m], k_max, lrs[m], checkpoints=tuple(checkpoints))
            out[m]["curve"].append(curve)
            for k in checkpoints:
                s, sd, st = eval_style(test_eval(j), snaps[k])
                out[m][f"K{k}"].append(s)
                out[m][f"K{k}_std"].append(sd)
                out[m][f"K{k}_struct"].append(st)
        with torch.no_grad():
            s, sd, st = eval_style(test_eval(j), ff(test_descr[j]))
        out["feedforward"]["K0"].append(s)
        out["feedforward"]["K0_std"].append(sd)
        out["feedforward"]["K0_struct"].append(st)
    # steps to the loss direct optimisation reaches after k_ref steps (per held-out style)
    steps = {"direct": [], "meta": []}
    for j in range(n_test):
        thr = out["direct"]["curve"][j][k_ref]
        for m in steps:
            steps[m].append(steps_to_threshold(out[m]["curve"][j][:k_ref + 1], thr))
    out["steps_to_threshold"] = steps
    return out
