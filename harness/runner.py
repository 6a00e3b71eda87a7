"""The generic runner: plan -> data/model -> defense -> attacks -> rows -> finalize.

Nothing here knows about a particular attack or defense: it runs the typed plan that
``robench.plan`` resolved once from the suite.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

import robench
from robench.cache import ModelCache
from robench.config import Suite, load_suite, parse_suite
from robench.data import (
    DATASETS,
    Dataset,
    Split,
    evaluation_split,
    hold_out_validation,
    load_dataset,
    resolve_data_root,
)
from robench.eps import canonical_eps, eps_text
from robench.errors import Interrupted, UserError, interrupts_deferred
from robench.estimate import attack_work, baseline_work, defense_work, suite_work
from robench.evaluation import AttackOutcome
from robench.executors import order_like_serial
from robench.finalize import DIAGNOSTICS_FILE, finalize, read_diagnostics
from robench.memory import peak_rss_text, release_freed_memory, trimming_freed_memory
from robench.outcomes import OUTCOMES_FILE, OutcomeTable
from robench.outdir import OutputFolder
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan, resolve
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
from robench.units import (
    ModelFacts,
    apply_defense,
    attack_images,
    inspect_model,
    train_baseline,
)

if TYPE_CHECKING:
    from robench.executors import Executor


@dataclass
class RunOptions:
    """Command-line overrides and switches of ``robench run``."""

    data_dir: str | None = None
    out: str | None = None
    device: str | None = None
    eval_limit: int | None = None
    epochs: int | None = None
    seed: int | None = None
    seeds: str | None = None       # "0,1,2": replaces the suite's seed/seeds
    quiet: bool = False
    use_cache: bool = True
    force: bool = False
    executor: str = "serial"       # serial | ray (robench.executors)
    jobs: int | None = None        # CPUs of the local Ray cluster (--executor ray)
    address: str | None = None     # an existing Ray cluster to join (--executor ray)


def apply_overrides(suite: Suite, opts: RunOptions, source: str) -> Suite:
    """The suite with the command line's overrides, validated like the file itself."""
    raw = suite.model_dump(mode="python")
    for section, key, value in (("data", "root", opts.data_dir),
                                ("data", "eval_limit", opts.eval_limit),
                                ("train", "epochs", opts.epochs), (None, "device", opts.device)):
        if value is not None:
            (raw[section] if section else raw)[key] = value
    if opts.seed is not None and opts.seeds is not None:
        raise UserError("give either --seed or --seeds, not both", where="--seeds")
    if opts.seed is not None:
        raw["seed"], raw["seeds"] = opts.seed, None
    if opts.seeds is not None:
        raw["seed"], raw["seeds"] = None, parse_seed_list(opts.seeds)
    return parse_suite(raw, f"{source} (with command-line options)")


def parse_seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2`` as integers (range, repeats: the suite's own validation)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"expected comma-separated integers such as 0,1,2 (got {text!r})",
                        where="--seeds") from None


def resolve_device(name: str, where: str = "device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available; "
                        "use 'auto' or 'cpu'", where=where)
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda", where=where)
    return torch.device(name)


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
    top = git("rev-parse", "--show-toplevel")
    if not top or not (Path(top) / "harness" / "plan.py").is_file():
        return {"git_revision": None, "git_dirty": None}  # not robench's own checkout
    # untracked files count too (a new module the run imports), but only in the code folders
    dirty = git("status", "--porcelain", "--", ":/harness", ":/attacks", ":/defenses")
    return {"git_revision": revision or None,
            "git_dirty": None if dirty is None else bool(dirty)}


