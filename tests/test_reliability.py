"""Results that cannot be lost, corrupted or forged: the real CLI against planted links, foreign
folders, changed suites, concurrent runs, broken plugins and interrupts. Each case asserts the
exit code, a one-line message without traceback, and the files before and after."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, plugin_site

SUITE = """\
name: rel
data: {{dataset: mnist, eval_limit: {n}}}
train: {{epochs: 0}}
attacks:
  - name: fgsm
    eps: {eps}
  - name: pgd
    eps: [0.1]
    params: {{steps: {steps}, alpha: 0.05, early_stop: {early_stop}}}
"""


def suite(tmp_path: Path, name: str = "s.yaml", n: int = 100, eps: str = "[0.0, 0.1]",
          steps: int = 2, early_stop: bool = True) -> Path:
    path = tmp_path / name
    path.write_text(SUITE.format(n=n, eps=eps, steps=steps, early_stop=str(early_stop).lower()))
    return path


def start_slow(tmp_path: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    """A run long enough to be interrupted (PGD-1500 on 2000 images, every step on every image:
    on the untrained model the active set would finish almost at once; PGD-300 took 101 s on a
    busy CI machine, which a second run's start-up outlasted)."""
    slow = suite(tmp_path, "slow.yaml", n=2000, steps=1500, early_stop=False)
    # SIGINT as a terminal delivers it: a test run started in the background (`cmd &` in a
    # script) hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "robench.cli", "run", str(slow), "--out",
                             str(out), "-q"], env=env, cwd=REPO, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def one_line_error(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.mark.slow
def test_a_planted_link_is_never_written_through(tmp_path, robench_cli):
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me")
    (out / "run.log").symlink_to(target)
    line = one_line_error(robench_cli("run", str(suite(tmp_path)), "--out", str(out)))
    assert "run.log" in line
    assert target.read_text() == "keep me" and (out / "run.log").is_symlink()


@pytest.mark.slow
def test_a_foreign_folder_keeps_every_file(tmp_path, robench_cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my own table\n")
    (out / "report.md").write_text("my notes\n")
    (out / ".draft.tmp").write_text("half a thesis\n")
    before = snapshot(out)
    line = one_line_error(robench_cli("run", str(suite(tmp_path)), "--out", str(out), "--force"))
    assert "did not write" in line and "results.csv" in line and "report.md" in line
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_changed_suite_moves_earlier_results_aside(tmp_path, robench_cli):
    out = tmp_path / "out"
    assert robench_cli("run", str(suite(tmp_path)), "--out", str(out), "-q").returncode == 0
    first = (out / "results.csv").read_text()
    # another eps list into the same folder: the dropped cell (eps 0) survives in previous-*/
    changed = suite(tmp_path, "changed.yaml", eps="[0.1, 0.2]")
    assert robench_cli("run", str(changed), "--out", str(out), "-q").returncode == 0
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "results.csv").read_text() == first
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows.loc[rows["attack"] == "fgsm", "eps"]) == [0.1, 0.2]
    log = (out / "run.log").read_text()
    assert "[none] pgd: already in results.csv, skipped" in log  # unchanged cells reused
    assert "[none] fgsm robust accuracy {0.2:" in log            # only the new eps computed
    stamps = pd.read_csv(out / "results.csv").set_index(["attack", "eps"])["created_at"]
    earlier = pd.read_csv(aside[0] / "results.csv").set_index(["attack", "eps"])["created_at"]
    assert stamps[("fgsm", 0.1)] == earlier[("fgsm", 0.1)]


