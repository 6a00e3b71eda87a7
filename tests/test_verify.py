"""Every reader verifies: ``leaderboard``, ``report``, ``compare`` and ``plan`` read a results
folder's files only as robench wrote them (the manifest's size and sha256), only from regular
files, and never show a torn file as a smaller table. The real CLI on copies of one small run
made here; each case asserts the exit code, one line naming the file, and the files before
and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, SMALL_RUN_SUITE
from .test_reliability import one_line_error, snapshot

SUITE = SMALL_RUN_SUITE
DIFFERS = "differs from what robench wrote"


@pytest.fixture(scope="module")
def finished(small_finished_run) -> Path:
    """One small finished run (never changed: each test works on a copy), shared with
    test_verify_trust: one run per test session."""
    return small_finished_run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, its hidden manifest included."""
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    return folder


def forge(folder: Path) -> None:
    """A consistent forgery: PGD made harmless in results.csv and in the per-image outcomes,
    so the two agree (and every resume check of numbers against outcomes would pass)."""
    rows = pd.read_csv(folder / "results.csv", dtype=str, keep_default_na=False)
    pgd = rows["attack"] == "pgd"
    for column in ("robust_acc", "robust_acc_lo", "robust_acc_hi"):
        rows.loc[pgd, column] = rows.loc[pgd, column.replace("robust", "clean")]
    rows.to_csv(folder / "results.csv", index=False)
    outcomes = pd.read_parquet(folder / "outcomes.parquet")
    hit = outcomes["attack"] == "pgd"
    outcomes.loc[hit, "adv_correct"] = outcomes.loc[hit, "clean_correct"]
    outcomes.to_parquet(folder / "outcomes.parquet", index=False)


def robust(folder: Path, attack: str) -> float:
    rows = pd.read_csv(folder / "results.csv")
    return float(rows.loc[rows["attack"] == attack, "robust_acc"].iloc[0])


def refused(proc, *names: str) -> str:
    line = one_line_error(proc)
    assert all(name in line for name in names), line
    return line


# -- finding 2: edited or damaged files -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("command", ["leaderboard", "report"])
def test_a_consistent_forgery_is_refused(run, robench_cli, command):
    assert robust(run, "pgd") < robust(run, "fgsm")  # the forgery below changes a number
    forge(run)
    before = snapshot(run)
    target = run / "results.csv" if command == "leaderboard" else run
    line = refused(robench_cli(command, str(target)), "results.csv", DIFFERS)
    assert str(run) in line
    assert snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["outcomes.parquet", "diagnostics.json", "run.json",
                                  "run.log"])