class Runner:
    """Runs one resolved plan into one results folder (an open ``OutputFolder``)."""

    def __init__(self, plan: Plan, folder: OutputFolder, opts: RunOptions,
                 device: torch.device | None = None, executor: Executor | None = None) -> None:
        self.plan = plan
        self.folder = folder
        self.out_dir = folder.path
        self.opts = opts
        # a Ray run's tasks use the cluster's devices, which the driver may not have itself
        self.device = device if device is not None else resolve_device(plan.suite.device)
        self.executor = executor
        self.reporter = Reporter(quiet=opts.quiet,
                                 log=lambda line: folder.append_line("run.log", line))
        self.cache = ModelCache(enabled=opts.use_cache and not opts.force)
        self.table = ResultTable(folder)
        self.outcomes = OutcomeTable(folder)
        self.cells_done = 0
        self.metric_rows: list[dict[str, Any]] = []
        self.diagnostics: dict[str, dict[str, float]] = {}
        self._image_ids: list[int] = []
        self.data_hash = ""
        #: defended models that transfer attacks craft on, by label (``defend_sources``)
        self.sources: dict[str, tuple[nn.Module, float]] = {}

    # -- stages ---------------------------------------------------------------------------
    def run(self, data: RunData) -> pd.DataFrame:
        started = time.perf_counter()
        plan = self.plan
        self.data_hash = data.fingerprint
        dataset, splits = data.dataset, data.splits
        self._start_run_record(len(splits[2]))
        self.reporter.start_overall(suite_work(plan, len(splits[0]), len(splits[1]),
                                               len(splits[2])).units, f"suite {plan.name}")
        seeds = ", ".join(map(str, plan.seeds))
        self.reporter.info(f"suite {plan.name}: {plan.baseline.dataset} train "
                           f"{len(splits[0])}, validation {len(splits[1])}, eval "
                           f"{len(splits[2])} images, seed {seeds}, device {self.device}")
        if self.executor is None:
            planned = self.run_serial(dataset, splits)
        else:
            planned = self.executor.execute(self, dataset, splits)
        self.reporter.close_overall()
        self.table.keep_only(planned)
        self.outcomes.keep_only(planned)
        # the suite's order: a resume appends the cells it re-ran, Ray finishes them in any order
        order_like_serial(self)
        self.diagnostics = {k: v for k, v in self.diagnostics.items()
                            if k in {d.label for d in plan.defenses}}
        write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)
        self._write_metrics()
        # logged before the report, which shows both lines (as a later `robench report` does)
        self.reporter.info(reproduction_line(self.out_dir, self.table.frame()))
        self.reporter.info(f"done in {time.perf_counter() - started:.1f}s, {peak_rss_text()} "
                           f"(checks and report follow); results in {self.out_dir}")
        return finalize(self.out_dir, self.folder, reporter=self.reporter)

    def run_serial(self, dataset: Dataset,
                   splits: tuple[Split, Split, Split]) -> set[tuple[str, str, float, int]]:
        """The reference executor: every unit of work in order, in this process."""
        train_split, validation, test_split = (s.to(self.device) for s in splits)
        with trimming_freed_memory():  # transients of training and cells, not left resident
            return self._serial_units(dataset, train_split, validation, test_split)

    def _serial_units(self, dataset: Dataset, train_split: Split, validation: Split,
                      test_split: Split) -> set[tuple[str, str, float, int]]:
        plan = self.plan
        planned: set[tuple[str, str, float, int]] = set()
        for seed in plan.seeds:
            seeded = plan.for_seed(seed)
            baseline = self.baseline(seeded.baseline, dataset, train_split)
            self.sources = self.defend_sources(seeded, baseline, train_split, validation,
                                               dataset, seed)
            for defense in seeded.defenses:
                model, seconds = self.sources.get(defense.label) or self.defend(
                    defense, baseline, train_split, validation, dataset, seed)
                facts = inspect_model(model, test_split, diagnostics=seed == plan.seeds[0])
                self.note_model(seed, defense, facts)
                for attack in seeded.attacks:
                    self.attack(seed, defense, attack, model, facts.model_hash, test_split,
                                seconds)
                    planned.update((defense.label, attack.label, eps, seed)
                                   for eps in attack.eps)
                del model
                release_freed_memory()  # the allocator keeps what a defense freed otherwise
                self.reporter.info(f"[{defense.label}]{self._tag(seed)} done ({peak_rss_text()})")
        return planned

    def baseline(self, spec: BaselineSpec, dataset: Dataset, train_split: Split) -> nn.Module:
        model, cached = train_baseline(spec, dataset.num_classes, train_split, self.device,
                                       self.cache, self.data_hash, self.reporter)
        release_freed_memory()  # what training freed, before the cells add theirs on top
        self.count_work(baseline_work(spec, len(train_split)).units, cached)
        return model

    def defend(self, spec: DefenseSpec, baseline: nn.Module, train_split: Split,
               validation: Split, dataset: Dataset, seed: int) -> tuple[nn.Module, float]:
        done = apply_defense(spec, baseline, train_split, validation, dataset.num_classes,
                             self.device, self.plan.suite.train, self.cache, self.data_hash,
                             self.reporter)
        release_freed_memory()  # what training freed, before the cells add theirs on top
        self.count_work(defense_work(spec, self.plan.suite.train, len(train_split),
                                     len(validation)).units, done.cached)
        self._add_metrics(spec, seed, done.metrics)
        return done.model, done.seconds

    def count_work(self, units: float, cached: bool) -> None:
        """The overall progress line: a stage done (``advance``) or not needed (``skip``)."""
        if cached:
            self.reporter.skip(units)
        else:
            self.reporter.advance(units)

    def note_model(self, seed: int, defense: DefenseSpec, facts: ModelFacts) -> None:
        """Log a defended model's clean accuracy; store the first seed's diagnostics."""
        self.reporter.info(f"[{defense.label}]{self._tag(seed)} clean accuracy "
                           f"{facts.clean_acc:.4f}")
        if facts.diagnostics is not None:
            self.diagnostics[defense.label] = facts.diagnostics
            write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)

    def defend_sources(self, plan: Plan, baseline: nn.Module, train_split: Split,
                       validation: Split, dataset: Dataset,
                       seed: int) -> dict[str, tuple[nn.Module, float]]:
        """(model, seconds) of every defense a transfer attack crafts on (``AttackSpec.source``),
        defended before the loop so a source listed after its targets is ready; the loop
        reuses them, so no defense is applied twice. They stay in memory for the whole run."""
        wanted = {a.source for a in plan.attacks if a.source is not None}
        return {d.label: self.defend(d, baseline, train_split, validation, dataset, seed)
                for d in plan.defenses if d.label in wanted}

    def attack(self, seed: int, defense: DefenseSpec, attack: AttackSpec, model: nn.Module,
               model_hash: str, test_split: Split, defense_seconds: float) -> None:
        data = test_split.head(attack.limit)
        missing = self.missing_eps(seed, defense, attack, model_hash, data)
        if not missing:
            return
        source = self.sources[attack.source][0] if attack.source is not None else None
        outcomes = attack_images(attack, model, source, missing, data, self.reporter,
                                 desc=f"{defense.label} / {attack.label}")
        self.record_cell(seed, defense, attack, model_hash, data.ids.tolist(),
                         defense_seconds, outcomes)

    def missing_eps(self, seed: int, defense: DefenseSpec, attack: AttackSpec,
                    model_hash: str, data: Split) -> list[float]:
        """The eps of this (defense, attack, seed) whose cells are not yet verified in the
        results folder (logged when there is none)."""
        self._image_ids = data.ids.tolist()
        expect = CellExpectation(
            defense=defense.label, attack=attack.label, seed=seed,
            data_hash=self.data_hash,
            defense_params=defense.params_json, attack_params=attack.params_json,
            role=attack.role, n=len(data), model_hash=model_hash, code_hash=attack.code_hash)
        # only the cells not yet verified: random starts are drawn per (eps, image), so a cell's
        # numbers do not depend on which other eps are attacked with it
        missing = [eps for eps in attack.eps if not self._done(expect, eps)]
        self.reporter.skip(attack_work(attack, len(data), attack.eps).units
                           - attack_work(attack, len(data), missing).units)
        if not missing:
            self.reporter.info(f"[{defense.label}] {attack.label}{self._tag(seed)}: already "
                               "in results.csv, skipped")
        return missing

    def record_cell(self, seed: int, defense: DefenseSpec, attack: AttackSpec, model_hash: str,
                    image_ids: list[int], defense_seconds: float,
                    outcomes: list[AttackOutcome]) -> None:
        """Write the rows and per-image outcomes of finished cells (atomic, per cell)."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        suite = self.plan.suite
        rows = [ResultRow(
            suite=suite.name, dataset=suite.data.dataset, data_hash=self.data_hash,
            model=suite.model.name,
            defense=defense.label, defense_name=defense.name,
            defense_params=defense.params_json, attack=attack.label, attack_name=attack.name,
            attack_params=attack.params_json, backend=attack.backend, eps=o.eps,
            seed=seed, n=o.n, clean_acc=o.clean_acc,
            **_interval("clean_acc", int(o.clean_ok.sum()), o.n), robust_acc=o.robust_acc,
            **_interval("robust_acc", int(o.robust.sum()), o.n),
            attack_success_rate=o.attack_success_rate, attack_seconds=o.seconds,
            defense_seconds=defense_seconds, robench_version=robench.__version__,
            torch_version=torch.__version__, created_at=now, role=attack.role,
            model_hash=model_hash, code_hash=attack.code_hash) for o in outcomes]
        with interrupts_deferred():  # the files and the count the interrupt line reports
            self.outcomes.replace_cells(defense.label, attack.label, seed, image_ids, outcomes)
            self.table.replace_cells(rows)
            self.cells_done += len(rows)
        self.reporter.advance(attack_work(attack, len(image_ids), [o.eps for o in outcomes]).units)
        curve = ", ".join(f"{eps_text(o.eps)}: {o.robust_acc:.3f}" for o in outcomes)
        self.reporter.info(f"[{defense.label}] {attack.label}{self._tag(seed)} robust accuracy "
                           f"{{{curve}}}")

    def _done(self, expect: CellExpectation, eps: float) -> bool:
        """A cell is done when its row is exactly this cell and every number in it is what its
        per-image outcomes (for exactly these images) give."""
        return cell_verified(self.table, self.outcomes, expect, eps, self._image_ids)

    # -- bookkeeping ----------------------------------------------------------------------
    def _tag(self, seed: int) -> str:
        """" seed N" in log lines of a run with several seeds."""
        return f" seed {seed}" if len(self.plan.seeds) > 1 else ""

    def _start_run_record(self, n_eval: int) -> None:
        """Load what resume may reuse, move earlier outputs aside when this run will drop some
        of their cells, and write run.json."""
        if not self.opts.force:
            unreadable = self.table.load_existing()
            if unreadable:
                what = "the file" if unreadable < 0 else f"{unreadable} rows"
                self.reporter.info(f"{ResultTable.NAME}: {what} could not be read as robench "
                                   "results; not trusted")
            if self.table.rows:
                self.reporter.info(f"resuming: {len(self.table.rows)} rows in "
                                   f"{self.table.path} are checked against this suite")
            if not self.outcomes.load_existing():
                self.reporter.info(f"{OUTCOMES_FILE} could not be read as robench outcomes; "
                                   "not trusted (its cells are recomputed)")
            self._load_diagnostics()
        stale = (self.table.keys() - self.plan_cells()) | self._changed_cells(n_eval) \
            if not self.opts.force else {"force"}
        present = [n for n in output_names(self.out_dir) if self.folder.owns(n)]
        if stale and present and ResultTable.NAME in present:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            aside = self.folder.set_aside(present, stamp)
            if aside is not None:
                what = "all of them" if self.opts.force else "some of their cells"
                self.reporter.info(f"earlier outputs moved to {aside} (this run replaces "
                                   f"{what})")
        plan = self.plan
        write_json(self.folder, "run.json", {
            "suite": plan.suite.model_dump(mode="json"), "source": plan.source,
            "baseline": {"cache_key": plan.baseline.cache_key,
                         "code_hash": plan.baseline.code_hash,
                         "weights": plan.baseline.weights and plan.baseline.weights.record()},
            "defenses": {d.label: {"name": d.name, "params": d.params_json,
                                   "cache_key": d.cache_key, "code_hash": d.code_hash}
                         for d in plan.defenses},
            "attacks": {a.label: {"name": a.name, "params": a.params_json,
                                  "seeds": [plan.for_seed(s).attacks[i].seed
                                            for s in plan.seeds],
                                  "code_hash": a.code_hash}
                        for i, a in enumerate(plan.attacks)},
            "versions": _versions(), **git_state(), "device": str(self.device),
            "threads": torch.get_num_threads(),
            **(self.executor.run_record() if self.executor is not None else {}),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def _changed_cells(self, n_eval: int) -> set[tuple[str, str, float, int]]:
        """Stored cells of this plan whose settings changed (params, role, number of images):
        this run replaces them, so the earlier outputs are moved aside first."""
        defenses = {d.label: d for d in self.plan.defenses}
        attacks = {a.label: a for a in self.plan.attacks}
        changed = set()
        for row in self.table.rows:
            d, a = defenses.get(str(row["defense"])), attacks.get(str(row["attack"]))
            if d is None or a is None:
                continue
            n = min(n_eval, a.limit) if a.limit else n_eval
            if (str(row["defense_params"]), str(row["attack_params"]), str(row["role"]),
                    int(row["n"])) != (d.params_json, a.params_json, a.role, n):
                changed.add((d.label, a.label, canonical_eps(row["eps"]), int(row["seed"])))
        return changed

    def plan_cells(self) -> set[tuple[str, str, float, int]]:
        return {(d.label, a.label, eps, seed) for seed in self.plan.seeds
                for d in self.plan.defenses for a in self.plan.attacks for eps in a.eps}

    def _load_diagnostics(self) -> None:
        try:
            self.diagnostics = read_diagnostics(self.out_dir)
        except UserError:
            self.diagnostics = {}

    def _add_metrics(self, spec: DefenseSpec, seed: int, metrics: list[dict[str, Any]]) -> None:
        self.metric_rows = [r for r in self.metric_rows
                            if (r["defense"], r["seed"]) != (spec.label, seed)]
        # the label and seed are the runner's: a row cannot name another defense
        self.metric_rows += [{"method": m.get("method", spec.name), **m, "defense": spec.label,
                              "seed": seed} for m in metrics]
        self._write_metrics()

    def _write_metrics(self) -> None:
        """defense_metrics.csv holds this suite's defenses only (no file when none logs)."""
        if not self.metric_rows:
            if self.folder.owns(METRICS_FILE):
                self.folder.remove(METRICS_FILE)
            return
        frame = pd.DataFrame(self.metric_rows)
        cols = DEFENSE_METRIC_COLUMNS + [c for c in frame.columns
                                         if c not in DEFENSE_METRIC_COLUMNS]
        write_csv(self.folder, METRICS_FILE, frame[cols])


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


