"""Engine benchmark: memory format, torch.compile, batch size and thread count on robench's attack
loops and training paths, as ratios to the eager default measured side by side.

Every workload runs through robench's own code (``evaluate_attack`` with the real attack
plugins, ``train``, the defenses' ``apply``) on a LeNet-5 trained for one epoch on real MNIST.
Variants are run in interleaved repetitions (variant order rotates every repetition) and each
is reported as its median time and its speed-up over ``eager`` (contiguous layout, the suite's
batch size, torch's default thread count) from the same repetitions. Not a test: it prints a
markdown table and writes a CSV.

    python benchmarks/engine.py --data-dir ../shared/data              # full (about 30 min)
    python benchmarks/engine.py --quick --csv /tmp/engine.csv          # a few minutes
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robench.attacks import create_attack
from robench.data import Split, load_dataset
from robench.defenses import DEFENSES, DefenseContext
from robench.engine import Engine
from robench.evaluation import EVAL_BATCH_SIZE, evaluate_attack
from robench.models import LeNet5
from robench.training import TrainConfig, train


@dataclass(frozen=True)
class Variant:
    name: str
    memory_format: str = "contiguous"
    compile: bool = False
    batch_size: int | None = None     # None: the workload's own (the harness's) batch size
    threads: int | None = None        # None: torch's default on this machine


def variants(default_threads: int, quick: bool) -> list[Variant]:
    other = 1 if default_threads != 1 else 2
    out = [Variant("eager"), Variant("channels_last", "channels_last"),
           Variant(f"threads={other}", threads=other),
           Variant(f"channels_last+threads={other}", "channels_last", threads=other),
           Variant("batch/2", batch_size=-2), Variant("batch*2", batch_size=-3),
           Variant("channels_last+batch*2", "channels_last", batch_size=-3)]
    if not quick:
        out.append(Variant("compile", compile=True))
    return out


# -- workloads: each gets a prepared model and the variant's batch size ----------------------
Workload = Callable[[torch.nn.Module, int], object]


@dataclass(frozen=True)
class Bench:
    name: str
    what: str
    batch_size: int
    run: Workload
    trains: bool = False              # mutates the model: each repetition gets a fresh copy
    compilable: bool = True


def attack_bench(name: str, attack: str, params: dict, eps: list[float], data: Split,
                 what: str) -> Bench:
    def run(model: torch.nn.Module, batch: int) -> object:
        return evaluate_attack(model, create_attack(attack, model, params), eps, data,
                               batch_size=batch)
    # IBP reads the model's layers, AutoAttack/Square run torchattacks on it: eager only
    return Bench(name, what, EVAL_BATCH_SIZE, run,
                 compilable=attack in ("fgsm", "pgd", "bim"))


def benches(data: Split, train_split: Split, validation: Split, quick: bool) -> list[Bench]:
    n = len(data)
    small = data.head(max(n // 5, 50))
    sweep = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    out = [
        attack_bench("fgsm", "fgsm", {}, sweep, data, f"FGSM sweep (7 eps), {n} images"),
        attack_bench("pgd", "pgd", {"steps": 10 if quick else 40, "alpha": 0.01}, [0.1, 0.3],
                     data, f"PGD active set, eps 0.1/0.3, {n} images"),
        attack_bench("bim", "bim", {}, [0.1], data, f"BIM active set, eps 0.1, {n} images"),
        attack_bench("autoattack", "autoattack", {"version": "fast"}, [0.3], small,
                     f"AutoAttack components (version fast), eps 0.3, {len(small)} images"),
        attack_bench("square", "square", {"n_queries": 100 if quick else 500}, [0.3], small,
                     f"Square, eps 0.3, {len(small)} images"),
        attack_bench("ibp", "ibp", {}, sweep, data, f"IBP, 7 eps, {n} images"),
    ]
    steps = 10 if quick else 40
    slice_ = train_split.head(steps * 128)

    def baseline(model: torch.nn.Module, batch: int) -> object:
        return train(model, slice_, TrainConfig(epochs=1, batch_size=batch), seed=0)

    def defense(name: str, params: dict, images: Split) -> Workload:
        cls = DEFENSES.get(name)

        def run(model: torch.nn.Module, batch: int) -> object:
            ctx = DefenseContext(model=model, train=images, validation=validation.head(100),
                                 params=cls.Params(**params), seed=0,
                                 device=torch.device("cpu"),
                                 train_config=TrainConfig(epochs=1, batch_size=batch))
            return cls(ctx.params).apply(ctx)
        return run

    forget = 200 if quick else 1000
    out += [
        Bench("train", f"baseline training, {steps} batches of 128", 128, baseline, True),
        Bench("at:pgd", f"adversarial training (pgd, 5 steps), {steps // 2} batches of 128",
              128, defense("adversarial_training", {"method": "pgd", "eps": 0.3, "steps": 5,
                                                   "monitor_limit": 0},
                           train_split.head(steps // 2 * 128)), True, compilable=False),
        Bench("unlearning", f"one unlearning round (forget {forget}, retain {5 * forget})",
              128, defense("unlearning", {"rounds": 1, "forget_size": forget,
                                          "retain_size": 5 * forget, "monitor_limit": 0},
                           train_split.head(10 * forget)), True, compilable=False),
    ]
    return out


def prepared(model: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    model = Engine("cpu", variant.memory_format).prepare_model(copy.deepcopy(model))  # type: ignore[arg-type]
    return torch.compile(model) if variant.compile else model  # type: ignore[return-value]


def batch_of(bench: Bench, variant: Variant) -> int:
    if variant.batch_size is None:
        return bench.batch_size
    return {-2: max(bench.batch_size // 2, 1), -3: bench.batch_size * 2}.get(
        variant.batch_size, variant.batch_size)


def measure(bench: Bench, model: torch.nn.Module, initial: torch.nn.Module,
            chosen: list[Variant], repeats: int, default_threads: int
            ) -> dict[str, list[float] | str]:
    times: dict[str, list[float] | str] = {v.name: [] for v in chosen}
    models = {}
    for v in chosen:
        if v.compile and not bench.compilable:
            times[v.name] = "n/a (not a module-call path)"
            continue
        if not bench.trains:
            models[v.name] = prepared(model, v)
    for rep in range(repeats):
        order = chosen[rep % len(chosen):] + chosen[:rep % len(chosen)]
        for v in order:
            if isinstance(times[v.name], str):
                continue
            m = prepared(initial, v) if bench.trains else models[v.name]
            torch.set_num_threads(v.threads or default_threads)
            try:
                torch.manual_seed(0)
                t0 = time.perf_counter()
                bench.run(m, batch_of(bench, v))
                elapsed = time.perf_counter() - t0
            except Exception as err:  # a compile backend that fails is a result, not a crash
                times[v.name] = f"failed ({type(err).__name__})"
                continue
            finally:
                torch.set_num_threads(default_threads)
            times[v.name].append(elapsed)  # type: ignore[union-attr]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ROBENCH_DATA_DIR"))
    parser.add_argument("--quick", action="store_true",
                        help="fewer images, steps and repetitions; no torch.compile")
    parser.add_argument("--n", type=int, default=None, help="test images attacked")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated workload names")
    parser.add_argument("--csv", default="engine.csv", help="where the CSV goes")
    args = parser.parse_args()
    n = args.n or (500 if args.quick else 2000)
    repeats = args.repeats or (3 if args.quick else 5)
    default_threads = torch.get_num_threads()
    dataset = load_dataset("mnist", args.data_dir)
    train_split = dataset.train.head(50_000)
    validation = dataset.train.subset(torch.arange(50_000, 51_000))
    torch.manual_seed(0)
    initial = LeNet5()
    model = train(copy.deepcopy(initial), dataset.train.head(10_000), TrainConfig(epochs=1),
                  seed=0).eval()
    chosen = variants(default_threads, args.quick)
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    print(f"# engine benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, default "
          f"{default_threads} threads, load average {os.getloadavg()[0]:.2f}, n={n}, "
          f"{repeats} interleaved repetitions, median", file=sys.stderr)
    for bench in benches(dataset.test.head(n), train_split, validation, args.quick):
        if wanted and bench.name not in wanted:
            continue
        print(f"  {bench.name}: {bench.what}", file=sys.stderr)
        times = measure(bench, model, initial, chosen, repeats, default_threads)
        base = times["eager"]
        base_med = statistics.median(base) if isinstance(base, list) and base else None
        for v in chosen:
            t = times[v.name]
            med = statistics.median(t) if isinstance(t, list) and t else None
            rows.append({"workload": bench.name, "what": bench.what, "variant": v.name,
                         "batch_size": batch_of(bench, v),
                         "median_s": f"{med:.3f}" if med is not None else "",
                         "speedup": f"{base_med / med:.2f}" if med and base_med else "",
                         "note": t if isinstance(t, str) else "",
                         "repeats": len(t) if isinstance(t, list) else 0})
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    names = [v.name for v in chosen]
    print("| workload | eager s | " + " | ".join(names[1:]) + " |")
    print("|---|---:|" + "---:|" * (len(names) - 1))
    for bench_name in dict.fromkeys(r["workload"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["workload"] == bench_name}
        cells = [f"{mine[v]['speedup']}x" if mine[v]["speedup"] else mine[v]["note"] or "-"
                 for v in names[1:]]
        print(f"| {bench_name} | {mine['eager']['median_s']} | " + " | ".join(cells) + " |")
    print(f"\nspeed-up = eager median / variant median; CSV: {args.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
