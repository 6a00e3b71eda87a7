"""The generic runner: plan -> data/model -> defense -> attacks -> rows -> finalize.

Nothing here knows about a particular attack or defense: it runs the typed plan that
``robench.plan`` resolved once from the suite.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import robench
from robench.cache import ModelCache
from robench.checks import model_diagnostics
from robench.config import Suite, load_suite, parse_suite
from robench.data import Dataset, Split, load_dataset
from robench.defenses import DefenseContext
from robench.eps import eps_text
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.finalize import DIAGNOSTICS_FILE, finalize
from robench.models import weights_hash
from robench.outcomes import OUTCOMES_FILE, OutcomeTable
from robench.plan import AttackSpec, DefenseSpec, Plan, resolve
from robench.progress import Reporter
from robench.results import (
    DEFENSE_METRIC_COLUMNS,
    CellExpectation,
    ResultRow,
    ResultTable,
    write_csv,
    write_json,
)
from robench.stats import wilson_interval
from robench.training import accuracy, train


@dataclass
class RunOptions:
    """Command-line overrides and switches of ``robench run``."""

    data_dir: str | None = None
    out: str | None = None
    device: str | None = None
    eval_limit: int | None = None
    epochs: int | None = None
    seed: int | None = None
    quiet: bool = False
    use_cache: bool = True
    force: bool = False


def apply_overrides(suite: Suite, opts: RunOptions, source: str) -> Suite:
    """The suite with the command line's overrides, validated like the file itself."""
    raw = suite.model_dump(mode="python")
    for section, key, value in (("data", "root", opts.data_dir),
                                ("data", "eval_limit", opts.eval_limit),
                                ("train", "epochs", opts.epochs), (None, "device", opts.device),
                                (None, "seed", opts.seed)):
        if value is not None:
            (raw[section] if section else raw)[key] = value
    return parse_suite(raw, f"{source} (with command-line options)")


def resolve_device(name: str, where: str = "device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available; "
                        "use 'auto' or 'cpu'", where=where)
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda", where=where)
    return torch.device(name)


def prepare_out_dir(path: Path) -> Path:
    """Create the results folder and prove it is writable before any work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".robench-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"results folder is not writable ({err.strerror})",
                        where=str(path)) from None
    return path


def git_state() -> dict[str, Any]:
    """The git revision of the robench source and whether it has uncommitted changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                                 cwd=here)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if revision else None
    return {"git_revision": revision or None,
            "git_dirty": None if dirty is None else bool(dirty)}


