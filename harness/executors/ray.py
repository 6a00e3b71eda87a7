"""The Ray executor: the tasks of ``robench.tasks`` as Ray tasks, on a cluster that
``robench.executors.ray_cluster`` connected to.

The driver is the ``robench run`` process. It submits one task per baseline (per seed) and one
per defense (depending on its baseline), and, as each defended model arrives, asks the recorder
which of its cells are missing (the resume check) and submits the attack work: one task per
(defense, attack, eps) -- or per (defense, attack) for an attack that shares work across its eps
(FGSM) -- and per chunk of ``EVAL_BATCH_SIZE`` images. Chunks are whole evaluation batches and
random starts are drawn per image id (``Attack.set_images``), so every number is the serial
run's. Models travel through Ray's object store (no shared folder needed); the model cache
(``ROBENCH_CACHE_DIR``) is used by the tasks as by a serial run, so a defense cached by any
earlier run is loaded, not recomputed. Tasks return values and write nothing: the driver's
recorder alone writes results (and the shipped model files, which a task returns as bytes:
``robench.shipped.ModelFile``), atomically and per cell, so a task retried by Ray
(``MAX_RETRIES``) never duplicates a row, and a driver killed at any point resumes like a
serial run.

Equal results need equal float arithmetic: every task runs with ``TASK_CPUS`` torch threads, so
a Ray run gives exactly the numbers of a serial run with as many threads (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from robench.data import Split
from robench.errors import UserError
from robench.estimate import attack_work, images_attacked
from robench.evaluation import EVAL_BATCH_SIZE, AttackOutcome
from robench.executors.base import Cell, Recorder, cells_to_compute
from robench.executors.ray_cluster import TASK_CPUS, TASK_GPUS, RayCluster
from robench.memory import release_freed_memory, trimming_freed_memory
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.progress import Reporter
from robench.rundata import RunData
from robench.shipped import ModelFile
from robench.tasks import (
    ModelFacts,
    RunContext,
    Target,
    apply_defense,
    baseline_file,
    defense_file,
    inspect_model,
    merge_outcomes,
    run_attack_cells,
    serial_order,
    train_baseline,
)

#: Ray re-runs a task whose worker died (not one whose code raised: that would fail again)
MAX_RETRIES = 2


# -- the tasks: thin wrappers of robench.tasks, run in Ray's worker processes ------------------
class _Lines(Reporter):
    """A quiet reporter that keeps the lines a task logs, for the driver's run.log."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


@dataclass
class DefenseReport:
    seconds: float
    metrics: list[dict[str, Any]]
    facts: ModelFacts
    lines: list[str] = field(default_factory=list)
    cached: bool = False
    file: ModelFile | None = None    # the shipped file, written by the driver's recorder


def baseline_task(spec: BaselineSpec, train_split: Split,
                  ctx: RunContext) -> tuple[nn.Module, tuple[list[str], bool, ModelFile]]:
    torch.set_num_threads(TASK_CPUS)
    reporter = _Lines()
    ctx = replace(ctx, reporter=reporter)
    with trimming_freed_memory():
        model, cached = train_baseline(spec, train_split.to(ctx.device), ctx)
    file = baseline_file(spec, model, ctx)
    release_freed_memory()  # the worker runs the next task in the same process
    return model.cpu(), (reporter.lines, cached, file)


def defense_task(spec: DefenseSpec, baseline: nn.Module, train_split: Split, validation: Split,
                 test_split: Split, ctx: RunContext,
                 diagnostics: bool) -> tuple[nn.Module, DefenseReport]:
    torch.set_num_threads(TASK_CPUS)
    reporter = _Lines()
    ctx = replace(ctx, reporter=reporter)
    dev = ctx.device
    with trimming_freed_memory():
        done = apply_defense(spec, baseline.to(dev), train_split.to(dev), validation.to(dev),
                             ctx)
    facts = inspect_model(done.model, test_split.to(dev), diagnostics, ctx.num_classes,
                          spec.label)
    file = defense_file(spec, done, ctx)
    release_freed_memory()  # the worker runs the next task in the same process
    return done.model.cpu(), DefenseReport(done.seconds, done.metrics, facts, reporter.lines,
                                           done.cached, file)


