"""A run never mixes its cells with another run's, and reading commands stay read-only: the real
CLI into folders whose stored rows do not verify (other model weights), interrupted with SIGINT
as a terminal sends it; ``leaderboard`` without ``--out``/``--write``; a report re-rendered
without run.log. Each case asserts the exit code, the lines printed, and the files before and
after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from robench.models import LeNet5

from .conftest import REPO, plugin_site
from .test_reliability import snapshot

SLOW = """\
name: mix
data: {{dataset: mnist, eval_limit: 2000}}
model: {{name: lenet5, weights: w.safetensors}}
defenses:
{defenses}
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
{slow}"""
#: PGD-1500 on 2000 images, every step on every image: long enough to be interrupted
PGD = """\
  - name: pgd
    eps: [0.1]
    params: {steps: 1500, alpha: 0.05, early_stop: false}
"""
DERIVED = ("checks.csv", "leaderboard.csv", "leaderboard.md", "report.md", "report.html")


def weights(folder: Path, seed: int) -> None:
    """A LeNet-5 checkpoint (the same path, other weights for another seed): the baseline a
    fresh clone would train again, bits different."""
    torch.manual_seed(seed)
    save_file(LeNet5().state_dict(), folder / "w.safetensors")


def write_suite(folder: Path, slow: bool, defenses: str = "  - name: none") -> Path:
    path = folder / "s.yaml"
    path.write_text(SLOW.format(defenses=defenses, slow=PGD if slow else ""))
    return path


def start(suite: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    """``robench run`` in a subprocess, SIGINT delivered as a terminal does (see
    tests/test_reliability.py ``start_slow``)."""
    return subprocess.Popen([sys.executable, "-m", "robench.cli", "run", str(suite), "--out",
                             str(out), "-q"], env=env, cwd=REPO, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_when(proc: subprocess.Popen, ready, timeout: float = 300) -> str:
    """SIGINT ``proc`` once ``ready()`` holds (the run must still be going); its stderr."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def rows(out: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(out / "results.csv", dtype={"model_hash": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def agree(out: Path) -> None:
    """The folder's files agree: outcomes hold exactly the rows' cells, and no leaderboard or
    report shows numbers that are not the rows' (absent, or rendered from these rows)."""
    results = pd.read_csv(out / "results.csv")
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    cells = set(zip(results["defense"], results["attack"], results["eps"], results["seed"],
                    strict=True))
    stored = set(zip(outcomes["defense"].astype(str), outcomes["attack"].astype(str),
                     outcomes["eps"], outcomes["seed"], strict=True))
    assert cells == stored
    if (out / "leaderboard.csv").exists():
        board = pd.read_csv(out / "leaderboard.csv")
        for _, row in results.iterrows():
            column = f"{row['attack']}@{row['eps']:g}"
            if column in board:
                shown = board.loc[board["defense"] == row["defense"], column].item()
                assert abs(shown - row["robust_acc"]) < 1e-9, column


@pytest.mark.slow
def test_rows_that_do_not_verify_move_aside_before_the_first_new_cell(tmp_path, cli_env,
                                                                       robench_cli):
    out = tmp_path / "out"
    weights(tmp_path, 0)
    fast = write_suite(tmp_path, slow=False)
    assert robench_cli("run", str(fast), "--out", str(out), "-q").returncode == 0
    before = snapshot(out)
    old_hash = set(rows(out)["model_hash"])
    # the same suite, other weights at the same path (a baseline trained again, other bits),
    # plus a slow attack to interrupt: no stored row verifies
    weights(tmp_path, 1)
    slow = write_suite(tmp_path, slow=True)
    proc = start(slow, out, cli_env)

    def new_fgsm_written() -> bool:
        table = rows(out)
        return table is not None and len(table) == 2 and not set(table["model_hash"]) & old_hash

    line = interrupt_when(proc, new_fgsm_written)
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1
    # the earlier outputs, whole and unchanged, set aside (run.log: this run's first lines added)
    kept = snapshot(aside[0])
    old = {k: v for k, v in before.items() if not k.startswith(".")}
    assert {k: v for k, v in kept.items() if k != "run.log"} == {
        k: v for k, v in old.items() if k != "run.log"}
    assert kept["run.log"].startswith(old["run.log"])
    # the folder holds this run's two cells only, with files that agree
    table = rows(out)
    assert len(table) == 2 and not set(table["model_hash"]) & old_hash
    agree(out)
    assert not any((out / name).exists() for name in DERIVED)
    log = (out / "run.log").read_text()
    assert "model weights differ" in log and aside[0].name in log
    # the interrupt line tells the truth: 2 new cells, no earlier cell kept, where they went
    assert "2 cells computed in this run" in line and "0 earlier cells" in line, line
    assert aside[0].name in line and "every earlier verified cell" not in line, line
    # the folder reads as robench's: the report renders the cells kept
    assert robench_cli("report", str(out)).returncode == 0
    agree(out)


