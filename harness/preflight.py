"""``robench plan``: what ``robench run`` would do with a suite, before it does any of it.

The suite is resolved exactly as ``run`` resolves it (``robench.rundata.prepare``: the same
options, the same one-line errors). Then, without writing anything and without training:

- the baseline and every defended model are looked up in the model cache under the keys a
  run uses (``robench.cache.CacheKey.with_data``); a defense that costs nothing
  (``Defense.cost`` is zero: ``none``, input transformations) is rebuilt from a cached
  baseline;
- every cell (defense x attack x eps x seed) is **done** when its stored row passes the check
  resume applies (``robench.resume.cell_verified``) against the model it would attack; a
  stored row whose model is not cached cannot be checked without training it, so it is shown
  as *unverified* and counted as work;
- with ``--models-from``, the baseline and the cacheable defended models are those shipped
  in that folder (``robench.models_from``), loaded and checked as a run loads them;
- the remaining work of every stage is priced by ``robench.estimate`` (a calibration of the
  suite's model on this machine, unless ``calibrate`` is False).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from robench.cache import ModelCache
from robench.completeness import RUN_RECORD
from robench.data import Dataset, Split
from robench.defenses import DefenseContext
from robench.eps import eps_text
from robench.estimate import (
    Calibration,
    WorkRange,
    attack_work_range,
    baseline_work,
    calibrate,
    defense_work,
    duration_text,
    images_attacked,
    passes_text,
    range_text,
    states_passes,
)
from robench.fresh_clone import complete_run
from robench.models import model_hash as fingerprint
from robench.models_from import ModelSource, open_source
from robench.outcomes import OutcomeTable
from robench.outdir import RunFiles
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.results import CellExpectation, ResultTable
from robench.resume import cell_verified
from robench.run_files import OUTCOMES_FILE, RESULTS_FILE
from robench.rundata import (
    RunData,
    RunOptions,
    check_out_dir,
    data_splits,
    prepare,
    resolve_device,
)
from robench.shipped import load_shipped
from robench.work import NO_WORK, Work

#: progress and estimates only: no result depends on this module (see robench.codehash)
AFFECTS_RESULTS = False

CellState = Literal["done", "to do", "unverified"]
ModelState = Literal["cached", "checkpoint", "to train", "free", "to run", "shipped"]


@dataclass
class AttackStatus:
    spec: AttackSpec
    images: int
    cells: list[tuple[float, CellState]]
    work: Work                       # for the cells not done, typical (``robench.estimate``)
    work_range: WorkRange            # lowest, typical, highest
    #: the classifier passes per image, stated where they are votes or samples (a randomized
    #: defense, the smoothing verifier), else None
    passes: str | None = None

    def eps_in(self, state: CellState) -> list[float]:
        return [eps for eps, s in self.cells if s == state]


@dataclass
class DefenseStatus:
    spec: DefenseSpec
    model: ModelState
    work: Work                       # NO_WORK when cached or free
    attacks: list[AttackStatus] = field(default_factory=list)


@dataclass
class SeedStatus:
    seed: int
    baseline: BaselineSpec
    baseline_model: ModelState
    baseline_work: Work
    defenses: list[DefenseStatus] = field(default_factory=list)


@dataclass
class Preflight:
    """Everything ``robench plan`` prints."""

    plan: Plan
    out_dir: Path
    sizes: tuple[int, int, int]      # training, validation, evaluation images
    stored_rows: int
    notes: list[str]
    seeds: list[SeedStatus]
    calibration: Calibration | None

    def cells(self, state: CellState | None = None) -> int:
        return sum(len(a.cells if state is None else a.eps_in(state))
                   for s in self.seeds for d in s.defenses for a in d.attacks)

    def stage_work(self) -> dict[str, Work]:
        """Remaining work by stage kind."""
        return {
            "baseline training": sum((s.baseline_work for s in self.seeds), NO_WORK),
            "defenses": sum((d.work for s in self.seeds for d in s.defenses), NO_WORK),
            "attacks": sum((a.work for s in self.seeds for d in s.defenses for a in d.attacks),
                           NO_WORK),
        }

    def stage_range(self) -> dict[str, WorkRange]:
        """Remaining work by stage kind, lowest to highest (only attacks have a range)."""
        stages = {stage: WorkRange.exact(work) for stage, work in self.stage_work().items()}
        stages["attacks"] = sum((a.work_range for s in self.seeds for d in s.defenses
                                 for a in d.attacks), WorkRange.exact(NO_WORK))
        return stages

    def seconds(self, work: Work) -> float | None:
        return None if self.calibration is None else self.calibration.seconds(work)


class _ReadOnlyFolder:
    """What ``ResultTable``/``OutcomeTable`` read through (their path): plan opens no
    ``OutputFolder``, which would lock and probe the folder, i.e. write into it."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()