def attack_task(spec: AttackSpec, model: nn.Module, source: nn.Module | None,
                eps: list[float], data: Split, device: str,
                num_classes: int | None = None,
                defense: DefenseSpec | None = None) -> list[AttackOutcome]:
    torch.set_num_threads(TASK_CPUS)
    dev = torch.device(device)
    with trimming_freed_memory():  # as the serial executor: transients not left resident
        return run_attack_cells(spec, model.to(dev),
                                None if source is None else source.to(dev), eps, data.to(dev),
                                Reporter(quiet=True), desc=spec.label,
                                num_classes=num_classes, defense=defense)


def compact(split: Split) -> Split:
    """A split that owns its memory: a slice pickles its whole parent tensor otherwise."""
    return Split(split.images.clone(), split.labels.clone(), split.ids.clone())


def chunks(data: Split, size: int = EVAL_BATCH_SIZE) -> Iterator[Split]:
    """``data`` in consecutive chunks of ``size`` images: whole evaluation batches, so each
    image is attacked in the same batch as in a serial run."""
    for start in range(0, len(data), size):
        yield compact(data.subset(torch.arange(start, min(start + size, len(data)))))


# -- the driver ------------------------------------------------------------------------------
@dataclass
class _CellWork:
    """The chunks of one group of eps of one (defense, attack, seed) still to come back."""

    target: Target
    attack: AttackSpec
    image_ids: list[int]
    parts: list[list[AttackOutcome] | None]

    def add(self, index: int, outcomes: list[AttackOutcome]) -> bool:
        self.parts[index] = outcomes
        return all(p is not None for p in self.parts)


