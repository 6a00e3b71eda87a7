"""Throughput benchmark: robench's attack/training paths vs a raw PyTorch loop, torchattacks
and ART on the same trained LeNet-5 and the MNIST test images; cold vs warm `robench run`;
active-set PGD and BIM (``early_stop``) on the fgsm_lenet grid's cells.

Not a test: it measures and prints ratios, and writes its sections of benchmarks/RESULTS.md
(other sections of that file are kept).

    python benchmarks/throughput.py --data-dir ../shared/data
    python benchmarks/throughput.py --only active_set --threads 1     # the active-set part alone
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
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robench import __version__
from robench.attacks import create_attack
from robench.attacks.bim import paper_steps
from robench.data import Split, evaluation_split, hold_out_validation, load_dataset
from robench.defenses import DEFENSES, DefenseContext
from robench.evaluation import EVAL_BATCH_SIZE, evaluate_attack
from robench.models import LeNet5
from robench.training import TrainConfig, predict, train

HERE = Path(__file__).resolve().parent
EPS_SWEEP = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
THROUGHPUT_HEADING = "# Throughput benchmark"


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


def throughput(args: argparse.Namespace) -> None:
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
    # the plain final-iterate loop: the same maths as the raw, torchattacks and ART loops (the
    # active-set default is measured in its own section, ``--only active_set``)
    pgd = create_attack("pgd", model, {"steps": args.pgd_steps, "alpha": 0.01,
                                       "early_stop": False})
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
        THROUGHPUT_HEADING, "",
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
    replace_section(path, THROUGHPUT_HEADING, lines)


def replace_section(path: Path, heading: str, lines: list[str]) -> None:
    """Write ``lines`` (starting with ``heading``) into ``path`` in place of the section with
    that heading (up to the next ``## `` heading), keeping every other section; a new ``# ``
    section goes first, a new ``## `` one last."""
    old = path.read_text().splitlines() if path.exists() else []
    body = [*lines, ""]
    if heading in old:
        start = old.index(heading)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        new = old[:start] + body + old[end:]
    elif heading.startswith("# "):
        new = body + old
    else:
        new = old + ([""] if old and old[-1] else []) + body
    while new and not new[-1]:
        new.pop()
    path.write_text("\n".join(new) + "\n")
    print(f"wrote {heading!r} to {path}")


# --- Active-set PGD and BIM on the fgsm_lenet grid's cells ----------------------------------
# The suite's PGD-40 (alpha 0.01, random start) and BIM (the paper's step rule: 29/55/80 steps
# of 1/255) at eps 0.1/0.2/0.3 on an undefended and a PGD-adversarially-trained LeNet-5:
# robench with early_stop true (the active set, the default) and false (the plain loop), and
# torchattacks' and ART's PGD. Every contender attacks the same images in batches of
# EVAL_BATCH_SIZE and counts clean and robust accuracy as the harness does (robust: correct
# before and after the attack). Contenders alternate within each cell (the order rotates from
# cell to cell and repeat to repeat), so contention shared with other jobs hits all alike.

ACTIVE_EPS = (0.1, 0.2, 0.3)
PGD_PARAMS = {"steps": 40, "alpha": 0.01, "random_start": True}     # suites/fgsm_lenet.yaml
VALIDATION_SIZE = 5000                                              # held out, as the suite
NONE_EPOCHS = 2
AT_PARAMS = {"method": "pgd", "eps": 0.3, "steps": 5, "epochs": 2, "monitor_limit": 0}
AT_TRAIN_IMAGES = 20_000


class GradientPasses:
    """Counts the images a model sees in forwards with autograd on (an attack's gradient
    steps; the harness's and the libraries' clean/adversarial predictions run without)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if torch.is_grad_enabled():
            self.images += inputs[0].shape[0]


def active_set_models(data, reporter=print) -> dict[str, torch.nn.Module]:
    """{"none": LeNet-5 trained NONE_EPOCHS epochs, "at:pgd": robench's adversarial_training
    plugin with AT_PARAMS on the first AT_TRAIN_IMAGES training images}; both from seed 0's
    initial weights, on the suite's training split (5000 held out). Saved to and loaded from
    $ROBENCH_CACHE_DIR/benchmarks/ when that is set."""
    train_split, validation = hold_out_validation(data.train, VALIDATION_SIZE, 0)
    cache = os.environ.get("ROBENCH_CACHE_DIR")
    folder = Path(cache) / "benchmarks" if cache else None
    config = TrainConfig(epochs=NONE_EPOCHS)

    def build(name: str, key: str, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        path = folder / f"lenet5_{name}_{key}.pt" if folder else None
        model = LeNet5()
        if path is not None and path.exists():
            model.load_state_dict(torch.load(path))
            reporter(f"model {name}: loaded {path}")
        else:
            t0 = time.perf_counter()
            model = make()
            reporter(f"model {name}: trained in {time.perf_counter() - t0:.0f} s")
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), path)
        return model.eval()

    def undefended() -> torch.nn.Module:
        torch.manual_seed(0)
        return train(LeNet5(), train_split, config, seed=0)

    def adversarially_trained() -> torch.nn.Module:
        cls = DEFENSES.get("adversarial_training")
        defense = cls(cls.Params(**AT_PARAMS))
        torch.manual_seed(0)
        ctx = DefenseContext(model=LeNet5(), train=train_split.head(AT_TRAIN_IMAGES),
                             validation=validation, params=defense.params, seed=0,
                             device=torch.device("cpu"), train_config=config)
        return defense.apply(ctx).model

    at_key = "_".join(f"{k}{v}" for k, v in AT_PARAMS.items()) + f"_n{AT_TRAIN_IMAGES}"
    return {"none": build("none", f"e{NONE_EPOCHS}", undefended),
            "at:pgd": build("at_pgd", at_key, adversarially_trained)}


Run = Callable[[], tuple[float, float]]


def harness_cell(model, name: str, params: dict, eps: float, test: Split) -> Run:
    """(clean, robust accuracy) of one cell through robench's evaluation loop."""
    def run() -> tuple[float, float]:
        outcome = evaluate_attack(model, create_attack(name, model, params), [eps], test)[0]
        return outcome.clean_acc, outcome.robust_acc
    return run


def library_cell(make_adv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model,
                 test: Split) -> Run:
    """(clean, robust accuracy) of one cell, a library crafting each batch, counted as the
    harness counts (``robench.evaluation.AttackOutcome.robust``)."""
    def run() -> tuple[float, float]:
        clean, adv = [], []
        for i in range(0, len(test), EVAL_BATCH_SIZE):
            xb, yb = test.images[i:i + EVAL_BATCH_SIZE], test.labels[i:i + EVAL_BATCH_SIZE]
            clean.append(predict(model, xb) == yb)
            adv.append(predict(model, make_adv(xb, yb)) == yb)
        clean_ok, adv_ok = torch.cat(clean), torch.cat(adv)
        return clean_ok.float().mean().item(), (clean_ok & adv_ok).float().mean().item()
    return run


def cell_runs(model, clf, eps: float, test: Split) -> dict[str, dict[str, Run]]:
    """{"pgd": {contender: run}, "bim": {contender: run}} for one model and eps."""
    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescent

    ta = torchattacks.PGD(model, eps=eps, alpha=PGD_PARAMS["alpha"], steps=PGD_PARAMS["steps"],
                          random_start=True)
    art_pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=PGD_PARAMS["alpha"],
                                       max_iter=PGD_PARAMS["steps"], num_random_init=1,
                                       batch_size=EVAL_BATCH_SIZE, verbose=False)
    return {
        "pgd": {
            "active": harness_cell(model, "pgd", {**PGD_PARAMS, "early_stop": True}, eps, test),
            "plain": harness_cell(model, "pgd", {**PGD_PARAMS, "early_stop": False}, eps, test),
            "torchattacks": library_cell(ta, model, test),
            "art": library_cell(lambda xb, yb: torch.from_numpy(
                art_pgd.generate(x=xb.numpy(), y=yb.numpy())), model, test),
        },
        "bim": {
            "active": harness_cell(model, "bim", {"early_stop": True}, eps, test),
            "plain": harness_cell(model, "bim", {"early_stop": False}, eps, test),
        },
    }