def test_an_edited_file_beside_the_results_is_refused(run, robench_cli, name):
    path = run / name
    if name == "run.json":  # the report's provenance: another machine and a clean revision
        record = json.loads(path.read_text())
        record.update(git_revision="000000000000", git_dirty=False, device="cuda:0 (NVIDIA H200)")
        path.write_text(json.dumps(record))
    elif name == "outcomes.parquet":
        outcomes = pd.read_parquet(path)
        outcomes["adv_correct"] = outcomes["clean_correct"]
        outcomes.to_parquet(path, index=False)
    elif name == "diagnostics.json":  # gradients that no check could call masked
        data = json.loads(path.read_text())
        for values in data.values():
            values.update({k: 0.0 for k in values})
        path.write_text(json.dumps(data))
    else:  # an earlier log line rewritten (appending is what a log allows)
        path.write_text(path.read_text().replace("robust accuracy", "robust accuracy (sic)", 1))
    before = snapshot(run)
    refused(robench_cli("report", str(run)), name, DIFFERS)
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_log_appended_to_is_still_read(run, robench_cli):
    with open(run / "run.log", "a") as log:
        log.write("a note of the user's\n")
    proc = robench_cli("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "unverified" not in proc.stderr + (run / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["half", "half_whole_lines", "last_line"])
def test_a_truncated_results_csv_is_an_error(run, robench_cli, cut):
    data = (run / "results.csv").read_bytes()
    size = {"half": len(data) // 2, "last_line": len(data) - 7,
            # a well-formed CSV of fewer rows: only the manifest can tell
            "half_whole_lines": data.rindex(b"\n", 0, len(data) // 2) + 1}[cut]
    (run / "results.csv").write_bytes(data[:size])
    before = snapshot(run)
    refused(robench_cli("leaderboard", str(run / "results.csv")), "results.csv")
    assert snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["mid_number", "missing_fields", "no_newline"])
def test_a_torn_csv_without_a_manifest_is_an_error(run, robench_cli, cut):
    bare = run.parent / "bare"
    bare.mkdir()
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    last = rows[-1].rstrip("\n")
    torn = {"mid_number": last[:last.index(",0.", len(last) // 2) + 3],  # 0.15 -> 0.
            "missing_fields": ",".join(last.split(",")[:-3]) + "\n",
            "no_newline": last}[cut]
    (bare / "results.csv").write_text(header + "".join(rows[:-1]) + torn)
    line = refused(robench_cli("leaderboard", str(bare / "results.csv")), "results.csv")
    assert "torn" in line or "truncated" in line or "damaged" in line
    assert sorted(p.name for p in bare.iterdir()) == ["results.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["defense_metrics.csv", "results.csv"])
def test_a_file_robench_did_not_write_is_refused_in_a_run_folder(run, robench_cli, name):
    if name == "defense_metrics.csv":  # planted: this run logged no defense metrics
        assert not (run / name).exists()
        (run / name).write_text("defense,seed,method,step,metric,value\nnone,0,x,0,loss,0.1\n")
    else:  # the run's table moved away, another one put in its place under another name
        (run / "mine.csv").write_bytes((run / "results.csv").read_bytes())
    before = snapshot(run)
    shown = "mine.csv" if name == "results.csv" else name
    target = run / "mine.csv" if name == "results.csv" else run
    refused(robench_cli("report" if target.is_dir() else "leaderboard", str(target)), shown,
            "manifest")
    assert snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diagnostics.json", "outcomes.parquet"])
def test_a_deleted_file_that_robench_wrote_is_refused(run, robench_cli, name):
    # without diagnostics.json the gradient checks vanish; without outcomes the worst case
    # becomes a minimum over attacks: either way, not the run's evidence
    (run / name).unlink()
    before = snapshot(run)
    refused(robench_cli("leaderboard", str(run / "results.csv")), name, "missing")
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_link_to_a_forged_table_is_refused(run, robench_cli, tmp_path):
    forged = tmp_path / "forged.csv"
    forged.write_bytes((run / "results.csv").read_bytes().replace(b",0.15,", b",0.95,"))
    (run / "results.csv").unlink()
    (run / "results.csv").symlink_to(forged)
    refused(robench_cli("leaderboard", str(run / "results.csv")), "results.csv", "link")


@pytest.mark.slow
def test_a_bare_csv_is_read_with_one_warning_and_marked_unverified(run, robench_cli):
    bare = run.parent / "bare"
    bare.mkdir()
    shutil.copy(run / "results.csv", bare / "results.csv")
    for attempt in range(2):  # the second time, bare/ holds the manifest of the outputs
        proc = robench_cli("leaderboard", str(bare / "results.csv"), "--write")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "unverified" in lines[0] and str(bare) in lines[0], attempt
        assert "unverified" in proc.stdout
        assert "unverified" in (bare / "leaderboard.md").read_text()
    proc = robench_cli("report", str(bare))
    assert proc.returncode == 0, proc.stderr
    assert "unverified" in (bare / "report.md").read_text().splitlines()[0]
    assert "unverified" in (bare / "report.html").read_text()


@pytest.mark.slow
def test_the_run_itself_and_its_copy_read_without_warnings(run, robench_cli):
    proc = robench_cli("leaderboard", str(run / "results.csv"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "unverified" not in proc.stdout + (run / "leaderboard.md").read_text()


# -- compare and plan ------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_refuses_a_forged_run(run, finished, robench_cli, tmp_path):
    forge(run)
    refused(robench_cli("compare", str(finished), str(run)), "results.csv", DIFFERS)
    refused(robench_cli("compare", str(run / "results.csv"), str(finished)), "results.csv",
            DIFFERS)
    refused(robench_cli("compare", str(run), "--defenses", "none,none2"), "results.csv",
            DIFFERS)
    (run / "results.csv").write_bytes((finished / "results.csv").read_bytes())  # outcomes only
    refused(robench_cli("compare", str(finished), str(run)), "outcomes.parquet", DIFFERS)
    assert not (tmp_path / "diff.md").exists()


@pytest.mark.slow
def test_compare_marks_a_bare_csv_unverified(run, finished, robench_cli):
    bare = run.parent / "bare.csv"
    shutil.copy(run / "results.csv", bare)
    proc = robench_cli("compare", str(finished), str(bare))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "unverified" in proc.stderr
    assert "unverified" in proc.stdout


@pytest.mark.slow
def test_plan_refuses_a_forged_results_csv(run, robench_cli, tmp_path):
    forge(run)
    (tmp_path / "s.yaml").write_text(SUITE)
    before = snapshot(run)
    refused(robench_cli("plan", str(tmp_path / "s.yaml"), "--out", str(run),
                        "--no-calibrate"), "results.csv")
    assert snapshot(run) == before


@pytest.mark.slow
def test_plan_counts_a_deleted_table_as_to_do(run, robench_cli, tmp_path):
    (run / "results.csv").unlink()  # gone is not forged: run would recompute, plan says so
    (tmp_path / "s.yaml").write_text(SUITE)
    proc = robench_cli("plan", str(tmp_path / "s.yaml"), "--out", str(run), "--no-calibrate")
    assert proc.returncode == 0, proc.stderr


# -- finding 7: reads that can block ---------------------------------------------------------
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


@needs_fifo
@pytest.mark.slow
@pytest.mark.parametrize(("name", "args"), [
    ("outcomes.parquet", ["leaderboard", "{run}/results.csv"]),
    ("results.csv", ["leaderboard", "{run}/results.csv"]),
    ("outcomes.parquet", ["report", "{run}"]),
    ("run.json", ["report", "{run}"]),
    ("outcomes.parquet", ["compare", "{run}", "{run}"]),
    ("outcomes.parquet", ["compare", "{run}", "--defenses", "none,x"]),
    ("outcomes.parquet", ["plan", "{run}/../s.yaml", "--out", "{run}", "--no-calibrate"]),
])
def test_a_fifo_is_refused_at_once(run, robench_subprocess, name, args):
    (run / name).unlink()
    os.mkfifo(run / name)
    (run.parent / "s.yaml").write_text(SUITE)
    before = sorted(p.name for p in run.iterdir())
    try:
        proc = robench_subprocess(*[a.format(run=run) for a in args], timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"robench {args[0]} blocked on a FIFO at {name}")
    line = refused(proc, name)
    assert "regular file" in line or "did not write" in line  # plan: as run refuses it
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.slow
def test_a_folder_at_an_input_name_is_refused(run, robench_cli):
    (run / "outcomes.parquet").unlink()
    (run / "outcomes.parquet").mkdir()
    refused(robench_cli("leaderboard", str(run / "results.csv")), "outcomes.parquet",
            "regular file")


# -- the committed results -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "results").iterdir()
                                        if (p / "results.csv").exists()))
def test_every_committed_folder_reads_verified(tmp_path, name):
    """Each committed folder's manifest vouches for every file finalize reads (on a copy)."""
    import warnings

    from robench.finalize import read_inputs

    folder = tmp_path / name
    shutil.copytree(REPO / "results" / name, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs = read_inputs(folder)
    assert inputs.note is None and not inputs.results.empty