class RayExecutor:
    """The driver side of a Ray run (see the module docstring)."""

    def __init__(self, cluster: RayCluster, device: torch.device) -> None:
        self.cluster = cluster
        self.ray = cluster.ray
        self.device = device
        self.pending: dict[Any, Callable[[Any], None]] = {}
        self.models: dict[tuple[int, str], Any] = {}
        self._remote: dict[str, Any] = {}
        #: the evaluation images' chunks in the object store, by number of images (``limit``):
        #: put once, passed by reference (a value argument is copied for every task)
        self._chunks: dict[int, list[Any]] = {}

    def run_record(self) -> dict[str, Any]:
        return {"executor": self.cluster.describe(), "threads": TASK_CPUS}

    def _task(self, fn: Callable[..., Any], num_returns: int = 1) -> Any:
        """``fn`` as a Ray remote function with the run's resources (made once per function)."""
        if fn.__name__ not in self._remote:
            gpus = TASK_GPUS if self.device.type == "cuda" else 0
            self._remote[fn.__name__] = self.ray.remote(
                num_cpus=TASK_CPUS, num_gpus=gpus, max_retries=MAX_RETRIES,
                retry_exceptions=False, num_returns=num_returns)(fn)
        return self._remote[fn.__name__]

    def execute(self, plan: Plan, data: RunData, ctx: RunContext,
                recorder: Recorder) -> set[Cell]:
        ray, splits = self.ray, data.splits
        train_ref, val_ref, test_ref = (ray.put(compact(s)) for s in splits)
        # what the tasks get: the cluster's device, and a quiet reporter that pickles (each
        # task logs into its own and returns the lines, which ``ctx.reporter`` logs here)
        task_ctx = replace(ctx, device=self.device, reporter=Reporter(quiet=True))
        planned: set[Cell] = set()
        for seed in plan.seeds:
            seeded = plan.for_seed(seed)
            base, report = self._task(baseline_task, 2).remote(seeded.baseline, train_ref,
                                                               task_ctx)
            self.pending[report] = self._on_baseline(recorder, ctx, seeded.baseline,
                                                     len(splits[0]))
            for defense in serial_order(seeded):
                model, report = self._task(defense_task, 2).remote(
                    defense, base, train_ref, val_ref, test_ref, task_ctx,
                    seed == plan.seeds[0])
                self.models[(seed, defense.label)] = model
                self.pending[report] = self._on_defended(recorder, ctx, seed, seeded, defense,
                                                         splits)
            planned.update((d.label, a.label, eps, seed) for d, a in seeded.pairs()
                           for eps in a.eps)
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1)
            for ref in ready:
                self.pending.pop(ref)(self._get(ref))
        return planned

    def _get(self, ref: Any) -> Any:
        """A task's value; a ``UserError`` it raised is raised here as itself (one line)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as err:
            if isinstance(getattr(err, "cause", None), UserError):
                raise err.cause from None
            raise

    @staticmethod
    def _on_baseline(recorder: Recorder, ctx: RunContext, spec: BaselineSpec,
                     n_train: int) -> Callable[[tuple[list[str], bool, ModelFile]], None]:
        def handle(report: tuple[list[str], bool, ModelFile]) -> None:
            lines, cached, file = report
            for line in lines:
                ctx.reporter.info(line)
            recorder.on_baseline(spec, n_train, cached)
            recorder.on_model(file)
        return handle

    def _on_defended(self, recorder: Recorder, ctx: RunContext, seed: int, seeded: Plan,
                     defense: DefenseSpec,
                     splits: tuple[Split, Split, Split]) -> Callable[[DefenseReport], None]:
        def handle(report: DefenseReport) -> None:
            for line in report.lines:
                ctx.reporter.info(line)
            recorder.on_defense(seed, defense, len(splits[0]), len(splits[1]), report.cached,
                                report.metrics)
            recorder.on_defended(seed, defense, report.facts)
            recorder.on_model(report.file)
            target = Target(seed, defense, report.facts.model_hash, report.seconds)
            # the longest attacks first (standard AutoAttack), so they do not finish last alone
            n_eval = len(splits[2])
            for attack in sorted(seeded.attacks_on(defense.label), key=lambda a: -attack_work(
                    a, images_attacked(a, n_eval), a.eps, defense).units):
                self._submit_attack(recorder, target, attack, splits[2], ctx.num_classes)
        return handle

    def _submit_attack(self, recorder: Recorder, target: Target, attack: AttackSpec,
                       test_split: Split, num_classes: int) -> None:
        data, image_ids, missing = cells_to_compute(recorder, target, attack, test_split)
        if not missing:
            return
        # eps apart unless the attack shares work across them: a cell's numbers do not depend
        # on the other eps it is attacked with (per-(eps, image) random starts)
        groups = ([missing] if attack.plugin.shares_work_across_eps
                  else [[eps] for eps in missing])
        model = self.models[(target.seed, target.defense.label)]
        source = (self.models[(target.seed, attack.source)] if attack.source is not None
                  else None)
        parts = self._chunk_refs(data)
        for eps in groups:
            work = _CellWork(target, attack, image_ids, [None] * len(parts))
            for index, part in enumerate(parts):
                ref = self._task(attack_task).remote(attack, model, source, eps, part,
                                                     str(self.device), num_classes,
                                                     target.defense)
                self.pending[ref] = self._on_chunk(recorder, work, index)

    def _chunk_refs(self, data: Split) -> list[Any]:
        """References to ``data``'s chunks (the first ``len(data)`` evaluation images)."""
        if len(data) not in self._chunks:
            self._chunks[len(data)] = [self.ray.put(part) for part in chunks(data)]
        return self._chunks[len(data)]

    @staticmethod
    def _on_chunk(recorder: Recorder, work: _CellWork,
                  index: int) -> Callable[[list[AttackOutcome]], None]:
        def handle(outcomes: list[AttackOutcome]) -> None:
            if work.add(index, outcomes):
                merged = merge_outcomes([p for p in work.parts if p is not None])
                recorder.on_cell_done(work.target, work.attack, work.image_ids, merged)
        return handle


__all__ = ["MAX_RETRIES", "DefenseReport", "RayExecutor", "attack_task", "baseline_task",
           "chunks", "compact", "defense_task"]