OUTPUT_NAMES = ("results.csv", OUTCOMES_FILE, "run.json", "run.log", DIAGNOSTICS_FILE,
                "defense_metrics.csv", "checks.csv", "leaderboard.csv", "leaderboard.md",
                "report.md", "report.html")
METRICS_FILE = "defense_metrics.csv"
#: the report's figure files (robench.report): curve_<attack>, worst_case, curves_by_defense
FIGURE_PREFIXES = ("curve_", "worst_case.", "curves_by_defense.")


def output_names(folder: Path) -> list[str]:
    """The names robench writes in a results folder that exist there now."""
    names = [n for n in OUTPUT_NAMES if os.path.lexists(folder / n)]
    if folder.is_dir():
        names += sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".svg")
                        and p.name.startswith(FIGURE_PREFIXES))
    return names


def consistent(row: dict[str, Any], clean: int, robust: int, fooled: int, n: int) -> bool:
    """Whether every number of a stored row is what its per-image outcomes give."""
    expected = {"clean_acc": clean / n, "robust_acc": robust / n,
                "attack_success_rate": fooled / clean if clean else float("nan")}
    expected.update(_interval("clean_acc", clean, n))
    expected.update(_interval("robust_acc", robust, n))
    for column, value in expected.items():
        stored = float(row[column])
        if math.isnan(value) != math.isnan(stored):
            return False
        if not math.isnan(value) and abs(stored - value) > 1e-9 * max(1.0, abs(value)):
            return False
    return True


