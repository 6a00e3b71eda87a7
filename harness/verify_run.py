"""``robench verify RESULTS``: check a results folder against the models it ships, reading
only, in minutes.

1. The folder is read as robench wrote it (``RunFiles``: an edited file is refused, as every
   reader refuses it); it needs outcomes.parquet, run.json and shipped models.
2. Every number of results.csv against outcomes.parquet, and leaderboard.csv / checks.csv
   against what finalize computes now (``robench.verify_tables``).
3. The models: the baseline of each seed and each cacheable defended model are loaded from
   the shipped files (``robench.models_from``: each file's weights hash checked), each
   non-cacheable defense is applied again to the loaded baseline (``robench.tasks``, as
   ``run --models-from`` does), and every model's ``model_hash`` must be the one its rows
   name. A defense whose model does not give its rows' hash is named and not re-attacked.
4. A seeded sample of every cell's images is attacked again and compared with
   outcomes.parquet image by image (``robench.verify_attack``).
5. ``--retrain``: the baseline and the cacheable defenses are trained again (the run's tasks,
   no model cache, nothing written), their weights hashes compared with the shipped ones and
   the sample re-attacked on them.

Nothing is written anywhere (no model cache, no results). Exit codes (``Verdict.code``): 0
verified, 1 differences found, 2 bad input (a ``UserError``, one line).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robench.cache import ModelCache
from robench.completeness import RUN_RECORD
from robench.config import recorded_suite
from robench.data import DATASETS, resolve_data_root
from robench.engine import FORMATS, Engine, MemoryFormat
from robench.errors import UserError
from robench.finalize import read_inputs
from robench.idx_files import check_dataset_files
from robench.memory import release_freed_memory, trimming_freed_memory
from robench.models import model_hash, weights_hash
from robench.models_from import ModelSource, open_source
from robench.outcomes import Cell, CellOutcomes, read_cell_outcomes
from robench.outdir import RunFiles
from robench.plan import Plan, resolve
from robench.progress import Reporter
from robench.run_files import OUTCOMES_FILE
from robench.rundata import RunData, resolve_device
from robench.shipped import shipped_models
from robench.stats import holm_adjust
from robench.tasks import RunContext, apply_defense, train_baseline
from robench.verify_attack import (
    BATCH_TOLERANCE,
    DEFAULT_SAMPLE,
    DEVICE_TOLERANCE,
    RANDOM_FORWARD,
    RANDOMIZED_ALPHA,
    CellCheck,
    difference_line,
    least_flagged,
    randomized,
    reattack,
)
from robench.verify_tables import finalized_problems, row_problems
from robench.weights import recorded_weights

#: how to make a folder verify can check
PRODUCE = "run the suite into it with this robench (robench run SUITE --out FOLDER --update)"


@dataclass
class VerifyOptions:
    """``robench verify``'s options."""

    sample: int = DEFAULT_SAMPLE
    retrain: bool = False
    seed: int = 0                       # draws the sample (with each cell's run seed)
    data_dir: str | None = None