def preflight(path: str | Path, opts: RunOptions, calibrated: bool = True) -> Preflight:
    """The plan of ``robench run path`` with these options, and where it stands."""
    plan, dataset, out_dir = prepare(path, opts)
    source = (open_source(opts.models_from, plan, dataset.num_classes)
              if opts.models_from is not None else None)
    check_out_dir(out_dir)  # what run would refuse, plan refuses (writing nothing)
    train, validation, evaluation = data_splits(plan, dataset)
    table, outcomes, notes = _stored(out_dir, opts.force)
    cache = ModelCache(enabled=opts.use_cache and not opts.force)
    checker = _Checker(plan, dataset, cache, table, outcomes, (train, validation, evaluation),
                       source)
    seeds = [checker.seed(seed) for seed in plan.seeds]
    if not opts.force and opts.models_from is None and (out_dir / RUN_RECORD).is_file() \
            and complete_run(plan, RunData.of(plan, dataset), out_dir):
        # what `robench run` does there (robench.runner.run_or_check), not what the table shows
        notes.append(f"{out_dir} holds a complete run of this suite: a plain `robench run` "
                     "computes nothing and checks it instead (with its shipped models, "
                     "`robench verify`'s re-attack of a sample of every cell); the table below "
                     "is what a run resuming the folder (`--update`) would check")
    calibration = None
    if calibrated:
        calibration = calibrate(plan, train, evaluation, dataset.num_classes,
                                resolve_device(plan.suite.device))
    return Preflight(plan, out_dir, (len(train), len(validation), len(evaluation)),
                     len(table.rows), notes, seeds, calibration)


def _stored(out_dir: Path, force: bool) -> tuple[ResultTable, OutcomeTable, list[str]]:
    """The results and outcomes resume would read (none with ``--force``)."""
    folder = _ReadOnlyFolder(out_dir)
    table, outcomes = ResultTable(folder), OutcomeTable(folder)  # type: ignore[arg-type]
    notes: list[str] = []
    if force:
        return table, outcomes, ["--force: every stored cell and cached model is ignored"]
    # read as the manifest vouches for them (check_out_dir refused files robench did not
    # write), from the bytes checked, never blocking on a FIFO put there since
    files = RunFiles.of(out_dir) if out_dir.is_dir() else None
    stored = {name: files.read(name, may_be_absent=True) if files else None
              for name in (RESULTS_FILE, OUTCOMES_FILE)}
    unreadable = table.load_existing(stored[RESULTS_FILE]) if stored[RESULTS_FILE] is not None \
        else 0
    if unreadable:
        what = "the file" if unreadable < 0 else f"{unreadable} rows"
        notes.append(f"{ResultTable.NAME}: {what} could not be read as robench results; "
                     "not trusted")
    if stored[OUTCOMES_FILE] is not None and not outcomes.load_existing(stored[OUTCOMES_FILE]):
        notes.append("outcomes.parquet could not be read; its cells count as to do")
    return table, outcomes, notes


