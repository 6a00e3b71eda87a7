"""The generic runner: suite -> data/model -> defense -> attacks -> rows -> leaderboard.

Nothing here knows about a particular attack or defense; plugins are looked up by name.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import robench
from robench.attacks import ATTACKS
from robench.cache import ModelCache, cache_key
from robench.checks import model_diagnostics, run_checks, summarise
from robench.config import AttackEntry, DefenseEntry, Suite, load_suite, plugin_params
from robench.data import Dataset, Split, load_dataset
from robench.defenses import DEFENSES, DefenseContext
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.leaderboard import write_leaderboard
from robench.models import create_model
from robench.progress import Reporter
from robench.report import plot_curves
from robench.results import (
    DEFENSE_METRIC_COLUMNS,
    ResultTable,
    params_json,
    write_csv,
    write_json,
)
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


def apply_overrides(suite: Suite, opts: RunOptions) -> Suite:
    data = suite.data.model_copy(update={k: v for k, v in {
        "root": opts.data_dir, "eval_limit": opts.eval_limit}.items() if v is not None})
    train_cfg = suite.train.model_copy(
        update={"epochs": opts.epochs} if opts.epochs is not None else {})
    update: dict[str, Any] = {"data": data, "train": train_cfg}
    if opts.device is not None:
        update["device"] = opts.device
    if opts.seed is not None:
        update["seed"] = opts.seed
    return suite.model_copy(update=update)


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


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Runner:
    """Runs one resolved suite into one results folder."""

    def __init__(self, suite: Suite, out_dir: Path, opts: RunOptions) -> None:
        self.suite = suite
        self.out_dir = out_dir
        self.opts = opts
        self.device = resolve_device(suite.device)
        self.reporter = Reporter(quiet=opts.quiet, log_path=out_dir / "run.log")
        self.cache = ModelCache(enabled=opts.use_cache and not opts.force)
        self.versions = {"robench": robench.__version__, "torch": torch.__version__}
        self.config_hash = cache_key(suite=suite.model_dump(mode="json"),
                                     robench=robench.__version__)
        self.table = ResultTable(out_dir / "results.csv")
        self.metric_rows: list[dict[str, Any]] = []

    # -- stages ---------------------------------------------------------------------------
    def run(self, dataset: Dataset) -> pd.DataFrame:
        started = time.perf_counter()
        suite = self.suite
        self._start_run_record()
        train_split = dataset.train.to(self.device)
        test_split = dataset.test.head(suite.data.eval_limit).to(self.device)
        self.reporter.info(f"suite {suite.name}: {suite.data.dataset} train {len(train_split)}, "
                           f"eval {len(test_split)} images, device {self.device}")
        baseline, base_key = self.baseline(dataset, train_split)
        diagnostics = {}
        for entry in suite.defenses:
            defended, seconds = self.defend(entry, baseline, base_key, train_split, test_split)
            clean = accuracy(defended, test_split)
            self.reporter.info(f"[{entry.key}] clean accuracy {clean:.4f}")
            diagnostics[entry.key] = model_diagnostics(defended, test_split)
            for index, attack in enumerate(suite.attacks):
                self.attack(entry, attack, index, defended, test_split, seconds)
        results = self.table.frame()
        checks = run_checks(results, diagnostics)
        write_csv(self.out_dir / "checks.csv", checks)
        board = write_leaderboard(results, self.out_dir, title=suite.name,
                                  status=summarise(checks))
        plot_curves(results, self.out_dir)
        for _, check in checks[checks["status"] != "pass"].iterrows():
            self.reporter.info(f"check {check['status']}: [{check['defense']}] "
                               f"{check['check']}: {check['detail']}")
        self.reporter.info(f"done in {time.perf_counter() - started:.1f}s; "
                           f"results in {self.out_dir}")
        return board

    def baseline(self, dataset: Dataset, train_split: Split) -> tuple[nn.Module, str]:
        suite = self.suite
        torch.manual_seed(suite.seed)
        model = create_model(suite.model.name, dataset.num_classes).to(self.device)
        key = cache_key(kind="baseline", dataset=suite.data.dataset, model=suite.model.name,
                        train=suite.train.model_dump(), seed=suite.seed, **self.versions)
        if self.cache.load(key, model) is not None:
            self.reporter.info(f"baseline {suite.model.name}: loaded from cache ({key[:10]})")
            return model.to(self.device).eval(), key
        t0 = time.perf_counter()
        train(model, train_split, suite.train, seed=suite.seed, reporter=self.reporter,
              desc=f"train {suite.model.name}")
        self.reporter.info(f"baseline {suite.model.name}: trained {suite.train.epochs} epochs "
                           f"in {time.perf_counter() - t0:.1f}s")
        self.cache.save(key, model, {"seconds": time.perf_counter() - t0})
        return model.eval(), key

    def defend(self, entry: DefenseEntry, baseline: nn.Module, base_key: str,
               train_split: Split, test_split: Split) -> tuple[nn.Module, float]:
        params = plugin_params(DEFENSES, entry.name, entry.params)
        key = cache_key(kind="defense", baseline=base_key, name=entry.name,
                        params=params_json(params), seed=self.suite.seed)
        model = copy.deepcopy(baseline)
        defense_cls = DEFENSES.get(entry.name)
        meta = self.cache.load(key, model) if defense_cls.cacheable else None
        if meta is not None:
            self.reporter.info(f"[{entry.key}] defended model loaded from cache ({key[:10]})")
            self._add_metrics(entry, meta.get("metrics", []))
            return model.to(self.device).eval(), float(meta["seconds"])
        ctx = DefenseContext(model=model, train=train_split, test=test_split, params=params,
                             seed=self.suite.seed, device=self.device,
                             train_config=self.suite.train, reporter=self.reporter)
        t0 = time.perf_counter()
        result = defense_cls(params).apply(ctx)
        seconds = time.perf_counter() - t0
        defended = result.model.to(self.device).eval()
        for p in defended.parameters():
            p.grad = None
        self.reporter.info(f"[{entry.key}] defense {entry.name} took {seconds:.1f}s")
        if defense_cls.cacheable:
            self.cache.save(key, defended, {"seconds": seconds, "metrics": result.metrics})
        self._add_metrics(entry, result.metrics)
        return defended, seconds

    def attack(self, entry: DefenseEntry, attack: AttackEntry, index: int, model: nn.Module,
               test_split: Split, defense_seconds: float) -> None:
        suite = self.suite
        done = [self.table.has(defense=entry.key, attack=attack.key, eps=e, seed=suite.seed)
                for e in attack.eps]
        if all(done):
            self.reporter.info(f"[{entry.key}] {attack.key}: already in results.csv, skipped")
            return
        cls = ATTACKS.get(attack.name)
        params = cls.Params.model_validate(attack.params)
        attacker = cls(model, params, seed=suite.seed * 1000 + index)
        outcomes = evaluate_attack(model, attacker, attack.eps, test_split.head(attack.limit),
                                   reporter=self.reporter, desc=f"{entry.key} / {attack.key}")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = [{
            "suite": suite.name, "dataset": suite.data.dataset, "model": suite.model.name,
            "defense": entry.key, "defense_name": entry.name,
            "defense_params": params_json(plugin_params(DEFENSES, entry.name, entry.params)),
            "attack": attack.key, "attack_name": attack.name,
            "attack_params": params_json(params),
            "backend": getattr(params, "backend", "native"),
            "eps": o.eps, "seed": suite.seed, "n": o.n, "clean_acc": o.clean_acc,
            "robust_acc": o.robust_acc, "attack_success_rate": o.attack_success_rate,
            "attack_seconds": o.seconds, "defense_seconds": defense_seconds,
            "robench_version": self.versions["robench"], "torch_version": self.versions["torch"],
            "created_at": now, "role": attack.role,
        } for o in outcomes]
        self.table.replace_where(rows, defense=entry.key, attack=attack.key, seed=suite.seed)
        curve = ", ".join(f"{o.eps:g}: {o.robust_acc:.3f}" for o in outcomes)
        self.reporter.info(f"[{entry.key}] {attack.key} robust accuracy {{{curve}}}")

    # -- bookkeeping ----------------------------------------------------------------------
    def _start_run_record(self) -> None:
        record_path = self.out_dir / "run.json"
        for leftover in self.out_dir.glob(".*.tmp"):  # from a run killed mid-write
            leftover.unlink(missing_ok=True)
        previous = None
        if record_path.exists():
            try:
                previous = pd.read_json(record_path, typ="series").get("config_hash")
            except ValueError:
                previous = None
        if previous == self.config_hash and not self.opts.force:
            self.table.load_existing()
            if self.table.rows:
                self.reporter.info(f"resuming: {len(self.table.rows)} rows already in "
                                   f"{self.table.path}")
        else:
            for stale in ("results.csv", "defense_metrics.csv", "leaderboard.csv",
                          "leaderboard.md", "checks.csv"):
                (self.out_dir / stale).unlink(missing_ok=True)
        write_json(record_path, {
            "suite": self.suite.model_dump(mode="json"), "config_hash": self.config_hash,
            "versions": {**self.versions, "torchvision": _version("torchvision"),
                         "torchattacks": _version("torchattacks"),
                         "adversarial-robustness-toolbox": _version(
                             "adversarial-robustness-toolbox"),
                         "python": os.sys.version.split()[0]},
            "git_revision": git_revision(), "device": str(self.device),
            "threads": torch.get_num_threads(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def _add_metrics(self, entry: DefenseEntry, metrics: list[dict[str, Any]]) -> None:
        self.metric_rows = [r for r in self.metric_rows if r["defense"] != entry.key]
        self.metric_rows += [{"defense": entry.key, "method": m.get("method", entry.name), **m}
                             for m in metrics]
        if self.metric_rows:
            frame = pd.DataFrame(self.metric_rows)
            cols = DEFENSE_METRIC_COLUMNS + [c for c in frame.columns
                                             if c not in DEFENSE_METRIC_COLUMNS]
            write_csv(self.out_dir / "defense_metrics.csv", frame[cols])


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def run_suite(path: str | Path, opts: RunOptions | None = None) -> tuple[Path, pd.DataFrame]:
    """Load, validate and run a suite file. Returns the results folder and the leaderboard."""
    opts = opts or RunOptions()
    suite = apply_overrides(load_suite(path), opts)
    # user mistakes fail before anything is written
    resolve_device(suite.device, where="--device" if opts.device else f"{path}: device")
    dataset = load_dataset(suite.data.dataset, suite.data.root)
    out_dir = prepare_out_dir(Path(opts.out) if opts.out else Path("results") / suite.name)
    board = Runner(suite, out_dir, opts).run(dataset)
    return out_dir, board
