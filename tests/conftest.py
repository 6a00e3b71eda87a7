"""Shared fixtures: real MNIST from ../shared/data (or $ROBENCH_DATA_DIR) and a small trained
LeNet-5, cached once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


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


def accuracy_of(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture
def cli_env(tmp_path, mnist_root) -> dict[str, str]:
    """Environment for running the real CLI in a subprocess with a private model cache."""
    env = dict(os.environ)
    env["ROBENCH_DATA_DIR"] = str(mnist_root)
    env["ROBENCH_CACHE_DIR"] = str(tmp_path / "cache")
    return env


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