@dataclass
class Verdict:
    """What verify found: problem lines, notes, the re-attacked cells and the summary."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[CellCheck] = field(default_factory=list)
    cells: int = 0
    tolerance: str | None = None        # why some differences are allowed (None: none)
    machine: str | None = None          # how this machine differs from the run's
    retrained: int = 0                  # models trained again and compared (--retrain)

    @property
    def code(self) -> int:
        return 1 if self.problems else 0

    def summary(self) -> str:
        sizes = sorted({c.images for c in self.checks})
        each = (f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}") if sizes else "0"
        differ = sum(c.differ for c in self.checks)
        within = sum(c.differ for c in self.checks if c.ok)
        cells = f"{self.cells} cells" + (f" ({len(self.checks)} re-attacked)"
                                         if len(self.checks) != self.cells else "")
        head = f"{cells}, {each} images each re-attacked"
        if self.problems:
            return (f"NOT verified: {len(self.problems)} problem(s); {head}, {differ} "
                    "differences")
        again = (f"; {self.retrained} models retrained: the same weights and outcomes"
                 if self.retrained else "")
        if differ == 0:
            where = f", although here {self.machine}" if self.machine else ""
            drawn = sum(c.p is not None for c in self.checks)
            same = ("identical outcomes; the random forward pass of "
                    f"{drawn} cells drew alike" if drawn else "bit-identical")
            return f"verified: {head}, 0 differences ({same}{where}){again}"
        return (f"verified: {head}, {within} differences, each cell within its tolerance "
                f"({self.tolerance}){again}")


def _refuse(message: str, folder: Path) -> UserError:
    return UserError(message, where=str(folder))


def read_folder(folder: Path
                ) -> tuple[RunFiles, Any, dict[Cell, CellOutcomes], dict[str, Any]]:
    """The verified files of a results folder verify needs: its ``RunFiles``, finalize's
    inputs, the per-image outcomes and run.json (one-line ``UserError`` otherwise)."""
    if not folder.is_dir():
        raise _refuse("not found" if not os.path.lexists(folder) else "not a folder", folder)
    files = RunFiles.of(folder)
    if files.note is not None:
        raise _refuse(f"{files.note}: verify checks only folders robench wrote; {PRODUCE}",
                      folder)
    if not os.path.lexists(folder / OUTCOMES_FILE):
        raise _refuse(f"has no {OUTCOMES_FILE} (per-image outcomes, which verify re-attacks); "
                      f"{PRODUCE}, which writes it", folder)
    if not shipped_models(files):
        raise _refuse("ships no models (model-<hash>.safetensors), so nothing can be "
                      f"re-attacked; {PRODUCE}, which ships them", folder)
    inputs = read_inputs(folder)
    run = inputs.report.run
    if not run:
        raise _refuse(f"has no {RUN_RECORD} (the suite that was run); {PRODUCE}, which "
                      "writes it", folder)
    outcomes = read_cell_outcomes(folder, files)
    if outcomes is None:
        raise _refuse(f"has no {OUTCOMES_FILE}; {PRODUCE}, which writes it", folder)
    return files, inputs, outcomes, run


def run_plan(run: dict[str, Any], folder: Path, data_dir: str | None) -> Plan:
    """The plan of the suite run.json recorded, with its dataset root here: ``data_dir``, else
    the recorded root when it exists, else robench's default ($ROBENCH_DATA_DIR, ...)."""
    where = f"{folder / RUN_RECORD}: suite"
    if not isinstance(run.get("suite"), dict):
        raise UserError("no recorded suite", where=where)
    raw = recorded_weights(dict(run["suite"]), run.get("baseline"), folder)
    data = dict(raw.get("data") or {})
    recorded = data.get("root")
    if data_dir is not None:
        data["root"] = data_dir
    elif not (isinstance(recorded, str) and Path(recorded).expanduser().is_dir()):
        data["root"] = None
    raw["data"] = data
    plan = resolve(recorded_suite(raw, where), where)
    _check_checkpoint(plan, run.get("baseline"), where)
    return plan


def _check_checkpoint(plan: Plan, baseline: Any, where: str) -> None:
    """The suite's ``model.weights`` checkpoint is the one the run recorded (its sha256 in
    run.json's ``baseline.weights``): a replaced checkpoint is refused, never verified."""
    weights = plan.baseline.weights
    record = baseline.get("weights") if isinstance(baseline, dict) else None
    if weights is None or not isinstance(record, dict):
        return
    if record.get("sha256") != weights.sha256:
        raise UserError(f"model.weights: {weights.path} is not the checkpoint this run used "
                        "(its sha256 differs from run.json's baseline.weights)", where=where)