class _Checker:
    """Looks models up in the cache and checks stored cells, one seed at a time."""

    def __init__(self, plan: Plan, dataset: Dataset, cache: ModelCache, table: ResultTable,
                 outcomes: OutcomeTable, splits: tuple[Split, Split, Split],
                 source: ModelSource | None = None) -> None:
        self.plan, self.dataset, self.cache = plan, dataset, cache
        self.source = source
        self.table, self.outcomes = table, outcomes
        self.train, self.validation, self.evaluation = splits
        self.stored = table.keys()

    def seed(self, seed: int) -> SeedStatus:
        seeded = self.plan.for_seed(seed)
        baseline, state = self._baseline(seeded.baseline)
        status = SeedStatus(seed, seeded.baseline, state,
                            NO_WORK if state in ("cached", "checkpoint", "shipped") else
                            baseline_work(seeded.baseline, len(self.train)))
        for spec in seeded.defenses:
            model, model_state = self._defense(spec, baseline, seed)
            work = NO_WORK if model_state in ("cached", "free", "shipped") else defense_work(
                spec, self.plan.suite.train, len(self.train), len(self.validation))
            defense = DefenseStatus(spec, model_state, work)
            model_hash = fingerprint(model) if model is not None else None
            defense.attacks = [self._attack(seed, spec, attack, model_hash)
                               for attack in seeded.attacks_on(spec.label)]
            status.defenses.append(defense)
        return status

    def _baseline(self, spec: BaselineSpec) -> tuple[nn.Module | None, ModelState]:
        with torch.random.fork_rng(devices=[]):  # building draws initial weights
            model = spec.build(self.dataset.num_classes)
        if self.source is not None:
            return load_shipped(self.source.baseline(spec.seed), model), "shipped"
        if spec.weights is not None:
            return model.eval(), "checkpoint"
        key = spec.key.with_data(self.dataset.fingerprint)
        if self.cache.load(key, model) is not None:
            return model.eval(), "cached"
        return None, "to train"

    def _defense(self, spec: DefenseSpec, baseline: nn.Module | None,
                 seed: int) -> tuple[nn.Module | None, ModelState]:
        if spec.plugin.cacheable:
            with torch.random.fork_rng(devices=[]):  # an instance to load the weights into
                model = self.plan.baseline.build(self.dataset.num_classes)
            if self.source is not None:
                return load_shipped(self.source.defense(seed, spec.label), model), "shipped"
            if self.cache.load(spec.key.with_data(self.dataset.fingerprint),
                               model) is not None:
                return model.eval(), "cached"
        if defense_work(spec, self.plan.suite.train, len(self.train),
                        len(self.validation)) != NO_WORK:
            return None, "to run"
        # a defense that costs nothing: rebuilt now if the baseline is there, by the run if not
        return (None if baseline is None else self._rebuild(spec, baseline, seed)), "free"

    def _rebuild(self, spec: DefenseSpec, baseline: nn.Module, seed: int) -> nn.Module:
        """A defense that costs nothing, applied on the CPU as a run applies it."""
        ctx = DefenseContext(model=copy.deepcopy(baseline), train=self.train,
                             validation=self.validation, params=spec.params, seed=spec.seed,
                             device=torch.device("cpu"), train_config=self.plan.suite.train,
                             num_classes=self.dataset.num_classes)
        with torch.random.fork_rng(devices=[]):
            return spec.build().apply(ctx).model.eval()

    def _attack(self, seed: int, defense: DefenseSpec, spec: AttackSpec,
                model_hash: str | None) -> AttackStatus:
        data = self.evaluation.head(spec.limit)
        ids = data.ids.tolist()
        cells: list[tuple[float, CellState]] = []
        for eps in spec.eps:
            if model_hash is None:
                stored = (defense.label, spec.label, eps, seed) in self.stored
                cells.append((eps, "unverified" if stored else "to do"))
                continue
            expect = CellExpectation(
                defense=defense.label, attack=spec.label, seed=seed,
                data_hash=self.dataset.fingerprint, defense_params=defense.params_json,
                attack_params=spec.params_json, role=spec.role, n=len(data),
                model_hash=model_hash, code_hash=spec.code_hash)
            done = cell_verified(self.table, self.outcomes, expect, eps, ids)
            cells.append((eps, "done" if done else "to do"))
        todo = [eps for eps, state in cells if state != "done"]
        work = attack_work_range(spec, len(data), todo, defense)
        passes = passes_text(spec, spec.eps, defense) if states_passes(spec, defense) else None
        return AttackStatus(spec, images_attacked(spec, len(self.evaluation)), cells,
                            work.typical, work, passes)


