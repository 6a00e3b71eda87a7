"""Where standard AutoAttack spends its time on one model: each component's images, fooled
images and seconds, as robench's cascade runs them (``robench.attacks.autoattack``).

Not a test. Loads a model shipped as a weights file in a results folder (by its model hash,
``results.csv``'s ``model_hash``), takes the first N MNIST test images and runs the four
components in order on the images still robust, timing each (the run's engine, torch's default
threads).

    python benchmarks/autoattack_components.py results/fgsm_lenet 2c941c0ec64f704e [--n 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from robench.attacks.autoattack import AutoAttack
from robench.attacks.base import own_rng, project
from robench.data import load_dataset, resolve_data_root
from robench.engine import engine_for
from robench.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("model_hash")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    model = create_model("lenet5")
    model.load_state_dict(load_file(args.folder / f"model-{args.model_hash}.safetensors"))
    model = engine_for(torch.device("cpu")).prepare_model(model.eval())
    test = load_dataset("mnist", resolve_data_root(args.data_dir)).test.head(args.n)
    x, y = test.images, test.labels
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    print(f"clean accuracy {robust.float().mean().item():.3f} on {args.n} images, "
          f"{torch.get_num_threads()} threads")
    with own_rng(x.device), torch.no_grad():
        for component in AutoAttack(model, seed=0).components(args.eps, 10):
            idx = robust.nonzero().flatten()
            if not idx.numel():
                break
            t0 = time.perf_counter()
            adv = project(component.attack(x[idx], y[idx]).detach(), x[idx], args.eps, "linf")
            seconds = time.perf_counter() - t0
            fooled = model(adv).argmax(1) != y[idx]
            robust[idx[fooled]] = False
            print(f"{component.name:8} {idx.numel():5} images {seconds:7.1f} s  "
                  f"fooled {int(fooled.sum())}", flush=True)
    print(f"robust accuracy {robust.float().mean().item():.3f}")


if __name__ == "__main__":
    main()
