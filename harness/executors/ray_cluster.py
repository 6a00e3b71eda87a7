"""The connection of a Ray run to Ray: a local cluster robench starts (and stops) itself, or an
existing cluster (``--address`` / ``RAY_ADDRESS``) it joins, every bad address or missing
install refused in one line before a run starts. The executor that submits the tasks is
``robench.executors.ray``.

Ray is imported only here, and only when a Ray run opens a cluster (a serial run never
imports it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from robench.errors import UserError

INSTALL_HINT = 'pip install -e ".[ray]"'
#: CPUs (and torch threads) of every task: results equal a serial run with this many threads
TASK_CPUS = 1
#: the share of a GPU a task asks for with --device cuda: several LeNet tasks share one GPU
TASK_GPUS = 0.25
#: seconds to wait for a TCP connection to a cluster's address before saying it is unreachable
PROBE_SECONDS = 3.0
#: Ray's environment variables for token authentication (Ray >= 2.5x)
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


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
                assert self.address is not None  # not local
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
        config: Any = getattr(getattr(ray, "_raylet", None), "Config", None)
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


__all__ = ["AUTH_VARS", "INSTALL_HINT", "TASK_CPUS", "TASK_GPUS", "RayCluster", "check_gcs",
           "import_ray", "probe", "process_token", "resolve_auto", "temp_root"]
