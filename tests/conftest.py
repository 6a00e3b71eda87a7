"""Shared fixtures: real MNIST from ../shared/data (or $ROBENCH_DATA_DIR), a small trained
LeNet-5 cached once per test session, a tiny synthetic dataset for unit tests, and the real
``robench`` CLI run in this process (``robench_cli``) or, where the process boundary is the
point, in a fresh interpreter (``robench_subprocess``)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import traceback
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def worker_threads() -> int | None:
    """Torch threads per pytest-xdist worker: the cores shared out between the workers (None
    outside xdist). With torch's default of one thread per core in every worker, the workers'
    threads outnumber the cores, and intra-op threads then wait on partners the OS has
    descheduled: 3-8x slower than one thread (benchmarks/RESULTS.md, "Thread count on a busy
    machine")."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(workers))


def pytest_configure(config):
    threads = worker_threads()
    if threads is not None:
        # here and in every CLI subprocess a test starts (they inherit the environment)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def data_dir() -> Path:
    env = os.environ.get("ROBENCH_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = data_dir()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.fail(f"real MNIST not found under {root}; set ROBENCH_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def mnist(mnist_root):
    from robench.data import load_dataset

    return load_dataset("mnist", mnist_root)


@pytest.fixture(scope="session")
def trained_lenet(mnist):
    """LeNet-5 trained for one epoch on 10 000 real MNIST images (about 1 s)."""
    from robench.models import LeNet5
    from robench.training import TrainConfig, train

    torch.manual_seed(0)
    model = LeNet5()
    train(model, mnist.train.head(10_000), TrainConfig(epochs=1), seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def batch(mnist):
    """The first 1000 real MNIST test images and labels."""
    test = mnist.test.head(1000)
    return test.images, test.labels


#: the synthetic dataset's registered name (a test-only entry in robench.data.DATASETS)
SYNTHETIC = "synthetic"


def synthetic_dataset(root: Path | None = None):
    """10 classes of 28x28 grey images, 300 train / 100 test, the same on every call: each
    class a fixed random pattern plus noise, in [0, 1]. For unit tests that need some images
    of MNIST's shape, not real digits (``root`` is ignored)."""
    from robench.data import Dataset, Split

    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(10, 1, 28, 28, generator=gen)

    def split(n: int) -> Split:
        labels = torch.arange(n, dtype=torch.int64) % 10
        noise = 0.2 * torch.randn(n, 1, 28, 28, generator=gen)
        return Split((patterns[labels] + noise).clamp_(0, 1).contiguous(), labels)

    return Dataset(name=SYNTHETIC, train=split(300), test=split(100), num_classes=10)


@pytest.fixture(scope="session")
def synthetic():
    """The synthetic dataset, registered as ``synthetic`` in robench.data.DATASETS for this
    test session (suites in tests may name it)."""
    from robench.data import DATASETS, load_dataset

    if SYNTHETIC not in DATASETS:
        DATASETS.add(SYNTHETIC, synthetic_dataset)
    return load_dataset(SYNTHETIC, REPO)


def accuracy_of(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture
def cli_env(tmp_path, mnist_root) -> dict[str, str]:
    """Environment for running the real CLI with a private model cache."""
    env = dict(os.environ)
    env["ROBENCH_DATA_DIR"] = str(mnist_root)
    env["ROBENCH_CACHE_DIR"] = str(tmp_path / "cache")
    return env


@dataclass
class CliResult:
    """What a finished ``robench`` command left: exit code and everything it printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def robench_cli(cli_env, monkeypatch):
    """``robench_cli(*args, env=cli_env, cwd=REPO)``: the real CLI (``robench.cli.main``, the
    console script's entry) run in this process, as ``python -m robench.cli *args`` would run
    it, without paying the interpreter's imports again. The environment is set to ``env``
    (variables missing from it are unset), the working folder to ``cwd``, and both are put
    back after the call, with the SIGTERM handler, ``warnings.showwarning`` and the global RNG
    states main() or a run change. The exit code is SystemExit's (typer's), an escaped
    exception is exit code 1 with its traceback on stderr, as in a subprocess."""
    from robench import cli

    def invoke(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> CliResult:
        env = cli_env if env is None else env
        if env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
            # sys.path was fixed when this interpreter started: a plugin found through
            # PYTHONPATH needs a fresh one
            raise ValueError("robench_cli cannot change PYTHONPATH; use robench_subprocess")
        out, err = io.StringIO(), io.StringIO()
        sigterm = signal.getsignal(signal.SIGTERM)
        rng = _rng_states()
        with monkeypatch.context() as m:
            for name in set(os.environ) - set(env):
                m.delenv(name)
            for name, value in env.items():
                m.setenv(name, value)
            m.chdir(cwd)
            m.setattr(sys, "argv", [cli.__file__, *map(str, args)])
            # click names the program after __main__'s package: "python -m robench.cli"
            m.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
            m.setattr(sys.modules["__main__"], "__package__", "robench", raising=False)
            m.setattr(warnings, "showwarning", warnings.showwarning)
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                        contextlib.redirect_stderr(err):
                    _default_warning_filters()
                    try:
                        cli.main()
                        code = 0
                    except SystemExit as stop:
                        code = _exit_code(stop.code, err)
                    except Exception:  # noqa: BLE001 - a subprocess prints it and exits 1
                        traceback.print_exc(file=err)
                        code = 1
            finally:
                signal.signal(signal.SIGTERM, sigterm)
                _set_rng_states(rng)
        return CliResult(code, out.getvalue(), err.getvalue())

    return invoke


def _default_warning_filters() -> None:
    """The filters a fresh interpreter starts with (each warning shown once, deprecations
    ignored outside __main__); resetting them also forgets which warnings were shown."""
    warnings.resetwarnings()
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):
        warnings.filterwarnings("ignore", category=category, append=True)


def _exit_code(code: object, err: io.StringIO) -> int:
    """The exit status sys.exit(code) gives a process (a message: printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=err)
    return 1


def _rng_states() -> tuple:
    import random

    import numpy as np

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_states(states: tuple) -> None:
    import random

    import numpy as np

    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@pytest.fixture
def robench_subprocess(cli_env):
    """``robench_subprocess(*args, env=cli_env, cwd=REPO, timeout=600)``: the real CLI in a
    fresh interpreter, for tests whose point is the process boundary (a plugin on PYTHONPATH,
    import-time behaviour, fresh-interpreter determinism); pays the imports (seconds)."""

    def invoke(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
               timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "robench.cli", *map(str, args)],
                              capture_output=True, text=True, env=cli_env if env is None else env,
                              cwd=cwd, timeout=timeout)

    return invoke


def plugin_site(tmp_path: Path, module: str, source: str, group: str, entry: str,
                env: dict[str, str]) -> dict[str, str]:
    """A third-party plugin in a plain folder on PYTHONPATH, found through a dist-info entry
    point (no install step); returns ``env`` with that folder on PYTHONPATH."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    return dict(env, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])]))


# -- a suite with a third-party defense (code-aware reuse, seeds by label, resume order) ------
# (validation_size 55000: the baseline trains on 5000 images, 0.5 s instead of 5.5 s a run; what
# these tests assert does not depend on its accuracy)
REUSE_SUITE = """\
name: reuse
seed: 3
data: {{dataset: mnist, eval_limit: 300, validation_size: 55000}}
train: {{epochs: 1}}
defenses:
{defenses}
attacks:
{attacks}
"""
REUSE_DEFENSES = ["  - name: none", "  - name: tmp_defense\n    params: {scale: 0.5}"]
REUSE_ATTACKS = ["  - name: fgsm\n    eps: [0.0, 0.031372549019607843, 0.1]",
                 "  - name: pgd\n    eps: [0.1]\n    params: {steps: 3, alpha: 0.05}",
                 "  - name: pgd\n    eps: [0.2]\n    label: pgd_b\n"
                 "    params: {steps: 3, alpha: 0.1}"]

PLUGIN = '''\
"""A throwaway defense: fine-tune nothing, scale the last layer's bias (so weights change)."""
import torch
from pydantic import Field

from robench.defenses import Defense, DefenseParams, DefenseResult


class Params(DefenseParams):
    scale: float = Field(0.5, gt=0)


class TmpDefense(Defense):
    """Scales the classifier's last bias."""

    Params = Params

    def apply(self, ctx):
        with torch.no_grad():
            ctx.model.classifier[-1].bias.mul_(self.params.scale)  # VERSION 1
        return DefenseResult(model=ctx.model, metrics=ctx.metrics)
'''


def reuse_suite(defenses: list[str] = REUSE_DEFENSES,
                attacks: list[str] = REUSE_ATTACKS) -> str:
    """REUSE_SUITE with these defense and attack entries (YAML list items)."""
    return REUSE_SUITE.format(defenses="\n".join(defenses), attacks="\n".join(attacks))


@pytest.fixture
def plugin_env(tmp_path, cli_env) -> dict[str, str]:
    """A third-party defense on PYTHONPATH, found through its entry point."""
    return plugin_site(tmp_path, "robench_tmp_defense", PLUGIN, "robench.defenses",
                       "tmp_defense = robench_tmp_defense:TmpDefense", cli_env)


def finished_run(tmp: Path, suite: str) -> Path:
    """``suite`` run once by the real CLI in a subprocess into ``tmp/run`` (its own model cache
    beside it); module-scoped fixtures share it and each test works on a copy."""
    (tmp / "s.yaml").write_text(suite)
    env = dict(os.environ, ROBENCH_DATA_DIR=str(data_dir()), ROBENCH_CACHE_DIR=str(tmp / "c"))
    proc = subprocess.run([sys.executable, "-m", "robench.cli", "run", str(tmp / "s.yaml"),
                           "--out", str(tmp / "run"), "-q"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


#: one small run (FGSM sweep and PGD-2 on 100 images, untrained LeNet-5) that the read-path
#: tests (test_verify, test_verify_trust) copy per test
SMALL_RUN_SUITE = """\
name: vfy
data: {dataset: mnist, eval_limit: 100}
train: {epochs: 0}
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
  - name: pgd
    eps: [0.1]
    params: {steps: 2, alpha: 0.05}
"""


@pytest.fixture(scope="session")
def small_finished_run(tmp_path_factory) -> Path:
    """SMALL_RUN_SUITE run once per test session (never changed: tests work on copies)."""
    return finished_run(tmp_path_factory.mktemp("small_run"), SMALL_RUN_SUITE)


def run_logged(robench, suite: Path, out: Path, env: dict[str, str] | None = None,
               *args: str) -> str:
    """Run a suite with ``robench`` (robench_cli or robench_subprocess) and ``args`` (e.g.
    ``--update``), which must succeed; return this run's part of run.log."""
    before = (out / "run.log").read_text() if (out / "run.log").exists() else ""
    proc = robench("run", str(suite), "--out", str(out), "--quiet", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    now = (out / "run.log").read_text()
    if now.startswith(before):
        return now[len(before):]
    # the run set the earlier outputs aside (previous-<time>/, its log included) and began a
    # new log: this run's part is the old log's tail and the whole new one
    moved = [p for p in sorted(out.glob("previous-*/run.log")) if p.read_text().startswith(before)]
    assert moved, "run.log neither grew nor was set aside"
    return moved[-1].read_text()[len(before):] + now


def numbers(out: Path):
    """results.csv without its timing columns, in a fixed row order."""
    import pandas as pd

    from robench.results import TIMING_COLUMNS

    frame = pd.read_csv(out / "results.csv").drop(columns=TIMING_COLUMNS)
    return frame.sort_values(["defense", "attack", "eps"]).reset_index(drop=True)


def result_row(defense: str, attack: str, eps: float, clean: float, robust: float,
               n: int = 500, seed: int = 0, **extra) -> dict:
    """A complete results.csv row (every ResultRow column) for table-level tests."""
    from robench.results import RESULT_COLUMNS

    row = {c: "" for c in RESULT_COLUMNS}
    row.update(suite="s", dataset="mnist", model="lenet5", defense=defense,
               defense_name=defense.split(":")[0], defense_params="{}", attack=attack,
               attack_name=attack.split("[")[0], attack_params="{}", backend="native",
               eps=eps, seed=seed, n=n, clean_acc=clean, robust_acc=robust, role="eval",
               clean_acc_lo=clean, clean_acc_hi=clean, robust_acc_lo=robust,
               robust_acc_hi=robust, attack_success_rate=0.0, attack_seconds=0.0,
               defense_seconds=0.0, data_hash="d", model_hash="m", code_hash="c")
    row.update(extra)
    return row


def kill_when_written(proc, path, timeout: float) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (its first finished cell), as a user's
    kill -9 mid-run would; the run must not have finished by then."""
    import signal
    import time

    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