METRIC_PLUGIN = '''\
"""A defense that changes nothing and logs one metric."""
from robench.defenses import Defense, DefenseParams, DefenseResult


class Logs(Defense):
    """Logs a metric."""

    Params = DefenseParams

    def apply(self, ctx):
        ctx.log_metric(step=0, metric="probe", value=0.5)
        return DefenseResult(model=ctx.model, metrics=ctx.metrics)
'''


def without_log(folder: Path) -> dict[str, object]:
    """The folder's files but run.log, and its manifest but run.log's entry (a log's recorded
    hash follows what it appends)."""
    files: dict[str, object] = dict(snapshot(folder))
    del files["run.log"]
    manifest = json.loads(files.pop(".robench-manifest.json"))
    manifest["files"].pop("run.log")
    files["manifest"] = manifest
    return files


@pytest.mark.slow
def test_ctrl_c_before_a_new_cell_changes_no_file(tmp_path, cli_env):
    env = plugin_site(tmp_path, "robench_logs_defense", METRIC_PLUGIN, "robench.defenses",
                      "logs = robench_logs_defense:Logs", cli_env)
    out = tmp_path / "out"
    weights(tmp_path, 0)
    defenses = "  - name: none\n  - name: logs"
    fast = write_suite(tmp_path, slow=False, defenses=defenses)
    proc = start(fast, out, env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "probe" in (out / "defense_metrics.csv").read_text()
    before = without_log(out)
    # the same cells verify; a new slow attack is interrupted before its first cell
    slow = write_suite(tmp_path, slow=True, defenses=defenses)
    proc = start(slow, out, env)
    line = interrupt_when(proc, lambda: "[none] fgsm: already in results.csv, skipped"
                          in (out / "run.log").read_text())
    assert (out / "defense_metrics.csv").read_bytes() == before["defense_metrics.csv"]
    assert without_log(out) == before  # run.json, the report, everything: as they were
    assert "0 cells computed in this run" in line and "4 earlier cells" in line, line


@pytest.mark.slow
def test_an_interrupt_after_the_results_were_written_says_so(tmp_path, robench_cli,
                                                             monkeypatch):
    from robench.outdir import OutputFolder

    out = tmp_path / "out"
    weights(tmp_path, 0)
    suite = write_suite(tmp_path, slow=False)
    close = OutputFolder.close

    def interrupted_close(self):  # Ctrl-C as the finished run releases its folder
        close(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputFolder, "close", interrupted_close)
    proc = robench_cli("run", str(suite), "--out", str(out), "-q")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert "before any result was written" not in proc.stderr, proc.stderr
    assert "finished" in proc.stderr and str(out) in proc.stderr, proc.stderr
    assert len(rows(out)) == 2 and (out / "report.md").exists()


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime, the hidden manifest included."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_leaderboard_prints_and_writes_only_when_asked(tmp_path, robench_cli):
    out = tmp_path / "out"
    weights(tmp_path, 0)
    assert robench_cli("run", str(write_suite(tmp_path, slow=False)), "--out", str(out),
                       "-q").returncode == 0
    board = (out / "leaderboard.md").read_bytes()
    before = state(out)
    for target in (out / "results.csv", out):
        printed = robench_cli("leaderboard", str(target))
        assert printed.returncode == 0 and "| none" in printed.stdout, printed.stderr
        assert state(out) == before  # bytes, mtimes and the manifest unchanged
    # --write: into the results' own folder (the same leaderboard, written again)
    os.utime(out / "leaderboard.md", ns=(0, 0))
    assert robench_cli("leaderboard", str(out / "results.csv"), "--write").returncode == 0
    assert (out / "leaderboard.md").stat().st_mtime_ns != 0
    assert (out / "leaderboard.md").read_bytes() == board
    # --out: into another folder, the results' own untouched
    before = state(out)
    assert robench_cli("leaderboard", str(out), "--out", str(tmp_path / "lb")).returncode == 0
    assert (tmp_path / "lb" / "leaderboard.md").read_bytes() == board
    assert state(out) == before


@pytest.mark.slow
def test_a_rerendered_report_keeps_its_provenance(tmp_path, robench_cli):
    out = tmp_path / "out"
    weights(tmp_path, 0)
    assert robench_cli("run", str(write_suite(tmp_path, slow=False)), "--out", str(out),
                       "-q").returncode == 0
    record = json.loads((out / "run.json").read_text())
    assert record["wall_seconds"] > 0 and record["reproduction"]

    def footer() -> list[str]:
        text = (out / "report.md").read_text()
        return [line for line in text.splitlines()
                if line.startswith(("- **wall time**", "- **reproduction**"))]

    shown = footer()
    assert len(shown) == 2 and "not recorded" not in " ".join(shown), shown
    assert "reproduction: reproduction" not in (out / "report.md").read_text()
    assert "reproduction: reproduction" not in (out / "report.html").read_text()
    # a clone: run.log is not committed
    (out / "run.log").unlink()
    proc = robench_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert footer() == shown
