"""Executors of ``robench run``: ``serial`` (the default and the reference: ``Runner.run_serial``
calls the units of ``robench.units`` in order) and ``ray`` (the same units as Ray tasks).

The Ray driver is the ``robench run`` process. It resolves the plan, submits one task per
baseline (per seed) and one per defense (depending on its baseline), and, as each defended model
arrives, checks which of its cells are missing (the runner's resume verification) and submits
the attack work: one task per (defense, attack, eps) -- or per (defense, attack) for an attack
that shares work across its eps (FGSM) -- and per chunk of ``EVAL_BATCH_SIZE`` images. Chunks
are whole evaluation batches and random starts are drawn per image id (``Attack.set_images``),
so every number is the serial run's. Models travel through Ray's object store (no shared
folder needed); the model cache (``ROBENCH_CACHE_DIR``) is used by the tasks as by a serial
run, so a defense cached by any earlier run is loaded, not recomputed. Tasks return values and
write nothing: the driver alone writes results, atomically and per cell (``Runner.record_cell``),
so a task retried by Ray (``MAX_RETRIES``) never duplicates a row, and a driver killed at any
point resumes like a serial run.

Equal results need equal float arithmetic: every task runs with ``TASK_CPUS`` torch threads, so
a Ray run gives exactly the numbers of a serial run with as many threads (``OMP_NUM_THREADS=1``).

Ray is imported only here and only by the Ray executor (a serial run never imports it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from robench.cache import ModelCache
from robench.data import Dataset, Split
from robench.eps import canonical_eps
from robench.errors import Interrupted, UserError
from robench.estimate import attack_images as images_attacked
from robench.estimate import attack_work, baseline_work, defense_work
from robench.evaluation import EVAL_BATCH_SIZE, AttackOutcome
from robench.memory import release_freed_memory, trimming_freed_memory
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.progress import Reporter
from robench.training import TrainConfig
from robench.units import (
    ModelFacts,
    apply_defense,
    attack_images,
    inspect_model,
    merge_outcomes,
    train_baseline,
)

if TYPE_CHECKING:
    from robench.runner import Runner

Cell = tuple[str, str, float, int]
EXECUTORS = ("serial", "ray")
INSTALL_HINT = 'pip install -e ".[ray]"'
#: CPUs (and torch threads) of every task: results equal a serial run with this many threads
TASK_CPUS = 1
#: the share of a GPU a task asks for with --device cuda: several LeNet tasks share one GPU
TASK_GPUS = 0.25
#: Ray re-runs a task whose worker died (not one whose code raised: that would fail again)
MAX_RETRIES = 2
#: seconds to wait for a TCP connection to a cluster's address before saying it is unreachable
PROBE_SECONDS = 3.0
#: Ray's environment variables for token authentication (Ray >= 2.5x)
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class Executor(Protocol):
    """Runs a resolved plan's units of work for a ``Runner``; returns the plan's cells."""

    def execute(self, runner: Runner, dataset: Dataset,
                splits: tuple[Split, Split, Split]) -> set[Cell]: ...

    def run_record(self) -> dict[str, Any]: ...


def check_options(executor: str, jobs: int | None, address: str | None) -> None:
    """The executor options of ``robench run``, checked before anything starts or is written."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; use {' or '.join(EXECUTORS)}",
                        where="--executor")
    if jobs is not None and jobs < 1:
        raise UserError(f"must be a positive number of CPUs (got {jobs})", where="--jobs")
    if executor == "serial":
        for value, name in ((jobs, "--jobs"), (address, "--address")):
            if value is not None:
                raise UserError("only with --executor ray", where=name)
        return
    if address is not None and not address.strip():
        raise UserError("empty address", where="--address")
    if jobs is not None and (address or os.environ.get("RAY_ADDRESS")):
        where = "--address" if address else "RAY_ADDRESS"
        raise UserError(f"--jobs sizes a local Ray cluster, but {where} names an existing one "
                        "(its size is set by `ray start`)", where="--jobs")


def import_ray() -> Any:
    """The ``ray`` module, or a ``UserError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"the Ray executor needs Ray, which is not installed: {INSTALL_HINT}",
                        where="--executor") from None
    return ray


def probe(address: str, where: str, seconds: float = PROBE_SECONDS) -> None:
    """A ``UserError`` naming ``address`` unless something accepts a TCP connection there
    within ``seconds`` (Ray's own connect retries for a minute or more)."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"expected HOST:PORT, ray://HOST:PORT or auto (got {address!r})",
                        where=where)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UserError(f"cannot reach a Ray cluster at {address} ({reason}); start one with "
                        "`ray start --head` or check the address", where=where) from None