def load_data(plan: Plan, rows: pd.DataFrame, folder: Path) -> RunData:
    """The run's splits, refused unless the dataset here is the one its rows name. Loaded
    afresh, not from the per-process cache, so that only the splits stay in memory (a run's
    ``robench.runner.start_run`` does the same)."""
    name, root = plan.suite.data.dataset, plan.suite.data.root
    check_dataset_files(name, resolve_data_root(root))
    data = RunData.of(plan, DATASETS.get(name)(resolve_data_root(root)))
    release_freed_memory()
    hashes = sorted({str(h) for h in rows["data_hash"]})
    if hashes != [data.fingerprint]:
        raise UserError(f"its rows were computed on dataset {', '.join(hashes)}, the {name} "
                        f"files here hash to {data.fingerprint}: give the run's dataset with "
                        "--data-dir", where=str(folder))
    return data


def _source(folder: Path, plan: Plan, num_classes: int) -> ModelSource:
    try:
        return open_source(folder, plan, num_classes)
    except UserError as err:  # the file it names, else the folder (not --models-from)
        inside = err.where is not None and err.where.startswith(str(folder) + os.sep)
        raise UserError(err.message, where=err.where if inside else str(folder)) from None


def machine_note(run: dict[str, Any], device: torch.device) -> str | None:
    """What differs from the device and thread count run.json recorded (None: nothing)."""
    differs = []
    if str(run.get("device", device)) != str(device):
        differs.append(f"device {device} (the run: {run.get('device')})")
    threads = torch.get_num_threads()
    if run.get("threads") is not None and int(run["threads"]) != threads:
        differs.append(f"{threads} thread(s) (the run: {run['threads']})")
    return ", ".join(differs) or None


def recorded_engine(run: dict[str, Any], device: torch.device) -> Engine:
    """The engine the run computed with, as run.json records it, on ``device``: verify
    re-attacks with the run's memory format, whatever this machine's default (a run recorded
    before engines were recorded computed in the default ``contiguous`` layout)."""
    recorded = run.get("engine")
    fmt = recorded.get("memory_format") if isinstance(recorded, dict) else "contiguous"
    if fmt not in FORMATS:
        raise UserError(f"unknown memory format {fmt!r} recorded", where="run.json: engine")
    memory_format: MemoryFormat = "channels_last" if fmt == "channels_last" else "contiguous"
    return Engine(device.type, memory_format)


@dataclass
class SeedModels:
    """The models of one seed: by defense label, with the file each came from."""

    baseline: nn.Module
    models: dict[str, nn.Module]
    files: dict[str, str]


def seed_models(plan: Plan, data: RunData, ctx: RunContext) -> SeedModels:
    """The baseline and every defended model of ``plan``'s seed, through the run's tasks
    (loaded from ``ctx.models_from`` when set, else trained and defended now)."""
    train_split, validation, _ = (s.to(ctx.device) for s in data.splits)
    baseline, _ = train_baseline(plan.baseline, train_split, ctx)
    source = ctx.models_from
    base_file = source.baseline(plan.seed).name if source else "retrained"
    models, files = {}, {}
    for spec in plan.defenses:
        models[spec.label] = apply_defense(spec, baseline, train_split, validation, ctx).model
        if source is None:
            files[spec.label] = "retrained"
        elif spec.plugin.cacheable:
            files[spec.label] = source.defense(plan.seed, spec.label).name
        else:
            files[spec.label] = f"{spec.name} applied to {base_file}"
    return SeedModels(baseline, models, files)


def model_problems(plan: Plan, models: SeedModels, results: pd.DataFrame) -> dict[str, str]:
    """By defense label, the line of each defense whose model does not have the
    ``model_hash`` its rows name."""
    problems = {}
    for spec in plan.defenses:
        rows = results[(results["defense"].astype(str) == spec.label)
                       & (results["seed"].astype(int) == plan.seed)]
        named = sorted({str(h) for h in rows["model_hash"]})
        if not named:
            continue
        found = model_hash(models.models[spec.label])
        if named != [found]:
            problems[spec.label] = (f"[{spec.label}] seed {plan.seed}: its model "
                                    f"({models.files[spec.label]}) has model_hash {found}, "
                                    f"its rows name {', '.join(named)}")
    return problems


