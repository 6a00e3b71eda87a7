"""``robench run``: plan -> data -> executor -> recorder -> finalize.

Nothing here knows about a particular attack or defense: the runner resolves the suite once
(``robench.rundata``), hands the typed plan to an executor (``robench.executors``: serial or
Ray), which runs the tasks (``robench.tasks``) and reports them to the run's recorder
(``robench.recorder``), and finally checks and reports the results (``robench.finalize``).
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import robench
from robench.cache import ModelCache
from robench.compare import reproduction_line
from robench.completeness import RUN_RECORD
from robench.engine import engine_for
from robench.errors import Interrupted
from robench.estimate import suite_work
from robench.executors import Executor, SerialExecutor, check_options, open_executor
from robench.finalize import finalize
from robench.fresh_clone import check_complete, not_complete
from robench.memory import peak_rss_text, release_freed_memory
from robench.model_records import model_records
from robench.models_from import ModelSource, open_source
from robench.outdir import OutputFolder
from robench.plan import Plan
from robench.progress import Reporter
from robench.recorder import RunRecorder
from robench.run_files import output_names
from robench.rundata import (
    RunData,
    RunOptions,
    apply_overrides,
    check_out_dir,
    parse_seed_list,
    prepare,
    resolve_device,
)
from robench.shipped import size_warning
from robench.tasks import RunContext


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


def versions() -> dict[str, str | None]:
    """The versions of robench, Python and the libraries a result depends on (run.json)."""
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


class Runner:
    """Runs one resolved plan into one results folder (an open ``OutputFolder``): its executor
    computes, its recorder (made by ``run``) records."""

    def __init__(self, plan: Plan, folder: OutputFolder, opts: RunOptions,
                 device: torch.device | None = None, executor: Executor | None = None,
                 models_from: ModelSource | None = None) -> None:
        self.plan = plan
        self.models_from = models_from
        self.folder = folder
        self.out_dir = folder.path
        self.opts = opts
        # a Ray run's tasks use the cluster's devices, which the driver may not have itself
        self.device = device if device is not None else resolve_device(plan.suite.device)
        self.executor: Executor = executor if executor is not None else SerialExecutor()
        self.reporter = Reporter(quiet=opts.quiet,
                                 log=lambda line: folder.append_line("run.log", line))
        self.cache = ModelCache(enabled=opts.use_cache and not opts.force)
        self.recorder: RunRecorder | None = None
        self.finished = False

    def interrupted_text(self) -> str:
        """The line an interrupted run ends with: what the folder holds, truthfully."""
        if self.finished:
            return (f"interrupted after the run finished: its results, leaderboard and report "
                    f"are complete in {self.out_dir}")
        if self.recorder is None:
            return (f"interrupted before the run wrote anything in {self.out_dir}; run the same "
                    "command again to start it")
        return (f"interrupted: {self.recorder.kept_text()}; run the same command again to "
                "resume")

    @property
    def cells_done(self) -> int:
        """Cells this run finished and recorded so far."""
        return 0 if self.recorder is None else self.recorder.cells_done

    def run(self, data: RunData) -> pd.DataFrame:
        started = time.perf_counter()
        plan, reporter = self.plan, self.reporter
        splits = data.splits
        recorder = self.recorder = RunRecorder(plan, self.folder, reporter, data.fingerprint,
                                               force=self.opts.force)
        engine = engine_for(self.device)
        recorder.start(len(splits[2]), {
            "versions": versions(), **git_state(), "device": str(self.device),
            "threads": torch.get_num_threads(), "engine": engine.record(),
            **self.executor.run_record(),
            **({"models_from": str(self.models_from.folder)} if self.models_from else {})})
        reporter.start_overall(suite_work(plan, len(splits[0]), len(splits[1]),
                                          len(splits[2])).units, f"suite {plan.name}")
        seeds = ", ".join(map(str, plan.seeds))
        reporter.info(f"suite {plan.name}: {plan.baseline.dataset} train "
                      f"{len(splits[0])}, validation {len(splits[1])}, eval "
                      f"{len(splits[2])} images, seed {seeds}, device {self.device}")
        ctx = RunContext(device=self.device, cache=self.cache, data_hash=data.fingerprint,
                         num_classes=data.dataset.num_classes, train_config=plan.suite.train,
                         reporter=reporter, dataset=plan.baseline.dataset,
                         model_name=plan.baseline.model, models_from=self.models_from,
                         engine=engine)
        planned = self.executor.execute(plan, data, ctx, recorder)
        reporter.close_overall()
        recorder.finish(planned)
        # recorded in run.json before the report, which shows both (as a later `robench
        # report` does, run.log or not)
        reproduction = reproduction_line(self.out_dir, recorder.table.frame())
        reporter.info(reproduction)
        wall = time.perf_counter() - started
        recorder.record["model_training"] = model_records(
            plan, self.cache, data.fingerprint, recorder.trained_baselines,
            recorder.defended_now, models_from=self.models_from is not None)
        recorder.record_provenance(wall, reproduction)
        reporter.info(f"done in {wall:.1f}s, {peak_rss_text()} "
                      f"(checks and report follow); results in {self.out_dir}")
        board = finalize(self.out_dir, self.folder, reporter=reporter)
        self.finished = True
        too_large = size_warning(self.out_dir)
        if too_large:
            warnings.warn(too_large, UserWarning, stacklevel=1)
        return board


@dataclass(frozen=True)
class Started:
    """A run resolved and checked, nothing written yet: its plan, data, folder, model source."""

    plan: Plan
    data: RunData
    out_dir: Path
    source: ModelSource | None


@dataclass(frozen=True)
class RunEnd:
    """How ``robench run`` ended: the folder, the leaderboard of the run (None when nothing
    was run because the folder holds a complete run of the suite: ``robench.fresh_clone``)
    and then the one line said and the exit code."""

    out_dir: Path
    board: pd.DataFrame | None
    line: str | None = None
    code: int = 0


def start_run(path: str | Path, opts: RunOptions) -> Started:
    """Load and resolve a suite, its data and its model source; every user mistake found
    before anything is written."""
    check_options(opts.executor, opts.jobs, opts.address)
    plan, dataset, out_dir = prepare(path, opts, keep_loaded=False)
    source = (open_source(opts.models_from, plan, dataset.num_classes)
              if opts.models_from is not None else None)
    data = RunData.of(plan, dataset)
    del dataset  # the run keeps only its splits (RunData)
    release_freed_memory()
    return Started(plan, data, out_dir, source)


def run_started(started: Started, opts: RunOptions, path: str | Path
                ) -> tuple[Path, pd.DataFrame]:
    """Run a started suite into its folder. Returns the folder and the leaderboard."""
    plan, out_dir = started.plan, started.out_dir
    check_out_dir(out_dir)  # before a Ray cluster takes seconds to start (checked again below)
    device_where = "--device" if opts.device else f"{path}: device"
    runner: Runner | None = None
    try:  # the folder's close and the executor's shutdown included: a Ctrl-C there too
        with open_executor(opts.executor, opts.jobs, opts.address, opts.quiet,
                           plan.suite.device, device_where) as (device, executor), \
                OutputFolder.open(out_dir) as folder:
            folder.refuse_foreign(output_names(folder.path))
            runner = Runner(plan, folder, opts, device=device, executor=executor,
                            models_from=started.source)
            board = runner.run(started.data)
    except KeyboardInterrupt:
        if runner is None:
            raise Interrupted(f"interrupted before the run wrote anything in {out_dir}") \
                from None
        raise Interrupted(runner.interrupted_text()) from None
    return out_dir, board


def run_suite(path: str | Path, opts: RunOptions | None = None) -> tuple[Path, pd.DataFrame]:
    """Load, resolve and run a suite file. Returns the results folder and the leaderboard."""
    opts = opts or RunOptions()
    return run_started(start_run(path, opts), opts, path)


def run_or_check(path: str | Path, opts: RunOptions,
                 echo: Callable[[str], None] = print, update: bool = False) -> RunEnd:
    """``robench run``: when the results folder already holds a complete run of this suite,
    check it reading only and compute nothing (``robench.fresh_clone``; not with ``--force``,
    which recomputes in place, nor ``--models-from``, which names other models, nor
    ``update``: ``--update`` resumes in the folder, recomputing the cells that other code
    computed or that do not verify, after setting the earlier outputs aside); else run."""
    started = start_run(path, opts)
    if not opts.force and opts.models_from is None and not update:
        why = not_complete(started.plan, started.data, started.out_dir)
        if why is None:
            plan, out_dir = started.plan, started.out_dir
            del started  # its splits: the check loads the run's own (robench.verify_run)
            release_freed_memory()
            checked = check_complete(plan, out_dir, str(out_dir), str(path), echo)
            return RunEnd(out_dir, None, checked.line, checked.code)
        if (started.out_dir / RUN_RECORD).is_file() and not opts.quiet:
            echo(f"{started.out_dir} does not hold a complete run of this suite ({why}): "
                 "the suite runs into it")
    out_dir, board = run_started(started, opts, path)
    return RunEnd(out_dir, board)


# the options and inputs of a run, where ``robench run``'s callers have always imported them
__all__ = ["RunData", "RunEnd", "RunOptions", "Runner", "Started", "apply_overrides",
           "git_state", "parse_seed_list", "prepare", "resolve_device", "run_or_check",
           "run_started", "run_suite", "start_run", "versions"]