def cell_verified(table: ResultTable, outcomes: OutcomeTable, expect: CellExpectation,
                  eps: float, image_ids: list[int]) -> bool:
    """Whether a stored cell is exactly this cell and every number in its row is what its
    per-image outcomes (for exactly these images) give: what resume trusts (``robench plan``
    asks the same)."""
    row = table.verified(expect, eps)
    if row is None:
        return False
    counts = outcomes.counts(expect.defense, expect.attack, eps, expect.seed, image_ids)
    return counts is not None and consistent(row, *counts, n=len(image_ids))


def reproduction_line(folder: Path, results: pd.DataFrame) -> str:
    """Whether this run reproduced the results.csv committed in git for this folder."""
    from robench.compare import compare_frames

    try:
        prefix = subprocess.run(["git", "rev-parse", "--show-prefix"], cwd=folder, timeout=5,
                                capture_output=True, text=True)
        shown = subprocess.run(["git", "show", f"HEAD:{prefix.stdout.strip()}results.csv"],
                               cwd=folder, timeout=10, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return "reproduction: no committed results to compare with (git not available)"
    if prefix.returncode or shown.returncode:
        return "reproduction: no committed results.csv for this folder in git"
    try:
        committed = pd.read_csv(io.StringIO(shown.stdout))
        cells = compare_frames(committed, results).cells
    except (ValueError, KeyError, pd.errors.ParserError):
        return "reproduction: the committed results.csv is not comparable"
    if cells.empty:
        return "reproduction: no cell in common with the committed results.csv"
    worst = cells["diff_pp"].abs()
    differ = int((worst > 1e-9).sum())
    if not differ:
        return f"reproduced: largest difference 0.0 pp over {len(cells)} cells"
    return (f"not reproduced: {differ} of {len(cells)} cells differ from the committed "
            f"results.csv (largest {worst.max():.2f} pp); see robench compare")


def check_data_sizes(plan: Plan, dataset: Dataset) -> None:
    """Sizes a suite asks for that the dataset does not have are a ``UserError`` naming the
    key (before anything is written; nothing is copied)."""
    data, source = plan.suite.data, plan.source
    if data.validation_size >= len(dataset.train):
        raise UserError(f"validation_size {data.validation_size} leaves no training images "
                        f"({dataset.name} has {len(dataset.train)})",
                        where=f"{source}: data.validation_size")
    if data.eval_limit is not None and data.eval_limit > len(dataset.test):
        raise UserError(f"eval_limit {data.eval_limit} is larger than the {len(dataset.test)} "
                        f"test images of {dataset.name}", where=f"{source}: data.eval_limit")
    n_eval = min(data.eval_limit or len(dataset.test), len(dataset.test))
    for i, attack in enumerate(plan.attacks):
        if attack.limit is not None and attack.limit > n_eval:
            raise UserError(f"limit {attack.limit} is larger than the {n_eval} evaluation "
                            "images", where=f"{source}: attacks[{i}].limit")


def data_splits(plan: Plan, dataset: Dataset) -> tuple[Split, Split, Split]:
    """(training, validation, evaluation) splits of the suite (``check_data_sizes`` first)."""
    data = plan.suite.data
    check_data_sizes(plan, dataset)
    train, validation = hold_out_validation(dataset.train, data.validation_size, data.split_seed)
    return train, validation, evaluation_split(dataset.test, data.eval_limit, data.split_seed)


@dataclass(frozen=True)
class RunData:
    """What a run keeps of its dataset: the fingerprint of the whole dataset, the three splits,
    and ``dataset`` with ``train`` = the training split (without the validation images) and
    ``test`` = the evaluation split. The full splits they were copied from are not kept: on
    MNIST that is 220 MB less for the whole run."""

    fingerprint: str
    dataset: Dataset
    splits: tuple[Split, Split, Split]

    @classmethod
    def of(cls, plan: Plan, dataset: Dataset) -> RunData:
        fingerprint = dataset.fingerprint  # first: hashing copies the training images once
        train, validation, evaluation = data_splits(plan, dataset)
        slim = Dataset(dataset.name, train, evaluation, dataset.num_classes)
        return cls(fingerprint, slim, (train, validation, evaluation))


def prepare(path: str | Path, opts: RunOptions, keep_loaded: bool = True
            ) -> tuple[Plan, Dataset, Path]:
    """The plan, the dataset and the results folder of a suite with the command line's options,
    every user mistake found before anything is written (``robench plan`` stops here).
    ``keep_loaded=False`` loads the dataset afresh instead of from (and into) the per-process
    cache, so a run can let go of the splits it does not use."""
    plan = resolve(apply_overrides(load_suite(path), opts, str(path)), str(path))
    # user mistakes fail before anything is written
    device_where = "--device" if opts.device else f"{path}: device"
    if opts.executor == "serial":  # a Ray run's device is checked against the cluster's
        resolve_device(plan.suite.device, where=device_where)
    if opts.out is not None and not opts.out.strip():
        raise UserError("empty folder name", where="--out")
    name, root = plan.suite.data.dataset, plan.suite.data.root
    dataset = (load_dataset(name, root) if keep_loaded
               else DATASETS.get(name)(resolve_data_root(root)))
    check_data_sizes(plan, dataset)  # before the folder is opened
    plan.baseline.check(dataset)  # checkpoint fits, model returns logits: before any write
    out_dir = Path(opts.out) if opts.out else Path("results") / plan.name
    return plan, dataset, out_dir


def check_out_dir(out_dir: Path) -> None:
    """Refuse, without writing anything, what ``robench run`` would refuse about its results
    folder (``robench plan``): a path that is not a folder or cannot be created, a damaged
    manifest, a folder a run holds, files robench did not write at its output names."""
    if not os.path.lexists(out_dir):
        parent = out_dir.absolute().parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"cannot create the results folder ({parent} is not a folder)",
                            where=str(out_dir.absolute()))
        return
    with OutputFolder(out_dir, create=False, inspect_only=True) as folder:
        folder.refuse_foreign(output_names(folder.path))


def run_suite(path: str | Path, opts: RunOptions | None = None) -> tuple[Path, pd.DataFrame]:
    """Load, resolve and run a suite file. Returns the results folder and the leaderboard."""
    from robench.executors import check_options, open_executor

    opts = opts or RunOptions()
    check_options(opts.executor, opts.jobs, opts.address)
    plan, dataset, out_dir = prepare(path, opts, keep_loaded=False)
    data = RunData.of(plan, dataset)
    del dataset  # the run keeps only its splits (RunData)
    release_freed_memory()
    check_out_dir(out_dir)  # before a Ray cluster takes seconds to start (checked again below)
    device_where = "--device" if opts.device else f"{path}: device"
    with open_executor(opts.executor, opts.jobs, opts.address, opts.quiet, plan.suite.device,
                       device_where) as (device, executor), \
            OutputFolder.open(out_dir) as folder:
        folder.refuse_foreign(output_names(folder.path))
        runner = Runner(plan, folder, opts, device=device, executor=executor)
        try:
            board = runner.run(data)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {runner.cells_done} cells finished in this run "
                              f"and every earlier verified cell are kept in {out_dir}; run "
                              "the same command again to resume") from None
    return out_dir, board
