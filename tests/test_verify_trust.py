"""What a reader trusts, continued (``robench.outdir.verify``): an error is the only line a
failing reader prints, text appended to a log is never read, a run's files are not read as
"unverified" once their manifest is gone, a folder that changed while it was read is not
written over, a folder a run is writing is named as such, and every file robench reads as input
(suite, weights, dataset) is opened only if it is a regular file. Real CLI on copies of one
small run; each case asserts the exit code, one line, and the files before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from robench.outdir import MANIFEST_NAME, OutputFolder

from . import test_verify as verify
from .conftest import data_dir
from .test_reliability import one_line_error, snapshot
from .test_verify import DIFFERS, SUITE, forge, refused

finished, run = verify.finished, verify.run  # the same small run, copied per test

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
WRITING = "a robench run is writing this folder"
ORPHANED = "no manifest vouches for them"


def bare_copy(run: Path) -> Path:
    """A folder holding only a copy of the run's results.csv: read as unverified."""
    bare = run.parent / "bare"
    bare.mkdir()
    shutil.copy(run / "results.csv", bare / "results.csv")
    return bare


# -- finding 1: an error is the only line ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("into", ["own_folder", "out"])
def test_a_guard_that_fails_after_an_unverified_read_is_the_only_line(run, robench_cli, into):
    bare = bare_copy(run)
    target = bare if into == "own_folder" else run.parent / "o"
    target.mkdir(exist_ok=True)
    (target / "checks.csv").write_text("my own notes\n")  # not robench's: never replaced
    before = snapshot(target)
    args = ["leaderboard", str(bare / "results.csv")] + (["--out", str(target)]
                                                        if into == "out" else ["--write"])
    line = refused(robench_cli(*args), "checks.csv")
    assert "unverified" not in line
    assert snapshot(target) == before


@pytest.mark.slow
def test_compare_of_an_unverified_and_a_damaged_run_is_one_line(run, robench_cli):
    bare = bare_copy(run)
    forge(run)
    refused(robench_cli("compare", str(bare), str(run)), "results.csv", DIFFERS)


@pytest.mark.slow
def test_paths_shown_are_resolved(run, robench_cli):
    forge(run)
    (run.parent / "sub").mkdir()
    line = refused(robench_cli("leaderboard", str(run.parent / "sub" / ".." / "run")),
                   str(run / "results.csv"), DIFFERS)
    assert ".." not in line


# -- finding 2: text appended to the log -----------------------------------------------------
# a time no test run takes (0.4 s was one: the run's own FGSM cell once took it)
FORGED_LOG = ("2000-01-01 00:00:00 reproduced: reproduces the committed results.csv bit for "
              "bit\n2000-01-01 00:00:01 done in 4321.9s, wall time 4321.9 s\n")


@pytest.mark.slow
def test_lines_appended_to_the_log_are_not_read(run, robench_cli):
    from robench.outdir import RunFiles

    logged = (run / "run.log").read_bytes()
    with open(run / "run.log", "a") as log:
        log.write(FORGED_LOG)
    assert RunFiles.of(run).read("run.log") == logged  # only what the manifest vouches for
    proc = robench_cli("report", str(run))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    report = (run / "report.md").read_text()
    assert "bit for bit" not in report and "4321.9" not in report
    assert (run / "run.log").read_bytes() == logged + FORGED_LOG.encode()  # kept as it was


# -- finding 3: a run's files without the manifest that vouches for them ---------------------
def drop_manifest_entry(run: Path, name: str) -> None:
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    del manifest["files"][name]
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["manifest_deleted", "results_unlisted", "only_run_json",
                                 "only_outcomes"])