def active_set(args: argparse.Namespace) -> None:
    load_start = os.getloadavg()
    data = load_dataset("mnist", args.data_dir)
    models = active_set_models(data)
    test = evaluation_split(data.test, None, 0).head(args.active_n)  # the suite's first N
    counters = {name: GradientPasses(model) for name, model in models.items()}
    cells = []  # (attack, model, eps, {contender: run})
    for name, model in models.items():
        clf = art_classifier(model)
        for eps in ACTIVE_EPS:
            runs = cell_runs(model, clf, eps, test)
            cells += [(attack, name, eps, runs[attack]) for attack in ("pgd", "bim")]
        if name == "none":  # untimed warm-up of every code path on 100 images
            for attack_runs in cell_runs(model, clf, 0.1, test.head(100)).values():
                for run in attack_runs.values():
                    run()

    times: dict[tuple, list[float]] = {}
    robust: dict[tuple, list[float]] = {}
    clean: dict[str, float] = {}
    steps: dict[tuple, float] = {}
    t_start = time.perf_counter()
    for rep in range(args.active_repeats):
        for k, (attack, name, eps, runs) in enumerate(cells):
            order = list(runs)
            shift = (rep + k) % len(order)
            for contender in order[shift:] + order[:shift]:
                key = (attack, name, eps, contender)
                counters[name].images = 0
                t0 = time.perf_counter()
                clean[name], acc = runs[contender]()
                times.setdefault(key, []).append(time.perf_counter() - t0)
                robust.setdefault(key, []).append(acc)
                steps[key] = counters[name].images / len(test)
            print(f"[{rep + 1}/{args.active_repeats}] {attack} {name:<6} eps {eps}: " + ", ".join(
                f"{c} {times[(attack, name, eps, c)][-1]:.1f} s "
                f"({100 * robust[(attack, name, eps, c)][-1]:.1f} %)" for c in runs), flush=True)
    wall = time.perf_counter() - t_start

    med = {key: statistics.median(v) for key, v in times.items()}
    acc = {key: statistics.mean(v) for key, v in robust.items()}
    for (attack, name, eps, contender), value in acc.items():
        if contender == "active" and value > acc[(attack, name, eps, "plain")]:
            print(f"WARNING: {attack} {name} eps {eps}: active robust accuracy {value:.3f} > "
                  f"plain {acc[(attack, name, eps, 'plain')]:.3f}")

    def total(attack: str, contender: str, model: str | None = None,
              values: dict | None = None) -> float:
        return sum(v for (a, n, _, c), v in (med if values is None else values).items()
                   if a == attack and c == contender and model in (None, n))

    ratios = {}
    for model in [*models, None]:
        where = f"{model} model" if model else "grid"
        active = total("pgd", "active", model)
        ratios[f"PGD over the {where}: torchattacks / robench active"] = (
            total("pgd", "torchattacks", model) / active)
        ratios[f"PGD over the {where}: ART / robench active"] = total("pgd", "art", model) / active
        ratios[f"PGD over the {where}: robench plain / active"] = (
            total("pgd", "plain", model) / active)
        ratios[f"BIM over the {where}: robench plain / active"] = (
            total("bim", "plain", model) / total("bim", "active", model))
        ratios[f"PGD + BIM over the {where}: robench active / plain (time share)"] = (
            (active + total("bim", "active", model))
            / (total("pgd", "plain", model) + total("bim", "plain", model)))
        for attack in ("pgd", "bim"):  # the work, free of timing noise
            ratios[f"{attack.upper()} over the {where}: gradient passes plain / active"] = (
                total(attack, "plain", model, steps) / total(attack, "active", model, steps))
    # the same work (40 gradient passes per image): how far contention moves a ratio
    for library, label in (("torchattacks", "torchattacks"), ("art", "ART")):
        ratios[f"same work, noise gauge: {label} / robench plain (PGD over the grid)"] = (
            total("pgd", library) / total("pgd", "plain"))
    for k, v in ratios.items():
        print(f"{k:<76} {v:6.2f}")
    context = {"load_start": load_start, "load_end": os.getloadavg(), "wall": wall,
               "clean": clean, "n": len(test)}
    write_active_set(Path(args.out), args, context, med, acc, steps, ratios)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_active_set(path: Path, args, context: dict, med: dict, acc: dict, steps: dict,
                     ratios: dict[str, float]) -> None:
    import art
    import torchattacks

    def pct(key: tuple) -> str:
        return f"{100 * acc[key]:.1f}"

    heading = f"## Active-set attacks ({date.today().isoformat()})"
    n, r, threads = context["n"], args.active_repeats, torch.get_num_threads()
    at = ", ".join(f"{k} {v}" for k, v in AT_PARAMS.items())
    lines = [
        heading, "",
        f"`python benchmarks/throughput.py --only active_set --threads {threads}"
        f" --active-n {n} --active-repeats {r}`: {cpu_name()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({threads} thread{'s' * (threads > 1)}), torchattacks "
        f"{torchattacks.__version__}, ART {art.__version__}, robench {__version__}, Python "
        f"{platform.python_version()}. Contention: the cores were shared with other jobs "
        f"(load average {context['load_start'][0]:.1f} at the start, "
        f"{context['load_end'][0]:.1f} at the end, on {os.cpu_count()} cores), so absolute "
        "seconds are inflated and noisy; the contenders of a cell run back to back, their "
        "order rotating from cell to cell, and only ratios are meant to be read.",
        "",
        f"Cells of `suites/fgsm_lenet.yaml`: PGD-40 (alpha 0.01, random start) and BIM (the "
        f"paper's rule: {', '.join(str(paper_steps(e)) for e in ACTIVE_EPS)} steps of 1/255) at "
        f"eps {', '.join(str(e) for e in ACTIVE_EPS)}, on the suite's first {n} evaluation "
        f"images (seeded order, the first {n} of its 5000 PGD images), batches of "
        f"{EVAL_BATCH_SIZE}; {'median of ' + str(r) + ' timed runs' if r > 1 else 'one timed run'}"
        f" per contender and cell (after an untimed warm-up on 100 images); {context['wall']:.0f}"
        " s of timed runs in all. Models (seed 0 init, the suite's training split with 5000 "
        f"held out): `none`, LeNet-5 trained {NONE_EPOCHS} epochs (clean "
        f"{100 * context['clean']['none']:.1f} % on these images); `at:pgd`, robench's "
        f"`adversarial_training` plugin ({at}; eps ramped over the first epoch, alpha "
        f"2.5 * 0.3 / 5) on the first {AT_TRAIN_IMAGES} training images (clean "
        f"{100 * context['clean']['at:pgd']:.1f} %).",
        "",
        "Contenders: robench `early_stop: true` (active set, the default), robench `early_stop:"
        " false` (plain final-iterate loop), `torchattacks.PGD(eps, alpha=0.01, steps=40, "
        "random_start=True)`, ART `ProjectedGradientDescent(norm=inf, eps_step=0.01, "
        "max_iter=40, num_random_init=1)`. Robust accuracy as the harness counts it (correct "
        "before and after); the libraries' is the mean over the timed runs. `grad/img`: "
        "gradient passes per image the active set spent (plain: all of them).",
        "",
        "| model | eps | active s | plain s | torchattacks s | ART s | plain / active | "
        "torchattacks / active | ART / active | grad/img active | robust % active / plain / "
        "torchattacks / ART |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    model_names = list(context["clean"])
    for name in model_names:
        for eps in ACTIVE_EPS:
            k = {c: ("pgd", name, eps, c) for c in ("active", "plain", "torchattacks", "art")}
            lines.append(
                f"| {name} | {eps} | {med[k['active']]:.1f} | {med[k['plain']]:.1f} | "
                f"{med[k['torchattacks']]:.1f} | {med[k['art']]:.1f} | "
                f"{med[k['plain']] / med[k['active']]:.2f} | "
                f"{med[k['torchattacks']] / med[k['active']]:.2f} | "
                f"{med[k['art']] / med[k['active']]:.2f} | {steps[k['active']]:.1f} / 40 | "
                f"{' / '.join(pct(k[c]) for c in k)} |")
    lines += [
        "", "BIM (robench only; torchattacks' BIM is the plain loop):", "",
        "| model | eps | steps | active s | plain s | plain / active | grad/img active | "
        "robust % active / plain |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in model_names:
        for eps in ACTIVE_EPS:
            a, p = ("bim", name, eps, "active"), ("bim", name, eps, "plain")
            lines.append(f"| {name} | {eps} | {paper_steps(eps)} | {med[a]:.1f} | {med[p]:.1f} | "
                         f"{med[p] / med[a]:.2f} | {steps[a]:.1f} | {pct(a)} / {pct(p)} |")
    lines += ["", "Totals (sums of the cells' times):", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    replace_section(path, heading, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ROBENCH_DATA_DIR"))
    parser.add_argument("--only", choices=["all", "throughput", "active_set"], default="all",
                        help="run one part (default: both)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--n", type=int, default=10_000, help="test images attacked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pgd-repeats", type=int, default=2, help="PGD runs are long")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--active-n", type=int, default=1000,
                        help="active set: evaluation images per cell (the suite's first N)")
    parser.add_argument("--active-repeats", type=int, default=1,
                        help="active set: timed runs per contender and cell (median)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only in ("all", "throughput"):
        throughput(args)
    if args.only in ("all", "active_set"):
        active_set(args)


if __name__ == "__main__":
    main()
