"""Executors of ``robench run``: ``serial`` (the default and the reference:
``robench.executors.serial`` runs the tasks of ``robench.tasks`` in order) and ``ray`` (the same
tasks as Ray tasks: ``robench.executors.ray``, on a cluster of
``robench.executors.ray_cluster``). An executor computes and reports to the run's recorder
(``robench.recorder``), which alone writes results (``robench.executors.base``: the two
protocols).

Ray is imported only when a Ray run opens a cluster (a serial run never imports it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

from robench.errors import Interrupted, UserError
from robench.executors.base import Cell, Executor, Recorder
from robench.executors.ray import RayExecutor, chunks
from robench.executors.ray_cluster import (
    AUTH_VARS,
    INSTALL_HINT,
    TASK_CPUS,
    TASK_GPUS,
    RayCluster,
    import_ray,
    probe,
    temp_root,
)
from robench.executors.serial import SerialExecutor

EXECUTORS = ("serial", "ray")


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


@contextlib.contextmanager
def open_executor(executor: str, jobs: int | None, address: str | None, quiet: bool,
                  device: str, where: str) -> Iterator[tuple[torch.device | None, Executor]]:
    """(device, executor) of a run: (None, the serial executor) for ``serial`` (the runner
    picks the device); for Ray, a connected cluster whose resources were checked, disconnected
    (and a local one stopped) when the run ends. Ray's logs are kept only after a crash."""
    if executor == "serial":
        yield None, SerialExecutor()
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


__all__ = ["AUTH_VARS", "EXECUTORS", "INSTALL_HINT", "TASK_CPUS", "TASK_GPUS", "Cell",
           "Executor", "RayCluster", "RayExecutor", "Recorder", "SerialExecutor", "check_options",
           "chunks", "import_ray", "open_executor", "probe", "temp_root"]