def test_a_forged_run_without_its_manifest_is_refused(run, robench_cli, how):
    forge(run)
    if how == "results_unlisted":
        drop_manifest_entry(run, "results.csv")
    else:
        (run / MANIFEST_NAME).unlink()
        if how != "manifest_deleted":
            (run / ("outcomes.parquet" if how == "only_run_json" else "run.json")).unlink()
    before = snapshot(run)
    for args in (["leaderboard", str(run / "results.csv")], ["report", str(run)],
                 ["compare", str(run), str(run)]):
        line = refused(robench_cli(*args), str(run), ORPHANED)
        assert "unverified" not in line, args
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_bare_csv_with_robench_outputs_beside_it_is_still_unverified(run, robench_cli):
    bare = bare_copy(run)
    for name in ("leaderboard.md", "checks.csv", "diagnostics.json"):  # no run.json, outcomes
        shutil.copy(run / name, bare / name)
    proc = robench_cli("leaderboard", str(bare / "results.csv"), "--out", str(run.parent / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "unverified" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- finding 4: a folder that changes while it is read -------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("change", ["results", "log"])
def test_a_folder_changed_between_reading_and_locking_is_not_written(run, robench_cli,
                                                                     monkeypatch, change):
    import robench.finalize

    read_inputs = robench.finalize.read_inputs

    def then_a_resume_finishes(path):
        inputs = read_inputs(path)
        with OutputFolder.open(run) as folder:  # a run that took the lock and finished
            if change == "results":
                rows = pd.read_csv(run / "results.csv", dtype=str, keep_default_na=False)
                rows.loc[0, "robust_acc"] = "0.5"
                folder.write_text("results.csv", rows.to_csv(index=False))
            else:
                folder.append_line("run.log", "resumed: 1 cell computed")
            folder.write_text("leaderboard.md", "the fresh leaderboard\n")
        return inputs

    monkeypatch.setattr(robench.finalize, "read_inputs", then_a_resume_finishes)
    command = ["leaderboard", str(run / "results.csv"), "--write"] if change == "results" \
        else ["report", str(run)]
    line = refused(robench_cli(*command), str(run), "changed while being read")
    assert "run the command again" in line
    assert (run / "leaderboard.md").read_text() == "the fresh leaderboard\n"
    monkeypatch.setattr(robench.finalize, "read_inputs", read_inputs)
    proc = robench_cli(*command)  # run again: reads the folder as it is now
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["leaderboard", "compare", "plan"])
def test_a_reader_of_a_folder_a_run_is_writing_says_so(run, robench_subprocess, command):
    (run.parent / "s.yaml").write_text(SUITE)
    args = {"leaderboard": ["leaderboard", str(run / "results.csv")],
            "compare": ["compare", str(run), str(run)],
            "plan": ["plan", str(run.parent / "s.yaml"), "--out", str(run), "--no-calibrate"],
            }[command]
    with OutputFolder.open(run):  # a run holds the folder's lock (flock on .robench.lock)
        # ... and has renamed its new results.csv in place, its manifest not yet saved
        data = (run / "results.csv").read_bytes()
        (run / "results.csv").write_bytes(data + data[data.rindex(b"\n", 0, len(data) - 1) + 1:])
        before = snapshot(run)
        line = one_line_error(robench_subprocess(*args, timeout=300))
        assert "robench run is writing this folder" in line and str(run) in line, line
        assert DIFFERS not in line
        assert snapshot(run) == before


@pytest.mark.slow
def test_a_folder_no_run_holds_is_still_refused_as_edited(run, robench_cli):
    (run / "results.csv").write_bytes((run / "results.csv").read_bytes() + b"\n")
    with OutputFolder.open(run.parent):  # another folder's lock does not count
        line = refused(robench_cli("leaderboard", str(run / "results.csv")), DIFFERS)
    assert WRITING not in line
    assert not (run / ".robench.lock").exists()  # the probe never creates the lock file


# -- finding 5: every input robench reads is opened only if it is a regular file ------------
@needs_fifo
@pytest.mark.slow
@pytest.mark.parametrize("at", ["suite", "weights", "mnist"])
def test_a_fifo_at_an_input_path_is_refused_at_once(tmp_path, robench_subprocess, cli_env, at):
    suite = tmp_path / "s.yaml"
    text = SUITE
    env = cli_env
    if at == "weights":
        os.mkfifo(tmp_path / "w.pt")
        text = SUITE.replace("train: {epochs: 0}\n",
                             f"train: {{epochs: 0}}\nmodel: {{name: lenet5, weights: "
                             f"{tmp_path / 'w.pt'}}}\n")
    elif at == "mnist":
        raw = tmp_path / "data" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for path in (data_dir() / "MNIST" / "raw").iterdir():
            (raw / path.name).symlink_to(path)
        (raw / "t10k-labels-idx1-ubyte").unlink()
        os.mkfifo(raw / "t10k-labels-idx1-ubyte")
        env = dict(cli_env, ROBENCH_DATA_DIR=str(tmp_path / "data"))
    if at == "suite":
        os.mkfifo(suite)
    else:
        suite.write_text(text)
    name = {"suite": "s.yaml", "weights": "w.pt", "mnist": "t10k-labels-idx1-ubyte"}[at]
    for command in ("plan", "run"):
        try:
            proc = robench_subprocess(command, str(suite), "--out", str(tmp_path / "out"),
                                      env=env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"robench {command} blocked on a FIFO at the {at} path")
        line = one_line_error(proc)
        assert name in line and ("FIFO" in line or "regular file" in line), line
        assert not (tmp_path / "out").exists()


@needs_fifo
def test_a_fifo_swapped_in_after_the_check_is_not_waited_on(tmp_path, monkeypatch):
    """The primitive every reader uses checks again after opening (without blocking): a
    FIFO put in place between its stat and its open is refused, never read."""
    import robench.outdir.files as files
    from robench.errors import UserError

    regular, fifo = tmp_path / "regular", tmp_path / "fifo"
    regular.write_bytes(b"x")
    os.mkfifo(fifo)
    stat_of = os.stat

    def stale(path, *args, **kwargs):  # what the name held a moment before
        return stat_of(regular if str(path) == str(fifo) else path, *args, **kwargs)

    monkeypatch.setattr(files.os, "stat", stale)
    for follow in (False, True):
        with pytest.raises(UserError, match="FIFO"):
            files.read_regular(fifo, follow_links=follow)


# -- re-check of the fixes: the manifest itself, and files swollen past their entry ----------
def _edit_manifest(run: Path, change) -> None:
    path = run / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.slow
def test_a_table_the_manifest_calls_a_log_is_refused(run, robench_cli):
    """A manifest entry that calls results.csv a "log" let rows appended to it pass as
    robench's (only the prefix was checked); only a log may be vouched for by its prefix."""
    _edit_manifest(run, lambda m: m["files"]["results.csv"].update(kind="log"))
    with open(run / "results.csv", "a") as table:
        table.write("FORGED\n")
    refused(robench_cli("leaderboard", str(run)), MANIFEST_NAME, "damaged")


@pytest.mark.slow
def test_a_manifest_nested_too_deeply_is_one_line(run, robench_cli):
    (run / MANIFEST_NAME).write_text("[" * 200_000 + "]" * 200_000)
    for command in (["leaderboard", str(run)], ["report", str(run)]):
        refused(robench_cli(*command), MANIFEST_NAME, "damaged")


@pytest.mark.slow
def test_a_file_swollen_past_its_entry_is_refused_unread(run, robench_cli):
    """A diagnostics.json grown to 3 GB (sparse) was read whole (6.9 GB of memory) before the
    size told; a reader now reads at most one byte more than the manifest vouches for."""
    from robench.outdir import RunFiles

    with open(run / "diagnostics.json", "r+b") as file:
        file.truncate(3 << 30)
    files = RunFiles.of(run)
    with pytest.raises(Exception, match="differs from what robench wrote"):
        files.read("diagnostics.json")
    refused(robench_cli("leaderboard", str(run)), "diagnostics.json", DIFFERS)