@pytest.mark.slow
def test_two_runs_into_one_folder_one_is_refused(tmp_path, cli_env, robench_cli):
    out = tmp_path / "out"
    first = start_slow(tmp_path, out, cli_env)
    try:
        deadline = time.time() + 120
        while not (out / "run.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        line = one_line_error(robench_cli("run", str(suite(tmp_path)), "--out", str(out)))
        assert "another robench run is writing this folder" in line
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130
    assert "interrupted:" in err and "run the same command again to resume" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_sigterm_prints_what_was_kept(tmp_path, cli_env):
    out = tmp_path / "out"
    proc = start_slow(tmp_path, out, cli_env)
    deadline = time.time() + 120
    while not (out / "results.csv").exists() and time.time() < deadline:
        time.sleep(0.1)  # fgsm finished: one attack's cells are on disk
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted: 2 cells computed in this run and 0 earlier cells" in err
    assert len(pd.read_csv(out / "results.csv")) == 2


@pytest.mark.slow
def test_a_broken_plugin_leaves_other_commands_working(tmp_path, cli_env, robench_subprocess):
    env = plugin_site(tmp_path, "robench_broken_plugin",
                      "raise ImportError('no module named x')\n", "robench.attacks",
                      "broken = robench_broken_plugin:Broken", cli_env)
    listed = robench_subprocess("list", env=env)
    assert listed.returncode == 0 and "fgsm" in listed.stdout
    assert "broken" in listed.stdout and "UNUSABLE" in listed.stdout
    uses = tmp_path / "uses.yaml"
    uses.write_text("name: u\nattacks: [{name: broken, eps: [0.1]}]\n")
    line = one_line_error(robench_subprocess("run", str(uses), "--out", str(tmp_path / "o"),
                                             env=env))
    assert "broken" in line and "failed to load" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_changed_settings_and_foreign_targets_never_lose_results(tmp_path, robench_cli):
    out, other = tmp_path / "out", tmp_path / "other"
    s = suite(tmp_path)
    assert robench_cli("run", str(s), "--out", str(out), "-q").returncode == 0
    first = (out / "results.csv").read_text()
    # the same cells with other settings (fewer images): earlier results are moved aside
    assert robench_cli("run", str(s), "--out", str(out), "-q", "--eval-limit",
                       "50").returncode == 0
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "results.csv").read_text() == first
    assert set(pd.read_csv(out / "results.csv")["n"]) == {50}
    # a leaderboard into another run's folder would overwrite that run's report: refused
    assert robench_cli("run", str(s), "--out", str(other), "-q").returncode == 0
    before = snapshot(other)
    line = one_line_error(robench_cli("leaderboard", str(out / "results.csv"), "--out",
                                      str(other)))
    assert "another run's results.csv" in line and snapshot(other) == before
    # compare --out never overwrites a file, nor writes into a results folder
    line = one_line_error(robench_cli("compare", str(out), str(other), "--out",
                                      str(other / "results.csv")))
    assert "exists" in line and snapshot(other) == before


def test_a_signal_during_deferred_bookkeeping_arrives_after_it():
    """The interrupt count and a cell's files change together: a SIGTERM inside the block
    waits until the block is done, then reaches the run's handler (and only once)."""
    from robench.errors import interrupts_deferred

    def terminate(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, terminate)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
                done.append("files")
                done.append("count")
        assert done == ["files", "count"]
        assert signal.getsignal(signal.SIGTERM) is terminate
        with interrupts_deferred():
            done.append("quiet")  # nothing pending: nothing raised
    finally:
        signal.signal(signal.SIGTERM, before)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def test_a_signal_between_the_handler_swaps_leaves_no_handler_held(monkeypatch):
    """A SIGTERM right after SIGINT's handler was swapped (entry) or right after SIGINT's was
    put back (exit) must not leave the holding handler installed for good."""
    from robench.errors import interrupts_deferred

    real = signal.signal
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # a process started in the background by a shell inherits SIGINT ignored: start from the
    # handlers an interactive run has
    real(signal.SIGINT, signal.default_int_handler)
    real(signal.SIGTERM, _terminate)
    try:
        for moment in ("entry", "exit"):
            calls = []

            def racing(signum, handler, moment=moment, calls=calls):
                old = real(signum, handler)
                calls.append(signum)
                # entry: after the first swap; exit: after the first restore
                if (moment == "entry" and len(calls) == 1) or \
                        (moment == "exit" and len(calls) == 3):
                    signal.raise_signal(signal.SIGTERM if moment == "entry" else signal.SIGINT)
                return old

            monkeypatch.setattr(signal, "signal", racing)
            with pytest.raises(KeyboardInterrupt):
                with interrupts_deferred():
                    pass
            monkeypatch.setattr(signal, "signal", real)
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, moment
            assert signal.getsignal(signal.SIGTERM) is _terminate, moment
    finally:
        for signum, handler in before.items():
            real(signum, handler)


def test_an_error_in_the_deferred_block_wins_over_a_held_signal():
    """A disk error while a signal is held is reported as the error (exit 2 with its line),
    not as an interrupt that would hide it."""
    from robench.errors import UserError, interrupts_deferred

    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(UserError, match="no space"):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGTERM)
                raise UserError("no space left on device")
        assert signal.getsignal(signal.SIGTERM) is _terminate
    finally:
        signal.signal(signal.SIGTERM, before)
