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
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import robench
from robench.completeness import planned_record
from robench.eps import canonical_eps, eps_text
from robench.errors import UserError, interrupts_deferred
from robench.estimate import baseline_work, defense_work, expected_attack_work
from robench.evaluation import AttackOutcome
from robench.finalize import read_diagnostics
from robench.json_input import loads
from robench.outcomes import OUTCOMES_FILE, Cell, OutcomeTable, cell_grid
from robench.outdir import OutputFolder
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan, restrictions
from robench.progress import Reporter
from robench.results import (
    DEFENSE_METRIC_COLUMNS,
    CellExpectation,
    ResultRow,
    ResultTable,
    write_csv,
    write_json,
)
from robench.resume import cell_verified, interval_columns, stored_row, unverified_reason
from robench.run_files import (
    DIAGNOSTICS_FILE,
    METRICS_FILE,
    derived_names,
    is_model_name,
    output_names,
)
from robench.shipped import ModelFile, merge_model_files, write_model_file
from robench.tasks import ModelFacts, Target, seed_tag, serial_order
from robench.weights import suite_record


def plan_cells(plan: Plan) -> set[Cell]:
    """Every cell of ``plan``, over all its seeds."""
    return cell_grid([d.label for d in plan.defenses], [(a.label, a.eps) for a in plan.attacks],
                     plan.seeds, restrictions(plan))


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
        #: this run's model files by name (robench.shipped): written with its first write,
        #: and again after earlier outputs are set aside
        self.models: dict[str, ModelFile] = {}
        # keeping runs apart: stored rows not checked yet wait here once the earlier outputs
        # are set aside (never written; copied back to the tables above when they verify)
        self.reserve = ResultTable(folder)
        self.reserve_outcomes = OutcomeTable(folder)
        self.stored = 0                   # rows the folder held when the run started
        self.verified: set[Cell] = set()  # stored cells this run verified (kept)
        self.new: set[Cell] = set()       # cells this run computed
        self.failures = 0                 # stored cells that did not verify
        self.aside: Path | None = None    # where the earlier outputs went
        self.writing = False              # whether this run has changed the folder yet
        self.record: dict[str, Any] = {}  # run.json, written with the first change
        self.earlier_run: dict[str, Any] | None = None
        self.defended: set[str] = set()   # defenses whose diagnostics this run measured
        self.metrics_seen: set[tuple[str, int]] = set()
        self.trained_baselines: set[int] = set()
        self.defended_now: set[tuple[str, int]] = set()

    # -- before the executor --------------------------------------------------------------
    def start(self, n_eval: int, environment: dict[str, Any]) -> None:
        """Load what resume may reuse, move earlier outputs aside when this run will drop some
        of their cells, and prepare run.json (``environment``: versions, device, executor).

        Nothing is written yet: the folder changes first when this run writes a cell (or
        finishes), so a run stopped before that leaves it as it was (its log aside)."""
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
            self.metric_rows = self.stored_metrics()
            self.earlier_run = self.stored_run()
        self.stored = len(self.table.rows)
        stale = (self.table.keys() - plan_cells(self.plan)) | self.changed_cells(n_eval) \
            if not self.force else {"force"}
        if stale:
            what = "all of them" if self.force else "some of their cells"
            self.set_aside_earlier(f"this run replaces {what}")
        plan = self.plan
        per_seed = [plan.for_seed(s) for s in plan.seeds]  # each resolves the suite again
        self.record = {
            "suite": suite_record(plan.suite, plan.baseline.weights, self.folder.path),
            "source": plan.source, "baseline": {
                "cache_key": plan.baseline.cache_key, "code_hash": plan.baseline.code_hash,
                "weights": plan.baseline.weights and plan.baseline.weights.record()},
            "defenses": {d.label: {"name": d.name, "params": d.params_json,
                                   "cache_key": d.cache_key, "code_hash": d.code_hash}
                         for d in plan.defenses},
            "attacks": {a.label: {"name": a.name, "params": a.params_json,
                                  "seeds": [p.attacks[i].seed for p in per_seed],
                                  "code_hash": a.code_hash}
                        for i, a in enumerate(plan.attacks)},
            "planned": planned_record(plan),  # plan_cells, readable without the plugins
            **environment,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

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

    # -- keeping runs apart -----------------------------------------------------------------
    def set_aside_earlier(self, why: str, prefix: str = "") -> None:
        """Move the folder's outputs, as they are, to ``previous-<time>/``; the folder then
        holds only what this run verified or computed (written again here when this run has
        begun writing), and the stored rows not checked yet wait in memory: each is copied
        back once it verifies (``missing_cells``)."""
        present = [n for n in output_names(self.folder.path) if self.folder.owns(n)]
        if ResultTable.NAME not in present:
            self.drop_unverified()
            return
        with interrupts_deferred():  # the folder is never half moved, half written again
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            self.aside = self.folder.set_aside(present, stamp)
            self.drop_unverified()
            if self.writing:
                self.write_bookkeeping()
                self.table.flush()
                self.outcomes.flush()
        if self.aside is not None:
            # logged after the move: the line starts the folder's new run.log
            self.reporter.info(f"{prefix}earlier outputs moved to {self.aside} ({why})")

    def drop_unverified(self) -> None:
        """Keep in the tables only the cells verified or computed by this run; the other stored
        rows wait in the reserve, and what described the earlier models goes."""
        keep = self.verified | self.new
        waiting = [r for r in self.table.rows if row_cell(r) not in keep]
        self.reserve.rows += waiting
        self.table.rows = [r for r in self.table.rows if row_cell(r) in keep]
        self.outcomes.move_cells(self.reserve_outcomes,
                                 self.outcomes.cells() - {row_cell(r) for r in self.table.rows})
        self.diagnostics = {k: v for k, v in self.diagnostics.items() if k in self.defended}
        self.metric_rows = [r for r in self.metric_rows
                            if (str(r["defense"]), int(r["seed"])) in self.metrics_seen]

    def begin_writing(self) -> None:
        """Before this run's first write: the earlier leaderboard, checks, figures and report
        describe the folder as it was, so they go (``finish`` renders them again); run.json,
        the diagnostics and the defense metrics become this run's."""
        if self.writing:
            return
        with interrupts_deferred():
            for name in derived_names(self.folder.path):
                if self.folder.owns(name):
                    self.folder.remove(name)
            self.writing = True
            self.write_bookkeeping()

    def write_bookkeeping(self) -> None:
        """run.json, diagnostics.json, defense_metrics.csv and the model files as this run
        holds them."""
        write_json(self.folder, "run.json", self.record)
        if self.diagnostics or self.folder.owns(DIAGNOSTICS_FILE):
            write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)
        self.write_metrics()
        for file in self.models.values():  # a file robench already wrote there is kept
            write_model_file(self.folder, file)

    def stored_metrics(self) -> list[dict[str, Any]]:
        """The folder's defense_metrics.csv rows (none when absent, not robench's, or
        unreadable): kept for the defenses this run does not apply again."""
        if not self.folder.owns(METRICS_FILE):
            return []
        try:
            frame = pd.read_csv(self.folder.path / METRICS_FILE)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            return []
        if not set(DEFENSE_METRIC_COLUMNS) <= set(frame.columns):
            return []
        return [{k: v for k, v in r.items() if not (k not in DEFENSE_METRIC_COLUMNS
                                                    and pd.isna(v))}
                for r in frame.to_dict("records")]

    def stored_run(self) -> dict[str, Any] | None:
        """The folder's run.json (None when absent, not robench's or unreadable): a resumed
        run adds its wall time to the earlier runs' (``record_provenance``)."""
        if not self.folder.owns("run.json"):
            return None
        try:
            record = loads((self.folder.path / "run.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def failed(self, target: Target, attack: AttackSpec, reason: str) -> None:
        """A stored row of this plan does not verify: the earlier outputs go aside before this
        run writes its cell, with one line saying why."""
        self.failures += 1
        if self.aside is not None or not self.table.rows:
            return
        defense, seed = target.defense.label, target.seed
        if reason == "model weights differ":
            if seed in self.trained_baselines:
                reason += ": the baseline was trained again (it was not in the model cache)"
            elif (defense, seed) in self.defended_now:
                reason += f": [{defense}] was defended again (it was not in the model cache)"
        checked = len(self.verified) + self.failures
        self.set_aside_earlier(
            "before this run's first new cell; stored rows that verify later are copied back",
            f"resuming: {len(self.verified)} of the {checked} stored rows checked so far verify "
            f"([{defense}] {attack.label}{seed_tag(self.plan.seeds, seed)}: {reason}); ")

    def kept_text(self) -> str:
        """What the folder holds now, for the line an interrupted run ends with."""
        earlier = len(self.table.rows) - len(self.new & self.table.keys())
        unchecked = earlier - len(self.verified)
        text = (f"{self.cells_done} cells computed in this run and {earlier} earlier cells "
                f"({len(self.verified)} verified by this run, {unchecked} not checked yet) are "
                f"kept in {self.folder.path}")
        if self.aside is not None:
            text += f"; the earlier outputs ({self.stored} rows) are in {self.aside}"
        if self.writing:
            text += "; the leaderboard and report are written when a run finishes"
        return text

    # -- what the executor reports ----------------------------------------------------------
    def count_work(self, units: float, cached: bool) -> None:
        """The overall progress line: a stage done (``advance``) or not needed (``skip``)."""
        if cached:
            self.reporter.skip(units)
        else:
            self.reporter.advance(units)

    def on_baseline(self, spec: BaselineSpec, n_train: int, cached: bool) -> None:
        """A baseline is ready (trained now when not ``cached``)."""
        if not cached:
            self.trained_baselines.add(spec.seed)
        self.count_work(baseline_work(spec, n_train).units, cached)

    def on_defense(self, seed: int, spec: DefenseSpec, n_train: int, n_validation: int,
                   cached: bool, metrics: list[dict[str, Any]]) -> None:
        """A defense was applied (or loaded, when ``cached``) and logged ``metrics``."""
        self.count_work(defense_work(spec, self.plan.suite.train, n_train,
                                     n_validation).units, cached)
        if not cached:
            self.defended_now.add((spec.label, seed))
        self.add_metrics(spec, seed, metrics)

    def on_defended(self, seed: int, spec: DefenseSpec, facts: ModelFacts) -> None:
        """Log a defended model's clean accuracy; store the first seed's diagnostics."""
        self.reporter.info(f"[{spec.label}]{seed_tag(self.plan.seeds, seed)} clean accuracy "
                           f"{facts.clean_acc:.4f}")
        if facts.diagnostics is not None:
            self.defended.add(spec.label)
            if self.diagnostics.get(spec.label) != facts.diagnostics:
                self.diagnostics[spec.label] = facts.diagnostics
                if self.writing:
                    write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)

    def on_model(self, file: ModelFile | None) -> None:
        """Ship a model (a baseline or a cacheable defended model) into the results folder,
        unless robench's file of it is already there; None: nothing to ship."""
        if file is not None:
            known = self.models.get(file.name)  # the same model under another label
            file = file if known is None else merge_model_files(known, file)
            self.models[file.name] = file
            if self.writing:  # else with the run's first write (``begin_writing``)
                write_model_file(self.folder, file)

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
                   if not self.verify(target, attack, expect, eps, image_ids)]
        self.reporter.skip(expected_attack_work(attack, n, attack.eps, defense).units
                           - expected_attack_work(attack, n, missing, defense).units)
        if not missing:
            self.reporter.info(f"[{defense.label}] {attack.label}"
                               f"{seed_tag(self.plan.seeds, seed)}: already in results.csv, "
                               "skipped")
        return missing

    def verify(self, target: Target, attack: AttackSpec, expect: CellExpectation, eps: float,
               image_ids: list[int]) -> bool:
        """Whether the stored cell verifies, copied back from the reserve when it waits there; a
        stored row that does not verify sets the earlier outputs aside (``failed``)."""
        cell = (expect.defense, expect.attack, canonical_eps(eps), expect.seed)
        if cell_verified(self.table, self.outcomes, expect, eps, image_ids):
            self.verified.add(cell)
            return True
        if cell_verified(self.reserve, self.reserve_outcomes, expect, eps, image_ids):
            with interrupts_deferred():  # the row and its outcomes go back together
                self.begin_writing()
                row = stored_row(self.reserve, expect, eps)
                assert row is not None  # cell_verified found it
                self.reserve.rows = [r for r in self.reserve.rows if r is not row]
                self.table.rows.append(row)
                self.reserve_outcomes.move_cells(self.outcomes, [cell])
                self.outcomes.flush()
                self.table.flush()
                self.verified.add(cell)
            return True
        reason = unverified_reason(self.table, self.outcomes, expect, eps, image_ids)
        if reason is not None:
            self.failed(target, attack, reason)
        return False

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
            self.begin_writing()
            self.new.update((defense.label, attack.label, canonical_eps(o.eps), seed)
                            for o in outcomes)
            self.outcomes.replace_cells(defense.label, attack.label, seed, image_ids, outcomes)
            self.table.replace_cells(rows)
            self.cells_done += len(rows)
        eps = [o.eps for o in outcomes]
        self.reporter.advance(expected_attack_work(attack, len(image_ids), eps, defense).units)
        curve = ", ".join(f"{eps_text(o.eps)}: {o.robust_acc:.3f}" for o in outcomes)
        self.reporter.info(f"[{defense.label}] {attack.label}{seed_tag(self.plan.seeds, seed)} "
                           f"robust accuracy {{{curve}}}")

    # -- after the executor -----------------------------------------------------------------
    def finish(self, planned: set[Cell]) -> None:
        """Keep only the plan's cells, in the suite's order, and write the diagnostics and
        defense metrics of this suite's defenses."""
        self.begin_writing()
        self.table.keep_only(planned)
        self.outcomes.keep_only(planned)
        # the suite's order: a resume appends the cells it re-ran, Ray finishes them in any order
        self.order_like_serial()
        self.diagnostics = {k: v for k, v in self.diagnostics.items()
                            if k in {d.label for d in self.plan.defenses}}
        write_json(self.folder, DIAGNOSTICS_FILE, self.diagnostics)
        ours = {(d.label, seed) for d in self.plan.defenses for seed in self.plan.seeds}
        self.metric_rows = [r for r in self.metric_rows
                            if (str(r["defense"]), int(r["seed"])) in ours]
        self.write_metrics()
        # a complete run ships exactly its own models: a file of a model it no longer has
        # (another code or defense earlier) would name weights no row was computed on
        for name in output_names(self.folder.path):
            if is_model_name(name) and name not in self.models and self.folder.owns(name):
                self.folder.remove(name)
        if self.stored:
            self.reporter.info(f"resumed: {len(self.verified)} of the {self.stored} stored rows "
                               f"verified and kept, {len(self.new)} cells computed")

    def record_provenance(self, wall_seconds: float, reproduction: str) -> None:
        """Add the run's wall time and reproduction verdict to run.json (where the report reads
        them: run.log is not committed), with the earlier runs' into this folder when it
        resumed one."""
        earlier = self.earlier_run if self.aside is None else None
        runs, total = 1, wall_seconds
        if earlier is not None and isinstance(earlier.get("wall_seconds"), (int, float)):
            runs += int(earlier.get("runs_into_folder", 1))
            total += float(earlier.get("wall_seconds_total", earlier["wall_seconds"]))
        self.record.update(finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           wall_seconds=round(wall_seconds, 1), runs_into_folder=runs,
                           wall_seconds_total=round(total, 1), reproduction=reproduction)
        write_json(self.folder, "run.json", self.record)

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
                for a in seeded.attacks_on(d.label):
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
        self.metrics_seen.add((spec.label, seed))
        if self.writing:
            self.write_metrics()

    def write_metrics(self) -> None:
        """defense_metrics.csv holds this suite's defenses only (no file when none logs)."""
        if not self.metric_rows:  # only this run's view: the stored rows were loaded at start
            if self.folder.owns(METRICS_FILE):
                self.folder.remove(METRICS_FILE)
            return
        frame = pd.DataFrame(self.metric_rows)
        cols = DEFENSE_METRIC_COLUMNS + [c for c in frame.columns
                                         if c not in DEFENSE_METRIC_COLUMNS]
        write_csv(self.folder, METRICS_FILE, frame[cols])


def row_cell(row: dict[str, Any]) -> Cell:
    """The cell of a results row."""
    return (str(row["defense"]), str(row["attack"]), canonical_eps(row["eps"]), int(row["seed"]))


__all__ = ["Cell", "RunRecorder", "plan_cells", "row_cell"]