def reattack_seed(plan: Plan, models: SeedModels, skip: set[str], data: RunData,
                  blocks: dict, opts: VerifyOptions, other_machine: bool,
                  device: torch.device) -> tuple[list[CellCheck], list[str]]:
    """The re-attack of every cell of one seed (defenses in ``skip`` left out)."""
    test_split = data.splits[2].to(device)
    checks, problems = [], []
    for spec in plan.defenses:
        if spec.label in skip:
            continue
        model = models.models[spec.label]
        noisy = randomized(model, test_split, declared=spec.randomized)
        for attack in plan.attacks_on(spec.label):
            source = models.models[attack.source] if attack.source is not None else None
            # a transfer attack crafted on a randomized source is random too
            crafted_randomly = attack.source is not None and any(
                d.randomized for d in plan.defenses if d.label == attack.source)
            found, bad = reattack(attack, spec.label, plan.seed, model, source, test_split,
                                  blocks, opts.sample, opts.seed, other_machine,
                                  noisy or crafted_randomly, spec)
            checks += found
            problems += bad
    return checks, problems


def judge_randomized(checks: list[CellCheck]) -> list[str]:
    """Holm over the sign tests of ``checks``' randomized cells (their ``p_adjusted`` set);
    the problem lines of those flagged."""
    tested = [c for c in checks if c.p is not None]
    for check, adjusted in zip(tested, holm_adjust([c.p for c in tested]), strict=True):
        check.p_adjusted = adjusted
    return [difference_line(c) for c in tested if not c.ok]


def retrain_problems(plan: Plan, data: RunData, shipped: SeedModels, device: torch.device,
                     reporter: Reporter, engine: Engine | None = None
                     ) -> tuple[SeedModels, list[str]]:
    """The baseline and cacheable defenses of one seed trained again (no cache, nothing
    written), and one line per model whose weights differ from the shipped one."""
    ctx = RunContext(device=device, cache=ModelCache(enabled=False),
                     data_hash=data.fingerprint, num_classes=data.dataset.num_classes,
                     train_config=plan.suite.train, reporter=reporter,
                     dataset=plan.baseline.dataset, model_name=plan.baseline.model,
                     engine=engine)
    again = seed_models(plan, data, ctx)
    pairs = [("baseline", again.baseline, shipped.baseline, "the shipped baseline")]
    pairs += [(spec.label, again.models[spec.label], shipped.models[spec.label],
               shipped.files[spec.label]) for spec in plan.defenses if spec.plugin.cacheable]
    problems = []
    for label, retrained, ship, file in pairs:
        new, old = weights_hash(retrained), weights_hash(ship)
        if new != old:
            problems.append(f"[{label}] seed {plan.seed}: retrained weights hash to {new}, "
                            f"{file} to {old}")
    return again, problems