# -- what robench plan prints ------------------------------------------------------------------
MODEL_TEXT = {"cached": "cached", "checkpoint": "checkpoint", "to train": "to train",
              "free": "rebuilt (no cost)", "to run": "to run",
              "shipped": "from --models-from"}
UPPER_BOUND_NOTE = (
    "Estimates of a simple cost model (training: epochs x images; an attack: images x its "
    "gradient steps or queries per eps), priced by timing one batch of the suite's model on "
    "this machine (the fastest of repeated calls). An attack's time is typical, its range in "
    "brackets: active-set attacks stop spending steps on images they already fooled, and "
    "AutoAttack's later components attack only the images the earlier ones left robust, so "
    "attacks take from the share of their upper bounds a broken model's cells took in a "
    "committed run up to about their upper bounds (a robust model). Defenses can take more "
    "than estimated (per-batch work the model does not count, e.g. SCRUB's teacher passes). "
    "On a randomized defense every pass is a vote (gaussian_noise: votes noisy copies per "
    "pass, eval_samples passes to score an image), and such cells and the smoothing verifier's "
    "state their classifier passes per image (an upper bound).")


def render(pre: Preflight, console: Console) -> None:
    """Print the plan: a header, a table of every cell per seed, and the remaining work."""
    _header(pre, console)
    for status in pre.seeds:
        console.print()
        console.print(_seed_table(pre, status))
    console.print()
    console.print(_summary(pre))
    if pre.calibration is not None:
        console.print(UPPER_BOUND_NOTE, style="dim")