def check_gcs(ray: Any, address: str, where: str, seconds: float = PROBE_SECONDS) -> None:
    """A ``UserError`` naming ``address`` unless a Ray cluster (its GCS) answers there within
    ``seconds``: whatever else accepts the connection (a proxy, another server) would keep
    ``ray.init`` retrying for half a minute. Uses Ray's own GCS client; skipped when this Ray
    has none."""
    client = getattr(getattr(ray, "_raylet", None), "GcsClient", None)
    if client is None:
        return
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            client(address=address)
            outcome["ok"] = True
        except Exception as err:  # noqa: BLE001 - any failure means: not a usable cluster
            outcome["error"] = err

    thread = threading.Thread(target=attempt, daemon=True)  # a stuck connect is left behind
    with fd2_silenced():
        thread.start()
        thread.join(seconds)
    if outcome.get("ok"):
        return
    error = outcome.get("error")
    reason = "no answer" if error is None else " ".join(str(error).split())[:160]
    raise UserError(f"cannot reach a Ray cluster at {address} ({reason}); start one with "
                    "`ray start --head` or check the address (and RAY_AUTH_TOKEN if the "
                    "cluster uses token authentication)", where=where)


@contextlib.contextmanager
def fd2_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while: Ray's C++ client logs each failed attempt
    there itself, and a bad address must stay one line (``robench: error: ...``)."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def resolve_auto(ray: Any) -> str:
    """The address ``auto`` stands for: the latest cluster `ray start` started on this machine
    (Ray's own lookup), or a ``UserError`` when there is none."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this helper: let ray.init look it up itself
        return "auto"
    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as err:
        raise UserError(f"no running Ray cluster found on this machine ({err}); start one with "
                        "`ray start --head`", where="--address") from None
    return found or "auto"


@functools.cache
def process_token() -> str:
    """The token of the local clusters of this process: one per process, because Ray's C++
    side reads the token once and keeps it (a second cluster with a new token would be
    refused)."""
    return secrets.token_hex(32)


#: the longest Unix socket path, and what Ray appends to a local cluster's folder for its
#: sockets ("/robench-ray-XXXXXXXX/session_<date>_<time>_<pid>/sockets/plasma_store": 83
#: characters measured with Ray 2.60, and a margin for longer process ids)
UNIX_PATH_MAX, RAY_SOCKET_SUFFIX = 107, 90


def temp_root() -> str:
    """Where a local cluster's temporary folder goes: the system's temporary folder, unless its
    path is so long that Ray's socket paths below it (about 70 characters more) would pass the
    107-byte limit of a Unix socket path; then /tmp."""
    base = tempfile.gettempdir()
    return "/tmp" if len(base) + RAY_SOCKET_SUFFIX > UNIX_PATH_MAX and os.path.isdir("/tmp") \
        else base


class RayCluster:
    """A connection to Ray: a local cluster robench starts (and stops) itself, or an existing
    cluster (``--address`` / ``RAY_ADDRESS``) it joins and leaves running.

    A local cluster keeps everything in a fresh temporary folder (``temp_dir``: Ray's session
    files, sockets and logs; removed after a run that ended without error, kept otherwise and
    named in the log) and runs with token authentication on a random token passed to its
    processes in ``RAY_AUTH_TOKEN`` -- Ray >= 2.5x would otherwise write a token to
    ``~/.ray/auth_token`` -- unless ``RAY_AUTH_MODE`` or a token is already set.
    """

    def __init__(self, jobs: int | None = None, address: str | None = None,
                 quiet: bool = False) -> None:
        self.jobs = jobs
        self.where = "--address" if address else "RAY_ADDRESS"
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.quiet = quiet
        self.temp_dir: Path | None = None
        self._saved_env: dict[str, str | None] = {}
        self.ray: Any = None

    @property
    def local(self) -> bool:
        return self.address is None

    def open(self) -> RayCluster:
        import logging

        if self.local:
            self._auth_env()
        try:
            ray = self.ray = import_ray()
            level = logging.WARNING
            if self.local:
                self._refresh_config(ray)
                self.temp_dir = Path(tempfile.mkdtemp(prefix="robench-ray-", dir=temp_root()))
                # no --jobs: Ray counts the CPUs itself (it honours container CPU quotas)
                try:
                    ray.init(num_cpus=self.jobs, include_dashboard=False,
                             _temp_dir=str(self.temp_dir), logging_level=level,
                             log_to_driver=not self.quiet)
                except Exception as err:  # noqa: BLE001 - Ray's own errors: one line
                    raise UserError(f"cannot start a local Ray cluster "
                                    f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"
                                    f"; its logs: {self.temp_dir}",
                                    where="--jobs" if self.jobs else "--executor") from None
            else:
                if self.address.startswith(("http://", "https://")):
                    raise UserError(f"{self.address} is a web address (Ray's dashboard or job "
                                    "server); give the cluster's GCS address HOST:PORT (port "
                                    "6379 by default), ray://HOST:PORT or auto",
                                    where=self.where)
                address = resolve_auto(ray) if self.address == "auto" else self.address
                if address != "auto":
                    probe(address, self.where)
                    if "://" not in address:  # ray:// is Ray Client's server, not a GCS
                        check_gcs(ray, address, self.where)
                try:
                    # "auto" itself, not the address it resolved to: only then does Ray read
                    # the cluster's token from ~/.ray/auth_token (ray/_private/worker.py)
                    ray.init(address="auto" if self.address == "auto" else address,
                             logging_level=level, log_to_driver=not self.quiet)
                except (ConnectionError, ValueError, RuntimeError) as err:
                    raise UserError(f"cannot connect to the Ray cluster at {address} "
                                    f"({' '.join(str(err).split())[:160]})",
                                    where=self.where) from None
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def close(self, failed: bool = False) -> str | None:
        """Disconnect (and stop a local cluster); returns where its logs were kept, if kept."""
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        if self.temp_dir is not None and not failed:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            return None
        return str(self.temp_dir) if self.temp_dir is not None else None

    def _auth_env(self) -> None:
        """A per-run token in the environment of this process and the cluster's, so that Ray
        writes none to the home folder (see the class docstring)."""
        if any(os.environ.get(name) for name in AUTH_VARS if name != "RAY_AUTH_MODE"):
            return  # the user's own token
        mode = os.environ.get("RAY_AUTH_MODE")
        if mode and mode != "token":
            return  # the user chose: RAY_AUTH_MODE=disabled
        # token mode (Ray's default, or the user's): a token in the environment, so that Ray
        # does not write one to ~/.ray/auth_token
        self._saved_env = {name: os.environ.get(name) for name in AUTH_VARS}
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = process_token()

    def _refresh_config(self, ray: Any) -> None:
        """Ray reads RAY_AUTH_MODE when it is imported; re-read it when it was imported before
        this run set it (as ``ray.init`` itself does when it turns token mode on)."""
        if not self._saved_env:
            return
        config = getattr(getattr(ray, "_raylet", None), "Config", None)
        if hasattr(config, "initialize"):
            config.initialize("")

    def gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0.0))

    def device(self, name: str, where: str) -> torch.device:
        """The device the tasks use: ``cuda`` only on a cluster with GPUs (``auto``: GPUs when
        it has some), whatever the driver's own machine has."""
        if name not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown device {name!r}; use auto, cpu or cuda", where=where)
        gpus = self.gpus()
        if name == "cuda" and gpus <= 0:
            cpus = self.ray.cluster_resources().get("CPU", 0)
            raise UserError(f"device 'cuda' was requested but the Ray cluster has no GPU "
                            f"({cpus:g} CPUs, 0 GPUs); use --device cpu or a cluster with "
                            "GPUs", where=where)
        return torch.device("cuda" if name == "cuda" or (name == "auto" and gpus > 0)
                            else "cpu")

    def describe(self) -> dict[str, Any]:
        resources = self.ray.cluster_resources()
        return {"name": "ray", "ray_version": self.ray.__version__,
                "address": "local" if self.local else self.address,
                "cluster_cpus": resources.get("CPU", 0), "cluster_gpus": resources.get("GPU", 0),
                "task_cpus": TASK_CPUS}


