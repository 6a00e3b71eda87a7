"""robench.outdir.atomic and manifest: a killed write, a full disk or the umask never leave a
file robench cannot prove (standard library only)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from robench.errors import UserError
from robench.outdir import MANIFEST_NAME, OutputFolder

from .test_outdir import (
    child_env,
    manifest,
    snapshot,
    temp_leftovers,
)


@pytest.fixture
def umask():
    """Set the umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("crash_at", ["before_replace", "after_replace"])
def test_a_crashed_run_leaves_nothing_unprovable(tmp_path, crash_at):
    """kill -9 in the middle of a write: the next run removes robench's temp file (listed in the
    manifest), keeps a foreign look-alike, and still owns whichever version is in place."""
    out = tmp_path / "out"
    with OutputFolder.open(out) as folder:
        folder.write_text("results.csv", "old\n")
    (out / ".robench-tmp-foreign.results.csv").write_text("not robench's\n")
    crasher = textwrap.dedent("""
        import os, sys
        from robench.outdir import OutputFolder
        folder = OutputFolder.open(sys.argv[1])
        folder.append_line("run.log", "started")
        real_replace = os.replace
        def crash(src, dst, **kw):  # crash as the data file is renamed (not the manifest)
            if dst == "results.csv":
                os._exit(9)
            real_replace(src, dst, **kw)
        if sys.argv[2] == "before_replace":
            os.replace = crash
        else:
            OutputFolder._finish = lambda *a, **k: os._exit(9)
        folder.write_text("results.csv", "new\\n")
    """)
    done = subprocess.run([sys.executable, "-c", crasher, str(out), crash_at],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 9, done.stderr
    expected = "old\n" if crash_at == "before_replace" else "new\n"
    assert (out / "results.csv").read_text() == expected
    assert manifest(out)["temps"] and "pending" in manifest(out)["files"]["results.csv"]
    if crash_at == "before_replace":
        assert len(temp_leftovers(out)) == 2  # robench's temp file and the foreign one
    with OutputFolder.open(out) as folder:
        assert temp_leftovers(out) == [".robench-tmp-foreign.results.csv"]
        assert folder.owns("results.csv") and folder.owns("run.log")
        recorded = manifest(out)
        assert recorded["temps"] == [] and "pending" not in recorded["files"]["results.csv"]
        folder.append_line("run.log", "resumed")
        folder.write_text("results.csv", "newer\n")
    assert (out / "run.log").read_text() == "started\nresumed\n"


# -- permissions --------------------------------------------------------------------------------
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"),
                         [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_modes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    out = tmp_path / "out"
    with OutputFolder.open(out) as folder:
        folder.write_text("results.csv", "v1\n")
        folder.write_text("results.csv", "v2\n")  # replaced: same mode, not mkstemp's 0600
        folder.append_line("run.log", "line")
        with folder.temp_file("curve.png") as temp:
            temp.write_bytes(b"PNG")
        aside = folder.set_aside(["curve.png"], "s")
    mode = {n: stat.S_IMODE(os.lstat(out / n).st_mode)
            for n in ["results.csv", "run.log", MANIFEST_NAME]}
    assert mode == dict.fromkeys(mode, file_mode)
    assert stat.S_IMODE((aside / "curve.png").stat().st_mode) == file_mode
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    assert stat.S_IMODE(aside.stat().st_mode) == dir_mode


# -- full disk ----------------------------------------------------------------------------------
def full_disk(monkeypatch, when):
    """os.write writes half of a matching buffer, then fails with ENOSPC on its rest."""
    real = os.write
    calls: list[bytes] = []

    def write(fd, data):
        data = bytes(data)
        if when(data) or (calls and calls[0].endswith(data)):
            calls.append(data)
            if len(calls) == 1 and len(data) > 1:
                return real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return calls


@pytest.mark.parametrize("failing", ["data", "manifest"])
def test_a_full_disk_keeps_the_old_file_and_says_one_line(tmp_path, monkeypatch, failing):
    with OutputFolder.open(tmp_path / "out") as folder:
        folder.write_text("results.csv", "old,results\n")
        before = snapshot(folder.path)
        marker = b"NEW" if failing == "data" else b"robench-output-manifest"
        calls = full_disk(monkeypatch, lambda data: marker in data)
        with pytest.raises(UserError) as err:
            folder.write_text("results.csv", "NEW,results\n" * 100)
        monkeypatch.undo()
        assert len(calls) == 2  # half was written, then the disk was full
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(str(folder.path / "results.csv") + ": could not write")
        assert os.strerror(errno.ENOSPC) in message and "previous version is unchanged" in message
        after = snapshot(folder.path)
        # the old file is untouched (bytes and mtime); the manifest says the same as before
        # (it may have been rewritten and restored); no temp file is left
        assert after.pop(MANIFEST_NAME)[0] == before.pop(MANIFEST_NAME)[0]
        assert after == before
        assert folder.owns("results.csv")
        folder.write_text("results.csv", "after\n")  # space freed: works again
    assert temp_leftovers(tmp_path / "out") == []


def test_a_full_disk_during_an_append_keeps_whole_lines(tmp_path, monkeypatch):
    with OutputFolder.open(tmp_path / "out") as folder:
        folder.append_line("run.log", "first")
        full_disk(monkeypatch, lambda data: data.startswith(b"second"))
        with pytest.raises(UserError, match="No space left on device") as err:
            folder.append_line("run.log", "second line that does not fit")
        monkeypatch.undo()
        assert str(err.value).startswith(str(folder.path / "run.log") + ":")
        assert (folder.path / "run.log").read_text() == "first\n"
        folder.append_line("run.log", "third")
    assert (tmp_path / "out" / "run.log").read_text() == "first\nthird\n"


def test_a_full_disk_in_a_third_party_writer_is_one_line(tmp_path):
    with OutputFolder.open(tmp_path / "out") as folder:
        folder.write_bytes("curve.png", b"old png")
        with pytest.raises(UserError, match="No space left on device") as err, \
                folder.temp_file("curve.png") as temp:
            temp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        assert str(folder.path / "curve.png") in str(err.value)
        assert (folder.path / "curve.png").read_bytes() == b"old png"
        assert folder.owns("curve.png")
    assert temp_leftovers(tmp_path / "out") == []


def test_manifest_temp_left_by_a_kill_is_removed_on_next_open(tmp_path):
    with OutputFolder.open(tmp_path) as folder:
        folder.write_text("results.csv", "a\n")
    left = tmp_path / ".robench-manifest-123-0123456789abcdef.tmp"  # a kill before the rename
    left.write_text("partial")
    other = tmp_path / ".robench-manifest-notours.tmp"  # not robench's name pattern: kept
    other.write_text("x")
    with OutputFolder.open(tmp_path):
        pass
    assert not left.exists() and other.exists() and (tmp_path / "results.csv").exists()
