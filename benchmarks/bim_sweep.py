"""BIM's eps sweep (shared first steps) against attacking each eps on its own, side by side.

Not a test. Loads the seed-0 models a finished `fgsm_lenet` folder ships (every deterministic
defense whose model is a shipped file), takes the suite's BIM images (the first N of the
evaluation order) and, per model and batch of 1000, times ``attack(x, y, eps)`` for each eps,
then ``attack.sweep(x, y, eps_list)``, checking that the examples are bit-identical. Prints one
row per model and the totals; the engine is the run's (``robench.engine``), threads torch's
default.

    python benchmarks/bim_sweep.py results/fgsm_lenet [--n 1000] [--data-dir D]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from robench.attacks import create_attack
from robench.data import evaluation_split, load_dataset, resolve_data_root
from robench.engine import engine_for
from robench.models import create_model

EPS = [0.1, 0.2, 0.3]
BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    rows = pd.read_csv(args.folder / "results.csv")
    bim = rows[(rows.attack == "bim") & (rows.seed == 0)].drop_duplicates("defense")
    data = evaluation_split(load_dataset("mnist", resolve_data_root(args.data_dir)).test,
                            None, 0).head(args.n)
    engine = engine_for(torch.device("cpu"))
    total_each = total_sweep = 0.0
    print(f"{'defense':26} {'each eps (s)':>12} {'sweep (s)':>10} {'ratio':>6}  identical")
    for _, row in bim.iterrows():
        path = args.folder / f"model-{row.model_hash}.safetensors"
        if not path.exists():
            continue  # a defended model that is not a weights file (a wrapper, a randomized one)
        model = create_model("lenet5")
        model.load_state_dict(load_file(path))
        model = engine.prepare_model(model.eval())
        each = sweep = 0.0
        identical = True
        for start in range(0, len(data), BATCH):
            x = data.images[start:start + BATCH]
            y = data.labels[start:start + BATCH]
            attack = create_attack("bim", model)
            t0 = time.perf_counter()
            alone = [attack(x, y, e) for e in EPS]
            each += time.perf_counter() - t0
            t0 = time.perf_counter()
            swept = [adv for _, adv in attack.sweep(x, y, EPS)]
            sweep += time.perf_counter() - t0
            identical &= all(torch.equal(a, s) for a, s in zip(alone, swept, strict=True))
        total_each, total_sweep = total_each + each, total_sweep + sweep
        print(f"{row.defense:26} {each:12.1f} {sweep:10.1f} {sweep / each:6.2f}  {identical}",
              flush=True)
    print(f"{'total':26} {total_each:12.1f} {total_sweep:10.1f} {total_sweep / total_each:6.2f}")


if __name__ == "__main__":
    main()