# -- the tasks: thin wrappers of robench.units, run in Ray's worker processes ------------------
class _Lines(Reporter):
    """A quiet reporter that keeps the lines a unit logs, for the driver's run.log."""

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


def baseline_task(spec: BaselineSpec, num_classes: int, train_split: Split, device: str,
                  cache: ModelCache,
                  data_hash: str) -> tuple[nn.Module, tuple[list[str], bool]]:
    torch.set_num_threads(TASK_CPUS)
    reporter, dev = _Lines(), torch.device(device)
    with trimming_freed_memory():
        model, cached = train_baseline(spec, num_classes, train_split.to(dev), dev, cache,
                                       data_hash, reporter)
    release_freed_memory()  # the worker runs the next task in the same process
    return model.cpu(), (reporter.lines, cached)


def defense_task(spec: DefenseSpec, baseline: nn.Module, train_split: Split, validation: Split,
                 test_split: Split, num_classes: int, device: str, train_config: TrainConfig,
                 cache: ModelCache, data_hash: str,
                 diagnostics: bool) -> tuple[nn.Module, DefenseReport]:
    torch.set_num_threads(TASK_CPUS)
    reporter, dev = _Lines(), torch.device(device)
    with trimming_freed_memory():
        done = apply_defense(spec, baseline.to(dev), train_split.to(dev), validation.to(dev),
                             num_classes, dev, train_config, cache, data_hash, reporter)
    facts = inspect_model(done.model, test_split.to(dev), diagnostics)
    release_freed_memory()  # the worker runs the next task in the same process
    return done.model.cpu(), DefenseReport(done.seconds, done.metrics, facts, reporter.lines,
                                           done.cached)


