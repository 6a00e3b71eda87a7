"""The recorder of a run: everything ``robench run`` writes while its executor computes.

An executor (``robench.executors``) runs the tasks and reports what finished; the
``RunRecorder`` only records: results.csv and outcomes.parquet (atomically, per cell), the
defended models' diagnostics, defense_metrics.csv, run.json, the overall progress line, and
the resume check that tells an executor which cells still need computing, and the shipped
model files (``robench.shipped``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import torch

import robench
from robench.eps import canonical_eps, eps_text
from robench.errors import UserError, interrupts_deferred
from robench.estimate import attack_work, baseline_work, defense_work
from robench.evaluation import AttackOutcome
from robench.finalize import read_diagnostics
from robench.outcomes import OUTCOMES_FILE, Cell, OutcomeTable
from robench.outdir import OutputFolder
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.progress import Reporter
from robench.results import (
    DEFENSE_METRIC_COLUMNS,
    CellExpectation,
    ResultRow,
    ResultTable,
    write_csv,
    write_json,
)
from robench.resume import cell_verified, interval_columns
from robench.run_files import DIAGNOSTICS_FILE, METRICS_FILE, is_model_name, output_names
from robench.shipped import ModelFile, write_model_file
from robench.tasks import ModelFacts, Target, seed_tag, serial_order


def plan_cells(plan: Plan) -> set[Cell]:
    """Every cell of ``plan``, over all its seeds."""
    return {(d.label, a.label, eps, seed) for seed in plan.seeds
            for d in plan.defenses for a in plan.attacks for eps in a.eps}


class RunRecorder:
    """Records one run of ``plan`` on the dataset with fingerprint ``data_hash`` into
    ``folder``; the executor reports to it (``on_baseline``, ``on_defense``, ``on_defended``,
    ``missing_cells``, ``on_cell_done``)."""

    def __init__(self, plan: Plan, folder: OutputFolder, reporter: Reporter, data_hash: str,
                 force: bool = False) -> None:
        self.plan = plan
        self.folder = folder
        self.reporter = reporter
        self.data_hash = data_hash
        self.force = force
        self.table = ResultTable(folder)
        self.outcomes = OutcomeTable(folder)
        self.cells_done = 0
        self.metric_rows: list[dict[str, Any]] = []
        self.diagnostics: dict[str, dict[str, float]] = {}
        #: the shipped model files of this run's models (robench.shipped)
        self.shipped: set[str] = set()

    # -- before the executor --------------------------------------------------------------
    def start(self, n_eval: int, environment: dict[str, Any]) -> None:
        """Load what resume may reuse, move earlier outputs aside when this run will drop some
        of their cells, and write run.json (``environment``: versions, device, executor)."""
        if not self.force:
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
            try:
                self.diagnostics = read_diagnostics(self.folder.path)
            except UserError:
                self.diagnostics = {}
        stale = (self.table.keys() - plan_cells(self.plan)) | self.changed_cells(n_eval) \
            if not self.force else {"force"}
        present = [n for n in output_names(self.folder.path) if self.folder.owns(n)]
        if stale and present and ResultTable.NAME in present:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            aside = self.folder.set_aside(present, stamp)
            if aside is not None:
                what = "all of them" if self.force else "some of their cells"
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
            **environment,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def changed_cells(self, n_eval: int) -> set[Cell]:
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

    # -- what the executor reports ----------------------------------------------------------
    def count_work(self, units: float, cached: bool) -> None:
        """The overall progress line: a stage done (``advance``) or not needed (``skip``)."""
        if cached:
            self.reporter.skip(units)
        else:
            self.reporter.advance(units)

    def on_baseline(self, spec: BaselineSpec, n_train: int, cached: bool) -> None:
        """A baseline is ready (trained now when not ``cached``)."""
        self.count_work(baseline_work(spec, n_train).units, cached)

    def on_defense(self, seed: int, spec: DefenseSpec, n_train: int, n_validation: int,
                   cached: bool, metrics: list[dict[str, Any]]) -> None:
        """A defense was applied (or loaded, when ``cached``) and logged ``metrics``."""
        self.count_work(defense_work(spec, self.plan.suite.train, n_train,
                                     n_validation).units, cached)
        self.add_metrics(spec, seed, metrics)

    def on_defended(self, seed: int, spec: DefenseSpec, facts: ModelFacts) -> None:
        """Log a defended model's clean accuracy; store the first seed's diagnostics."""
        self.reporter.info(f"[{spec.label}]{seed_tag(self.plan.seeds, seed)} clean accuracy "
                           f"{facts.clean_acc:.4f}")
        if facts.diagnostics is not None:
            self.diagnostics[spec.label] = facts.diagnostics
            write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)

    def on_model(self, file: ModelFile | None) -> None:
        """Ship a model (a baseline or a cacheable defended model) into the results folder,
        unless robench's file of it is already there; None: nothing to ship."""
        if file is not None:
            self.shipped.add(write_model_file(self.folder, file))

    def missing_cells(self, target: Target, attack: AttackSpec,
                      image_ids: list[int]) -> list[float]:
        """The eps of ``attack`` on ``target`` (attacking these images) whose cells are not yet
        verified in the results folder (logged when there is none)."""
        defense, seed, n = target.defense, target.seed, len(image_ids)
        expect = CellExpectation(
            defense=defense.label, attack=attack.label, seed=seed, data_hash=self.data_hash,
            defense_params=defense.params_json, attack_params=attack.params_json,
            role=attack.role, n=n, model_hash=target.model_hash, code_hash=attack.code_hash)
        # only the cells not yet verified: random starts are drawn per (eps, image), so a cell's
        # numbers do not depend on which other eps are attacked with it
        missing = [eps for eps in attack.eps
                   if not cell_verified(self.table, self.outcomes, expect, eps, image_ids)]
        self.reporter.skip(attack_work(attack, n, attack.eps).units
                           - attack_work(attack, n, missing).units)
        if not missing:
            self.reporter.info(f"[{defense.label}] {attack.label}"
                               f"{seed_tag(self.plan.seeds, seed)}: already in results.csv, "
                               "skipped")
        return missing

    def on_cell_done(self, target: Target, attack: AttackSpec, image_ids: list[int],
                     outcomes: Sequence[AttackOutcome]) -> None:
        """Write the rows and per-image outcomes of finished cells (atomic, per cell)."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        suite, defense, seed = self.plan.suite, target.defense, target.seed
        outcomes = list(outcomes)
        rows = [ResultRow(
            suite=suite.name, dataset=suite.data.dataset, data_hash=self.data_hash,
            model=suite.model.name,
            defense=defense.label, defense_name=defense.name,
            defense_params=defense.params_json, attack=attack.label, attack_name=attack.name,
            attack_params=attack.params_json, backend=attack.backend, eps=o.eps,
            seed=seed, n=o.n, clean_acc=o.clean_acc,
            **interval_columns("clean_acc", int(o.clean_ok.sum()), o.n),
            robust_acc=o.robust_acc,
            **interval_columns("robust_acc", int(o.robust.sum()), o.n),
            attack_success_rate=o.attack_success_rate, attack_seconds=o.seconds,
            defense_seconds=target.defense_seconds, robench_version=robench.__version__,
            torch_version=torch.__version__, created_at=now, role=attack.role,
            model_hash=target.model_hash, code_hash=attack.code_hash) for o in outcomes]
        with interrupts_deferred():  # the files and the count the interrupt line reports
            self.outcomes.replace_cells(defense.label, attack.label, seed, image_ids, outcomes)
            self.table.replace_cells(rows)
            self.cells_done += len(rows)
        self.reporter.advance(attack_work(attack, len(image_ids), [o.eps for o in outcomes]).units)
        curve = ", ".join(f"{eps_text(o.eps)}: {o.robust_acc:.3f}" for o in outcomes)
        self.reporter.info(f"[{defense.label}] {attack.label}{seed_tag(self.plan.seeds, seed)} "
                           f"robust accuracy {{{curve}}}")

    # -- after the executor -----------------------------------------------------------------
    def finish(self, planned: set[Cell]) -> None:
        """Keep only the plan's cells, in the suite's order, and write the diagnostics and
        defense metrics of this suite's defenses."""
        self.table.keep_only(planned)
        self.outcomes.keep_only(planned)
        # the suite's order: a resume appends the cells it re-ran, Ray finishes them in any order
        self.order_like_serial()
        self.diagnostics = {k: v for k, v in self.diagnostics.items()
                            if k in {d.label for d in self.plan.defenses}}
        write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)
        self.write_metrics()
        # a complete run ships exactly its own models: a file of a model it no longer has
        # (another code or defense earlier) would name weights no row was computed on
        for name in output_names(self.folder.path):
            if is_model_name(name) and name not in self.shipped and self.folder.owns(name):
                self.folder.remove(name)

    def order_like_serial(self) -> None:
        """Rows, outcomes and defense metrics in the order a fresh serial run writes them
        (cells finish in any order on Ray; a resume appends the cells it re-ran); a file is
        rewritten only when its order changes."""
        plan = self.plan
        rank: dict[Cell, int] = {}
        metric_rank: dict[tuple[str, int], int] = {}
        for seed in plan.seeds:
            seeded = plan.for_seed(seed)
            for d in seeded.defenses:
                for a in seeded.attacks:
                    for eps in a.eps:
                        rank.setdefault((d.label, a.label, canonical_eps(eps), seed), len(rank))
            for d in serial_order(seeded):
                metric_rank.setdefault((d.label, seed), len(metric_rank))
        last = len(rank)

        def cell(row: dict[str, Any]) -> int:
            key = (str(row["defense"]), str(row["attack"]), canonical_eps(row["eps"]),
                   int(row["seed"]))
            return rank.get(key, last)

        rows = sorted(self.table.rows, key=cell)
        if rows != self.table.rows:
            self.table.rows = rows
            self.table.flush()
        self.outcomes.reorder(lambda key: rank.get(key, last))
        # written by ``finish`` after this, as on every run
        self.metric_rows = sorted(
            self.metric_rows,
            key=lambda r: metric_rank.get((r["defense"], r["seed"]), len(metric_rank)))

    # -- defense_metrics.csv ----------------------------------------------------------------
    def add_metrics(self, spec: DefenseSpec, seed: int, metrics: list[dict[str, Any]]) -> None:
        """A defense's metric rows of ``seed``, replacing any earlier ones of it."""
        self.metric_rows = [r for r in self.metric_rows
                            if (r["defense"], r["seed"]) != (spec.label, seed)]
        # the label and seed are the recorder's: a row cannot name another defense
        self.metric_rows += [{"method": m.get("method", spec.name), **m, "defense": spec.label,
                              "seed": seed} for m in metrics]
        self.write_metrics()

    def write_metrics(self) -> None:
        """defense_metrics.csv holds this suite's defenses only (no file when none logs)."""
        if not self.metric_rows:
            if self.folder.owns(METRICS_FILE):
                self.folder.remove(METRICS_FILE)
            return
        frame = pd.DataFrame(self.metric_rows)
        cols = DEFENSE_METRIC_COLUMNS + [c for c in frame.columns
                                         if c not in DEFENSE_METRIC_COLUMNS]
        write_csv(self.folder, METRICS_FILE, frame[cols])


__all__ = ["Cell", "RunRecorder", "plan_cells"]