def _header(pre: Preflight, console: Console) -> None:
    plan = pre.plan
    n_train, n_validation, n_eval = pre.sizes
    seeds = ", ".join(map(str, plan.seeds))
    console.print(f"[bold]robench plan[/bold]: suite {escape(plan.name)} "
                  f"({escape(plan.source)}), seed{'s' if len(plan.seeds) > 1 else ''} {seeds}, "
                  f"device {resolve_device(plan.suite.device)}")
    console.print(f"data: {plan.suite.data.dataset}, train {n_train}, validation "
                  f"{n_validation}, eval {n_eval} images")
    console.print(f"results folder: {escape(str(pre.out_dir))} ({pre.stored_rows} stored rows, "
                  "checked as resume checks them)")
    for note in pre.notes:
        console.print(f"note: {escape(note)}")
    added = any(a.adaptive for a in plan.attacks) or plan.adaptive_notes
    adaptable = any(d.has_surrogate or d.randomized for d in plan.defenses)
    why = (" (the suite turns the adaptive variants off)" if plan.suite.adaptive == "off" else
           " (nothing to add: no plain gradient attack runs on its surrogate or randomized "
           "defenses)" if adaptable else
           " (no defense declares a surrogate or randomness)")
    console.print(f"adaptive: {plan.suite.adaptive}" + ("" if added else why))
    for attack in plan.attacks:
        if attack.adaptive:
            console.print(f"  adaptive {escape(attack.label)}: {escape(attack.adaptive)}")
    for note in plan.adaptive_notes:
        console.print(f"  adaptive: {escape(note)}")
    cal = pre.calibration
    if cal is None:
        console.print("no calibration (--no-calibrate): no times")
        return
    ms = cal.per_pass
    timed = _count(1, "thread") + f" of the run's {cal.threads}" if cal.busy else \
        _count(cal.threads, "thread")
    console.print(f"calibration ({cal.device}, {timed}): training step "
                  f"{1e3 * ms.train:.3f} ms/image (batch {cal.train_batch}), input gradient "
                  f"{1e3 * ms.grad:.3f} ms/image, forward {1e3 * ms.forward:.3f} ms/image "
                  f"(batch {cal.eval_batch})")
    busy = cal.busy_text()
    if busy is not None:
        console.print(f"note: {busy}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _eps_list(values: list[float], total: int, mark: set[float] | None = None) -> str:
    if not values:
        return ""
    if len(values) == total and not mark:
        return f"all {total}"
    return ", ".join(eps_text(e) + ("?" if mark and e in mark else "") for e in values)


def _time(pre: Preflight, work: Work) -> str:
    seconds = pre.seconds(work)
    if seconds is None:
        return ""
    return "-" if work == NO_WORK else duration_text(seconds)


def _range(pre: Preflight, work: WorkRange) -> str:
    if pre.calibration is None:
        return ""
    if work.high == NO_WORK:
        return "-"
    return range_text(*pre.calibration.seconds_range(work))


def _seed_table(pre: Preflight, status: SeedStatus) -> Table:
    base = status.baseline
    how = (f"weights {base.weights.path}" if base.weights is not None
           else f"{_count(base.train.epochs, 'epoch')} on {pre.sizes[0]} images")
    table = Table(title=f"seed {status.seed}: baseline {base.model} ({how}): "
                        f"{MODEL_TEXT[status.baseline_model]}"
                        + (f", {_time(pre, status.baseline_work)}"
                           if pre.calibration is not None else ""),
                  title_justify="left", show_lines=False)
    for name in ("defense", "model", "attack", "images", "done (eps)", "to do (eps)"):
        table.add_column(name, overflow="fold")
    if pre.calibration is not None:
        table.add_column("estimate", justify="right")
    with_time = pre.calibration is not None
    for defense in status.defenses:
        table.add_row(escape(defense.spec.label), MODEL_TEXT[defense.model], "(defense)", "",
                      "", "", *([_time(pre, defense.work)] if with_time else []))
        for attack in defense.attacks:
            unverified = set(attack.eps_in("unverified"))
            todo = [eps for eps, state in attack.cells if state != "done"]
            label = escape(attack.spec.label) + (f"\n({attack.passes})" if attack.passes
                                                 else "")
            table.add_row("", "", label, str(attack.images),
                          _eps_list(attack.eps_in("done"), len(attack.cells)),
                          _eps_list(todo, len(attack.cells), unverified),
                          *([_time(pre, attack.work)] if with_time else []))
        table.add_section()
    if any(a.eps_in("unverified") for d in status.defenses for a in d.attacks):
        table.caption = ("?: stored, but its model is not cached, so it cannot be checked "
                         "before the run rebuilds the model; counted as to do")
        table.caption_justify = "left"
    return table


def _summary(pre: Preflight) -> Table:
    seeds = pre.seeds
    stages = pre.stage_work()
    to_train = sum(s.baseline_model == "to train" for s in seeds)
    to_run = sum(d.model == "to run" for s in seeds for d in s.defenses)
    counts = {
        "baseline training": f"{to_train} of {len(seeds)}",
        "defenses": f"{to_run} of {sum(len(s.defenses) for s in seeds)} to run",
        "attacks": f"{pre.cells() - pre.cells('done')} of {pre.cells()} cells",
    }
    table = Table(title="remaining work", title_justify="left")
    table.add_column("stage")
    table.add_column("to do", justify="right")
    if pre.calibration is not None:
        table.add_column("estimate", justify="right")
    ranges = pre.stage_range()
    for stage in stages:
        table.add_row(stage, counts[stage],
                      *([_range(pre, ranges[stage])] if pre.calibration is not None else []))
    total = sum(ranges.values(), WorkRange.exact(NO_WORK))
    if pre.calibration is not None:
        table.add_section()
        table.add_row("[bold]total[/bold]", "", f"[bold]{_range(pre, total)}[/bold]")
    return table


__all__ = ["AttackStatus", "DefenseStatus", "Preflight", "SeedStatus", "preflight", "render"]