def attack_task(spec: AttackSpec, model: nn.Module, source: nn.Module | None,
                eps: list[float], data: Split, device: str) -> list[AttackOutcome]:
    torch.set_num_threads(TASK_CPUS)
    dev = torch.device(device)
    with trimming_freed_memory():  # as the serial runner: transients not left resident
        return attack_images(spec, model.to(dev), None if source is None else source.to(dev),
                             eps, data.to(dev), Reporter(quiet=True), desc=spec.label)


def compact(split: Split) -> Split:
    """A split that owns its memory: a slice pickles its whole parent tensor otherwise."""
    return Split(split.images.clone(), split.labels.clone(), split.ids.clone())


def chunks(data: Split, size: int = EVAL_BATCH_SIZE) -> Iterator[Split]:
    """``data`` in consecutive chunks of ``size`` images: whole evaluation batches, so each
    image is attacked in the same batch as in a serial run."""
    for start in range(0, len(data), size):
        yield compact(data.subset(torch.arange(start, min(start + size, len(data)))))


@dataclass
class _CellWork:
    """The chunks of one group of eps of one (defense, attack, seed) still to come back."""

    seed: int
    defense: DefenseSpec
    attack: AttackSpec
    model_hash: str
    defense_seconds: float
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

    def execute(self, runner: Runner, dataset: Dataset,
                splits: tuple[Split, Split, Split]) -> set[Cell]:
        plan, ray = runner.plan, self.ray
        train_ref, val_ref, test_ref = (ray.put(compact(s)) for s in splits)
        cache, device = runner.cache, str(self.device)
        planned: set[Cell] = set()
        for seed in plan.seeds:
            seeded = plan.for_seed(seed)
            base, report = self._task(baseline_task, 2).remote(
                seeded.baseline, dataset.num_classes, train_ref, device, cache,
                runner.data_hash)
            self.pending[report] = self._on_baseline(runner, seeded.baseline, len(splits[0]))
            for defense in serial_order(seeded):
                model, report = self._task(defense_task, 2).remote(
                    defense, base, train_ref, val_ref, test_ref, dataset.num_classes, device,
                    plan.suite.train, cache, runner.data_hash, seed == plan.seeds[0])
                self.models[(seed, defense.label)] = model
                self.pending[report] = self._on_defended(runner, seed, seeded, defense, splits)
            planned.update((d.label, a.label, eps, seed) for d in seeded.defenses
                           for a in seeded.attacks for eps in a.eps)
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
    def _on_baseline(runner: Runner, spec: BaselineSpec,
                     n_train: int) -> Callable[[tuple[list[str], bool]], None]:
        def handle(report: tuple[list[str], bool]) -> None:
            lines, cached = report
            for line in lines:
                runner.reporter.info(line)
            runner.count_work(baseline_work(spec, n_train).units, cached)
        return handle

    def _on_defended(self, runner: Runner, seed: int, seeded: Plan, defense: DefenseSpec,
                     splits: tuple[Split, Split, Split]) -> Callable[[DefenseReport], None]:
        def handle(report: DefenseReport) -> None:
            for line in report.lines:
                runner.reporter.info(line)
            runner.count_work(defense_work(defense, seeded.suite.train, len(splits[0]),
                                           len(splits[1])).units, report.cached)
            runner._add_metrics(defense, seed, report.metrics)
            runner.note_model(seed, defense, report.facts)
            # the longest attacks first (standard AutoAttack), so they do not finish last alone
            n_eval = len(splits[2])
            for attack in sorted(seeded.attacks, key=lambda a: -attack_work(
                    a, images_attacked(a, n_eval), a.eps).units):
                self._submit_attack(runner, seed, defense, attack, report, splits[2])
        return handle

    def _submit_attack(self, runner: Runner, seed: int, defense: DefenseSpec,
                       attack: AttackSpec, report: DefenseReport, test_split: Split) -> None:
        data = test_split.head(attack.limit)
        missing = runner.missing_eps(seed, defense, attack, report.facts.model_hash, data)
        if not missing:
            return
        # eps apart unless the attack shares work across them: a cell's numbers do not depend
        # on the other eps it is attacked with (per-(eps, image) random starts)
        groups = ([missing] if attack.plugin.shares_work_across_eps
                  else [[eps] for eps in missing])
        model = self.models[(seed, defense.label)]
        source = self.models[(seed, attack.source)] if attack.source is not None else None
        parts = self._chunk_refs(data)
        for eps in groups:
            work = _CellWork(seed, defense, attack, report.facts.model_hash, report.seconds,
                             data.ids.tolist(), [None] * len(parts))
            for index, part in enumerate(parts):
                ref = self._task(attack_task).remote(attack, model, source, eps, part,
                                                     str(self.device))
                self.pending[ref] = self._on_chunk(runner, work, index)

    def _chunk_refs(self, data: Split) -> list[Any]:
        """References to ``data``'s chunks (the first ``len(data)`` evaluation images)."""
        if len(data) not in self._chunks:
            self._chunks[len(data)] = [self.ray.put(part) for part in chunks(data)]
        return self._chunks[len(data)]

    @staticmethod
    def _on_chunk(runner: Runner, work: _CellWork,
                  index: int) -> Callable[[list[AttackOutcome]], None]:
        def handle(outcomes: list[AttackOutcome]) -> None:
            if work.add(index, outcomes):
                merged = merge_outcomes([p for p in work.parts if p is not None])
                runner.record_cell(work.seed, work.defense, work.attack, work.model_hash,
                                   work.image_ids, work.defense_seconds, merged)
        return handle


