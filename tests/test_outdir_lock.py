"""robench.outdir.lock: one run holds a results folder; a lock another process holds is refused."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

import robench.outdir as outdir
from robench.errors import UserError
from robench.outdir import LOCKED_MESSAGE, OutputFolder

from .test_outdir import (
    child_env,
)


def test_a_second_open_in_the_same_process_is_refused(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)
    with OutputFolder.open(out) as first:
        first.write_text("results.csv", "first\n")
        for spelling in (out, tmp_path / "alias", tmp_path / "alias" / "."):
            with pytest.raises(UserError, match=LOCKED_MESSAGE) as err:
                OutputFolder.open(spelling)
            assert "\n" not in str(err.value)
        first.write_text("results.csv", "still first\n")  # the refused open took nothing away
    with OutputFolder.open(out) as second:
        assert second.owns("results.csv")


def test_the_in_process_registry_refuses_where_flock_is_per_process(tmp_path, monkeypatch):
    """On NFS flock is emulated with per-process locks; a second open must still be refused."""
    monkeypatch.setattr(outdir.lock.fcntl, "flock", lambda fd, op: None)
    with OutputFolder.open(tmp_path / "out"):
        with pytest.raises(UserError, match=LOCKED_MESSAGE):
            OutputFolder.open(tmp_path / "out")
    with OutputFolder.open(tmp_path / "out"):  # released on close
        pass


def test_a_folder_dropped_without_close_does_not_stay_locked(tmp_path):
    folder = OutputFolder.open(tmp_path / "out")
    folder.write_text("results.csv", "x\n")
    del folder
    gc.collect()
    with OutputFolder.open(tmp_path / "out") as again:
        assert again.owns("results.csv")


def test_a_run_in_another_process_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    holder = textwrap.dedent("""
        import sys
        from robench.outdir import OutputFolder
        folder = OutputFolder.open(sys.argv[1])
        print("locked", flush=True)
        sys.stdin.readline()
        folder.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    try:
        line = proc.stdout.readline()
        assert line == "locked\n", proc.stderr.read()
        with pytest.raises(UserError, match=LOCKED_MESSAGE):
            OutputFolder.open(out)
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with OutputFolder.open(out):  # released when the other run closed
        pass
