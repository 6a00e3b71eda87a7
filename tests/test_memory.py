"""Memory housekeeping: freed heap handed back while a run works (``robench.memory``)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import yaml

from robench import memory


def _trim_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "robench-trim"]


def test_trimming_runs_beside_the_block_and_stops_with_it(monkeypatch):
    calls: list[float] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append(time.monotonic()))
    with memory.trimming_freed_memory(period=0.01) as started:
        assert started == 1 and len(_trim_threads()) == 1
        time.sleep(0.3)
    assert len(calls) >= 3
    assert not _trim_threads()
    after = len(calls)
    time.sleep(0.05)
    assert len(calls) == after  # nothing trims once the block is left


def test_trimming_stops_when_the_block_raises(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    with pytest.raises(KeyboardInterrupt), memory.trimming_freed_memory(period=0.01):
        raise KeyboardInterrupt
    assert not _trim_threads()


def test_no_thread_where_the_c_library_cannot_trim(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    with memory.trimming_freed_memory(period=0.01) as started:
        assert started == 0 and not _trim_threads()
    memory.release_freed_memory()  # a no-op there, not an error


@pytest.mark.slow
def test_a_serial_run_trims_while_its_cells_run(tmp_path, mnist_root, monkeypatch):
    """The serial runner's cells run with the trimming thread beside them, and the thread is
    gone when the run returns."""
    from robench.executors import SerialExecutor
    from robench.models import LeNet5
    from robench.runner import RunOptions, run_suite

    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    torch.save(LeNet5().state_dict(), tmp_path / "lenet.pt")
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "trim", "data": {"dataset": "mnist", "eval_limit": 50},
        "model": {"name": "lenet5", "weights": "lenet.pt"},
        "defenses": [{"name": "none"}], "attacks": [{"name": "fgsm", "eps": [0.1]}]}))
    seen: list[int] = []
    attack = SerialExecutor.attack

    def watched(self, *args, **kwargs):
        seen.append(len(_trim_threads()))
        return attack(self, *args, **kwargs)

    monkeypatch.setattr(SerialExecutor, "attack", watched)
    run_suite(suite, RunOptions(data_dir=str(mnist_root), out=str(tmp_path / "o"), quiet=True))
    assert seen == [1]
    assert not _trim_threads()