class Runner:
    """Runs one resolved plan into one results folder."""

    def __init__(self, plan: Plan, out_dir: Path, opts: RunOptions) -> None:
        self.plan = plan
        self.out_dir = out_dir
        self.opts = opts
        self.device = resolve_device(plan.suite.device)
        self.reporter = Reporter(quiet=opts.quiet, log_path=out_dir / "run.log")
        self.cache = ModelCache(enabled=opts.use_cache and not opts.force)
        self.table = ResultTable(out_dir / "results.csv")
        self.outcomes = OutcomeTable(out_dir / OUTCOMES_FILE)
        self.metric_rows: list[dict[str, Any]] = []
        self.diagnostics: dict[str, dict[str, float]] = {}

    # -- stages ---------------------------------------------------------------------------
    def run(self, dataset: Dataset) -> pd.DataFrame:
        started = time.perf_counter()
        plan = self.plan
        self._start_run_record()
        train_split = dataset.train.to(self.device)
        test_split = dataset.test.head(plan.suite.data.eval_limit).to(self.device)
        self.reporter.info(f"suite {plan.name}: {plan.baseline.dataset} train "
                           f"{len(train_split)}, eval {len(test_split)} images, "
                           f"device {self.device}")
        baseline = self.baseline(dataset, train_split)
        planned: set[tuple[str, str, float, int]] = set()
        for defense in plan.defenses:
            model, seconds = self.defend(defense, baseline, train_split, test_split, dataset)
            self.reporter.info(f"[{defense.label}] clean accuracy "
                               f"{accuracy(model, test_split):.4f}")
            self.diagnostics[defense.label] = model_diagnostics(model, test_split)
            write_json(self.out_dir / DIAGNOSTICS_FILE, self.diagnostics)
            model_hash = weights_hash(model)
            for attack in plan.attacks:
                self.attack(defense, attack, model, model_hash, test_split, seconds)
                planned.update((defense.label, attack.label, eps, plan.seed)
                               for eps in attack.eps)
        dropped = self.table.keep_only(planned)
        self.outcomes.keep_only(planned)
        if dropped:
            self.reporter.info(f"discarded {dropped} rows of {self.table.path.name} that are no "
                               "cell of this suite")
        board = finalize(self.out_dir, reporter=self.reporter)
        self.reporter.info(f"done in {time.perf_counter() - started:.1f}s; "
                           f"results in {self.out_dir}")
        return board

    def baseline(self, dataset: Dataset, train_split: Split) -> nn.Module:
        spec = self.plan.baseline
        torch.manual_seed(spec.seed)
        model = spec.model_cls(num_classes=dataset.num_classes).to(self.device)
        if self.cache.load(spec.cache_key, model) is not None:
            self.reporter.info(f"baseline {spec.model}: loaded from cache "
                               f"({spec.cache_key[:10]})")
            return model.to(self.device).eval()
        t0 = time.perf_counter()
        train(model, train_split, spec.train, seed=spec.seed, reporter=self.reporter,
              desc=f"train {spec.model}")
        seconds = time.perf_counter() - t0
        self.reporter.info(f"baseline {spec.model}: trained {spec.train.epochs} epochs "
                           f"in {seconds:.1f}s")
        self._warn(self.cache.save(spec.cache_key, model, {"seconds": seconds}))
        return model.eval()

    def defend(self, spec: DefenseSpec, baseline: nn.Module, train_split: Split,
               test_split: Split, dataset: Dataset) -> tuple[nn.Module, float]:
        model = copy.deepcopy(baseline)
        meta = self.cache.load(spec.cache_key, model) if spec.plugin.cacheable else None
        if meta is not None:
            self.reporter.info(f"[{spec.label}] defended model loaded from cache "
                               f"({spec.cache_key[:10]})")
            self._add_metrics(spec, meta.get("metrics", []))
            return model.to(self.device).eval(), float(meta["seconds"])
        ctx = DefenseContext(model=model, train=train_split, test=test_split,
                             params=spec.params, seed=spec.seed, device=self.device,
                             train_config=self.plan.suite.train, reporter=self.reporter,
                             num_classes=dataset.num_classes)
        t0 = time.perf_counter()
        result = spec.build().apply(ctx)
        seconds = time.perf_counter() - t0
        defended = result.model.to(self.device).eval()
        for p in defended.parameters():
            p.grad = None
        self.reporter.info(f"[{spec.label}] defense {spec.name} took {seconds:.1f}s")
        if spec.plugin.cacheable:
            self._warn(self.cache.save(spec.cache_key, defended,
                                       {"seconds": seconds, "metrics": result.metrics}))
        self._add_metrics(spec, result.metrics)
        return defended, seconds

    def attack(self, defense: DefenseSpec, attack: AttackSpec, model: nn.Module,
               model_hash: str, test_split: Split, defense_seconds: float) -> None:
        data = test_split.head(attack.limit)
        expect = CellExpectation(
            defense=defense.label, attack=attack.label, seed=self.plan.seed,
            defense_params=defense.params_json, attack_params=attack.params_json,
            role=attack.role, n=len(data), model_hash=model_hash, code_hash=attack.code_hash)
        if all(self._done(expect, eps) for eps in attack.eps):
            self.reporter.info(f"[{defense.label}] {attack.label}: already in results.csv, "
                               "skipped")
            return
        outcomes = evaluate_attack(model, attack.build(model), attack.eps, data,
                                   reporter=self.reporter,
                                   desc=f"{defense.label} / {attack.label}")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        suite = self.plan.suite
        rows = [ResultRow(
            suite=suite.name, dataset=suite.data.dataset, model=suite.model.name,
            defense=defense.label, defense_name=defense.name,
            defense_params=defense.params_json, attack=attack.label, attack_name=attack.name,
            attack_params=attack.params_json, backend=attack.backend, eps=o.eps,
            seed=self.plan.seed, n=o.n, clean_acc=o.clean_acc,
            **_interval("clean_acc", int(o.clean_ok.sum()), o.n), robust_acc=o.robust_acc,
            **_interval("robust_acc", int(o.robust.sum()), o.n),
            attack_success_rate=o.attack_success_rate, attack_seconds=o.seconds,
            defense_seconds=defense_seconds, robench_version=robench.__version__,
            torch_version=torch.__version__, created_at=now, role=attack.role,
            model_hash=model_hash, code_hash=attack.code_hash) for o in outcomes]
        self.outcomes.replace_cells(defense.label, attack.label, self.plan.seed,
                                    data.ids.tolist(), outcomes)
        self.table.replace_cells(rows)
        curve = ", ".join(f"{eps_text(o.eps)}: {o.robust_acc:.3f}" for o in outcomes)
        self.reporter.info(f"[{defense.label}] {attack.label} robust accuracy {{{curve}}}")

    def _done(self, expect: CellExpectation, eps: float) -> bool:
        """A cell is done when its row verifies and its per-image outcomes agree with it."""
        row = self.table.verified(expect, eps)
        return row is not None and self.outcomes.matches(
            expect.defense, expect.attack, eps, expect.seed, expect.n,
            float(row["clean_acc"]), float(row["robust_acc"]))

    # -- bookkeeping ----------------------------------------------------------------------
    def _warn(self, problem: str | None) -> None:
        if problem:
            self.reporter.info(f"warning: {problem}")

    def _start_run_record(self) -> None:
        for leftover in self.out_dir.glob(".*.tmp"):  # from a run killed mid-write
            leftover.unlink(missing_ok=True)
        if not self.opts.force:
            unreadable = self.table.load_existing()
            if unreadable:
                what = "the file" if unreadable < 0 else f"{unreadable} rows"
                self.reporter.info(f"{self.table.path.name}: {what} could not be read as "
                                   "robench results; not trusted")
            if self.table.rows:
                self.reporter.info(f"resuming: {len(self.table.rows)} rows in "
                                   f"{self.table.path} are checked against this suite")
            if not self.outcomes.load_existing():
                self.reporter.info(f"{OUTCOMES_FILE} could not be read as robench outcomes; "
                                   "not trusted (its cells are recomputed)")
        plan = self.plan
        write_json(self.out_dir / "run.json", {
            "suite": plan.suite.model_dump(mode="json"), "source": plan.source,
            "baseline": {"cache_key": plan.baseline.cache_key,
                         "code_hash": plan.baseline.code_hash},
            "defenses": {d.label: {"name": d.name, "params": d.params_json,
                                   "cache_key": d.cache_key, "code_hash": d.code_hash}
                         for d in plan.defenses},
            "attacks": {a.label: {"name": a.name, "params": a.params_json, "seed": a.seed,
                                  "code_hash": a.code_hash} for a in plan.attacks},
            "versions": _versions(), **git_state(), "device": str(self.device),
            "threads": torch.get_num_threads(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def _add_metrics(self, spec: DefenseSpec, metrics: list[dict[str, Any]]) -> None:
        self.metric_rows = [r for r in self.metric_rows if r["defense"] != spec.label]
        self.metric_rows += [{"defense": spec.label, "method": m.get("method", spec.name), **m}
                             for m in metrics]
        if self.metric_rows:
            frame = pd.DataFrame(self.metric_rows)
            cols = DEFENSE_METRIC_COLUMNS + [c for c in frame.columns
                                             if c not in DEFENSE_METRIC_COLUMNS]
            write_csv(self.out_dir / "defense_metrics.csv", frame[cols])


def _interval(name: str, k: int, n: int) -> dict[str, float]:
    lo, hi = wilson_interval(k, n)
    return {f"{name}_lo": float(lo), f"{name}_hi": float(hi)}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {"robench": robench.__version__, "torch": torch.__version__,
            "torchvision": of("torchvision"), "torchattacks": of("torchattacks"),
            "adversarial-robustness-toolbox": of("adversarial-robustness-toolbox"),
            "python": sys.version.split()[0]}


def run_suite(path: str | Path, opts: RunOptions | None = None) -> tuple[Path, pd.DataFrame]:
    """Load, resolve and run a suite file. Returns the results folder and the leaderboard."""
    opts = opts or RunOptions()
    plan = resolve(apply_overrides(load_suite(path), opts, str(path)), str(path))
    # user mistakes fail before anything is written
    resolve_device(plan.suite.device, where="--device" if opts.device else f"{path}: device")
    dataset = load_dataset(plan.suite.data.dataset, plan.suite.data.root)
    out_dir = prepare_out_dir(Path(opts.out) if opts.out else Path("results") / plan.name)
    board = Runner(plan, out_dir, opts).run(dataset)
    return out_dir, board