def verify(path: str | Path, opts: VerifyOptions,
           echo: Callable[[str], None] = print) -> Verdict:
    """Verify the results folder ``path`` (see the module); prints a line per problem and per
    note through ``echo`` as found, and returns the verdict (the caller prints its summary)."""
    if opts.sample < 1:
        raise UserError(f"must be at least 1 (got {opts.sample})", where="--sample")
    folder = Path(path).absolute()
    files, inputs, blocks, run = read_folder(folder)
    verdict = Verdict()
    results = inputs.results

    def problem(line: str) -> None:
        verdict.problems.append(line)
        echo(line)

    plan = run_plan(run, folder, opts.data_dir)
    tables = row_problems(results, blocks) + finalized_problems(inputs, files)
    # the tables' index is not needed again (re-attacks read ``blocks``): let it go before
    # the dataset is loaded, so the two are never in memory together
    del inputs
    release_freed_memory()
    data = load_data(plan, results, folder)
    source = _source(folder, plan, data.dataset.num_classes)
    for line in tables:  # after the refusals: a refused folder prints one line
        problem(line)
    device = resolve_device(plan.suite.device)
    other = machine_note(run, device)
    if other:
        verdict.machine = other
        verdict.tolerance = (f"here {other}: up to {DEVICE_TOLERANCE:.0%} of a cell's images "
                             "may flip on float rounding")
        verdict.notes.append(verdict.tolerance)
        echo(f"note: {verdict.tolerance}")
    sizes = {a.label: len(data.splits[2].head(a.limit)) for a in plan.attacks}
    fewer = [f"{label} ({n})" for label, n in sizes.items() if n < opts.sample]
    if fewer and len(fewer) == len(sizes):
        echo(f"note: --sample {opts.sample} is more than the cells' images: each cell's "
             "images are all re-attacked")
    elif fewer:
        echo(f"note: --sample {opts.sample} is more than the images of the cells of "
             f"{', '.join(fewer)}: theirs are all re-attacked")
    reporter = Reporter(quiet=True)
    engine = recorded_engine(run, device)
    retrained_checks: list[CellCheck] = []
    with trimming_freed_memory():  # attacks' transients, not left resident
        for seed in plan.seeds:
            seeded = plan.for_seed(seed)
            ctx = RunContext(device=device, cache=ModelCache(enabled=False),
                             data_hash=data.fingerprint, num_classes=data.dataset.num_classes,
                             train_config=plan.suite.train, reporter=reporter,
                             dataset=plan.baseline.dataset, model_name=plan.baseline.model,
                             models_from=source, engine=engine)
            models = seed_models(seeded, data, ctx)
            bad_models = model_problems(seeded, models, results)
            for line in bad_models.values():
                problem(line)
            checks, bad = reattack_seed(seeded, models, set(bad_models), data, blocks, opts,
                                        bool(other), device)
            for line in bad:
                problem(line)
            for check in checks:
                if check.p is None and not check.ok:
                    problem(difference_line(check))
            verdict.checks += checks
            if opts.retrain:
                again, differ = retrain_problems(seeded, data, models, device, reporter, engine)
                verdict.retrained += 1 + sum(d.plugin.cacheable for d in seeded.defenses)
                for line in differ:
                    problem(line)
                checks, bad = reattack_seed(seeded, again, set(), data, blocks, opts, bool(other),
                                            device)
                for line in bad + [difference_line(c) for c in checks if c.p is None and not c.ok]:
                    problem(f"retrained: {line}")
                retrained_checks += checks
    verdict.cells = len(results)
    for line in judge_randomized(verdict.checks):
        problem(line)
    for line in judge_randomized(retrained_checks):  # their own family: other models
        problem(f"retrained: {line}")
    tested = [c for c in verdict.checks if c.p is not None]
    whys = sorted({c.why for c in verdict.checks if c.why and c.differ and c.p is None})
    allowances = ([f"up to {BATCH_TOLERANCE:.0%} of the sample where {'; '.join(whys)}"]
                  if whys else [])
    if any(c.differ for c in tested):
        least = min(c.p_adjusted for c in tested if c.p_adjusted is not None)
        allowances.append(f"where {RANDOM_FORWARD}, a sign test per cell on the images that "
                          f"differ: Holm over {len(tested)} cells, smallest adjusted p "
                          f"{least:.2g}, flagged below {RANDOMIZED_ALPHA:g}, which takes at "
                          f"least {least_flagged(len(tested))} images changed one way")
    for allowance in allowances:
        verdict.tolerance = (f"{verdict.tolerance}; {allowance}" if verdict.tolerance
                             else allowance)
    return verdict


__all__ = ["DEFAULT_SAMPLE", "Verdict", "VerifyOptions", "verify"]