def serial_order(plan: Plan) -> list[DefenseSpec]:
    """The order a serial run defends in: the sources of transfer attacks first
    (``Runner.defend_sources``), then the others, each in the suite's order."""
    wanted = {a.source for a in plan.attacks if a.source is not None}
    return ([d for d in plan.defenses if d.label in wanted]
            + [d for d in plan.defenses if d.label not in wanted])


def order_like_serial(runner: Runner) -> None:
    """Rows, outcomes and defense metrics in the order a fresh serial run writes them (cells
    finish in any order on Ray; a resume appends the cells it re-ran); a file is rewritten only
    when its order changes."""
    plan = runner.plan
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

    rows = sorted(runner.table.rows, key=cell)
    if rows != runner.table.rows:
        runner.table.rows = rows
        runner.table.flush()
    runner.outcomes.reorder(lambda key: rank.get(key, last))
    # written by ``Runner.run`` after this, as on every run
    runner.metric_rows = sorted(
        runner.metric_rows,
        key=lambda r: metric_rank.get((r["defense"], r["seed"]), len(metric_rank)))


@contextlib.contextmanager
def open_executor(executor: str, jobs: int | None, address: str | None, quiet: bool,
                  device: str, where: str) -> Iterator[tuple[torch.device | None,
                                                             Executor | None]]:
    """(device, executor) of a run: (None, None) for the serial executor (the runner picks the
    device); for Ray, a connected cluster whose resources were checked, disconnected (and a
    local one stopped) when the run ends. Ray's logs are kept only after a crash."""
    if executor == "serial":
        yield None, None
        return
    cluster = RayCluster(jobs, address, quiet).open()
    failed = False
    try:
        chosen = cluster.device(device, where)
        yield chosen, RayExecutor(cluster, chosen)
    except (UserError, Interrupted, KeyboardInterrupt):  # not Ray's failure: no logs kept
        raise
    except BaseException:
        failed = True
        raise
    finally:
        kept = cluster.close(failed=failed)
        if kept:
            print(f"robench: Ray's logs of this run are kept in {kept}", file=sys.stderr)
