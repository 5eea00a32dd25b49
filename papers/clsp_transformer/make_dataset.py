"""Generate and label the committed CLSP data sets: ``python -m papers.clsp_transformer.make_dataset --T 24``.

Instances come from :func:`lot_sizing.generate_instances` with a fixed seed; costs are rounded to three
decimals before labelling so that the stored arrays are exactly the ones that were solved. Every instance
is solved to proven optimality by HiGHS (``mip_rel_gap = 0``); the file stores the instances, the optimal
setups ``y*``, the optimal objectives and HiGHS's wall time per instance (the machine that labelled is
recorded too; times are indicative only). Labelling 2200 instances at T = 24 takes about 4 minutes on one
core, which is why the ci notebooks load this file instead of labelling.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from papers.clsp_transformer.lot_sizing import Instances, generate_instances, solve_clsp_mip

DATA_DIR = Path(__file__).resolve().parent / "data"


def dataset_path(T: int) -> Path:
    return DATA_DIR / f"clsp_T{T}.npz"


def build(T: int, n_train: int, n_test: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    inst = generate_instances(n_train + n_test, T, rng)
    inst = Instances(*(np.round(a, 3) for a in inst.arrays()))
    ys, objs, times = [], [], []
    for i in tqdm(range(inst.n), desc=f"labelling T={T}"):
        result, y = solve_clsp_mip(inst, i)
        ys.append(y)
        objs.append(result.objective)
        times.append(result.wall_time)
    out = inst.to_dict()
    out.update(setups=np.array(ys, dtype=np.int8), objective=np.array(objs), mip_seconds=np.array(times),
               n_train=np.array(n_train), n_test=np.array(n_test), seed=np.array(seed),
               machine=np.array(f"{platform.machine()} {platform.processor()} {platform.python_version()}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=24)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    data = build(args.T, args.n_train, args.n_test, args.seed)
    DATA_DIR.mkdir(exist_ok=True)
    np.savez_compressed(dataset_path(args.T), **data)
    print(f"wrote {dataset_path(args.T)}")


if __name__ == "__main__":
    main()
