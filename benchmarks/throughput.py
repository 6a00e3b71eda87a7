"""Throughput benchmark: robench's attack/training paths vs a raw PyTorch loop, torchattacks
and ART on the same trained LeNet-5 and the MNIST test images; cold vs warm `robench run`.

Not a test: it measures and prints ratios, and writes benchmarks/RESULTS.md.

    python benchmarks/throughput.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robench import __version__
from robench.attacks import create_attack
from robench.data import load_dataset
from robench.evaluation import EVAL_BATCH_SIZE, evaluate_attack
from robench.models import LeNet5
from robench.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
EPS_SWEEP = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Every loop reports what the harness reports per cell: clean and robust accuracy (the clean
# predictions are also what attack_success_rate needs), so all do the same forward passes.


def clean_correct(model, xb, yb):
    with torch.no_grad():
        return (model(xb).argmax(1) == yb).sum().item()


def raw_fgsm(model, x, y, eps, bs):
    """What a user would write by hand: batches, grad, sign step, clamp, accuracy."""
    correct = 0
    for i in range(0, len(x), bs):
        clean_correct(model, x[i:i + bs], y[i:i + bs])
        xb, yb = x[i:i + bs].clone().requires_grad_(True), y[i:i + bs]
        loss = F.cross_entropy(model(xb), yb)
        (g,) = torch.autograd.grad(loss, xb)
        adv = (xb + eps * g.sign()).clamp(0, 1).detach()
        with torch.no_grad():
            correct += (model(adv).argmax(1) == yb).sum().item()
    return correct / len(x)


def raw_pgd(model, x, y, eps, alpha, steps, bs):
    correct = 0
    gen = torch.Generator().manual_seed(0)
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        clean_correct(model, xb, yb)
        adv = (xb + torch.empty_like(xb).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), yb)
            (g,) = torch.autograd.grad(loss, adv)
            adv = torch.min(torch.max(adv.detach() + alpha * g.sign(), xb - eps), xb + eps)
            adv = adv.clamp(0, 1)
        with torch.no_grad():
            correct += (model(adv).argmax(1) == yb).sum().item()
    return correct / len(x)


def lib_loop(make, model, x, y, bs):
    correct = 0
    for i in range(0, len(x), bs):
        clean_correct(model, x[i:i + bs], y[i:i + bs])
        adv = make(x[i:i + bs], y[i:i + bs])
        with torch.no_grad():
            correct += (model(adv).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def art_classifier(model):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                             input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))


def raw_train(model, split, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(split), generator=gen)
        for i in range(0, len(split), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(split.images[idx]), split.labels[idx]).backward()
            opt.step()
    model.eval()


def cli_run(suite: Path, out: Path, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robench.cli", "run", str(suite), "--out", str(out),
                    "--quiet"], env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ROBENCH_DATA_DIR"))
    parser.add_argument("--n", type=int, default=10_000, help="test images attacked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pgd-repeats", type=int, default=2, help="PGD runs are long")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir)
    torch.manual_seed(0)
    model = LeNet5()
    train(model, data.train, TrainConfig(epochs=2), seed=0)
    model.eval()
    x, y = data.test.images[:args.n], data.test.labels[:args.n]
    test = data.test.head(args.n)
    bs, r, eps = EVAL_BATCH_SIZE, args.repeats, 0.1
    results: dict[str, float] = {}

    import torchattacks
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    fgsm = create_attack("fgsm", model)
    pgd = create_attack("pgd", model, {"steps": args.pgd_steps, "alpha": 0.01})
    clf = art_classifier(model)
    art_fgsm = FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=bs)
    art_pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=0.01,
                                       max_iter=args.pgd_steps, batch_size=bs, verbose=False)
    ta_fgsm = torchattacks.FGSM(model, eps=eps)
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=0.01, steps=args.pgd_steps)

    def art_run(atk):
        return lambda: lib_loop(lambda xb, yb: torch.from_numpy(
            atk.generate(x=xb.numpy(), y=yb.numpy())), model, x, y, bs)

    timings = {
        "fgsm harness": lambda: evaluate_attack(model, fgsm, [eps], test),
        "fgsm raw": lambda: raw_fgsm(model, x, y, eps, bs),
        "fgsm torchattacks": lambda: lib_loop(ta_fgsm, model, x, y, bs),
        "fgsm art": art_run(art_fgsm),
        "pgd harness": lambda: evaluate_attack(model, pgd, [eps], test),
        "pgd raw": lambda: raw_pgd(model, x, y, eps, 0.01, args.pgd_steps, bs),
        "pgd torchattacks": lambda: lib_loop(ta_pgd, model, x, y, bs),
        "pgd art": art_run(art_pgd),
        "sweep7 harness": lambda: evaluate_attack(model, fgsm, EPS_SWEEP, test),
        "sweep7 torchattacks": lambda: [lib_loop(torchattacks.FGSM(model, eps=e), model, x, y, bs)
                                        for e in EPS_SWEEP],
    }
    for name, fn in timings.items():
        if name.startswith("fgsm"):
            fn()  # warm-up (these runs also warm every code path PGD and the sweep use)
        results[name] = median_time(fn, args.pgd_repeats if name.startswith("pgd") else r)
        print(f"{name:<22} {results[name]:7.3f} s", flush=True)

    cfg = TrainConfig(epochs=1)
    sub = data.train.head(20_000)
    results["train harness"] = median_time(
        lambda: train(LeNet5(), sub, cfg, seed=0), r)
    results["train raw"] = median_time(lambda: raw_train(LeNet5(), sub, cfg, 0), r)
    print(f"train harness {results['train harness']:.3f} s, raw {results['train raw']:.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ROBENCH_CACHE_DIR": str(Path(tmp) / "cache")}
        if args.data_dir:
            env["ROBENCH_DATA_DIR"] = str(args.data_dir)
        suite = HERE.parent / "suites" / "smoke.yaml"
        results["run cold"] = cli_run(suite, Path(tmp) / "out", env)
        results["run warm"] = cli_run(suite, Path(tmp) / "out", env)
    print(f"robench run smoke: cold {results['run cold']:.2f} s, warm {results['run warm']:.2f} s")

    ratios = {
        "FGSM harness / raw (throughput)": results["fgsm raw"] / results["fgsm harness"],
        "PGD harness / raw (throughput)": results["pgd raw"] / results["pgd harness"],
        "FGSM harness / torchattacks (throughput)":
            results["fgsm torchattacks"] / results["fgsm harness"],
        "PGD harness / torchattacks (throughput)":
            results["pgd torchattacks"] / results["pgd harness"],
        "FGSM harness / ART (throughput)": results["fgsm art"] / results["fgsm harness"],
        "PGD harness / ART (throughput)": results["pgd art"] / results["pgd harness"],
        "7-eps FGSM sweep: torchattacks per eps / harness (speed-up)":
            results["sweep7 torchattacks"] / results["sweep7 harness"],
        "training harness / raw (throughput)": results["train raw"] / results["train harness"],
        "warm / cold robench run (time)": results["run warm"] / results["run cold"],
    }
    for k, v in ratios.items():
        print(f"{k:<62} {v:6.2f}")
    write_results(Path(args.out), args, results, ratios)


def write_results(path: Path, args, results: dict[str, float], ratios: dict[str, float]) -> None:
    import art
    import torchattacks

    lines = [
        "# Throughput benchmark", "",
        f"`python benchmarks/throughput.py` on {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchattacks "
        f"{torchattacks.__version__}, ART {art.__version__}, robench {__version__}, "
        f"Python {platform.python_version()}.",
        f"LeNet-5 trained 2 epochs; {args.n} MNIST test images; eps 0.1; PGD-{args.pgd_steps} "
        f"(alpha 0.01); batch {EVAL_BATCH_SIZE} for every method; median of {args.repeats} runs "
        f"({args.pgd_repeats} for PGD). Every loop computes clean and robust accuracy.", "",
        "| measurement | seconds |", "|---|---:|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in results.items()]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
