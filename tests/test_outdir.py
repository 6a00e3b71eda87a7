"""robench.outdir: link-safe, ownership-checked, locked results folders (standard library only)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import robench.outdir as outdir
from robench.errors import UserError
from robench.outdir import LOCK_NAME, MANIFEST_NAME, OutputFolder

OUTPUTS = ["results.csv", "run.json", "leaderboard.md", "leaderboard.csv", "checks.csv"]


# -- helpers ----------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (recursively) with its bytes (or link text), mtime, mode."""
    result = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content: object = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            content = "dir"
        else:
            content = path.read_bytes()
        result[str(path.relative_to(folder))] = (content, info.st_mtime_ns,
                                                 stat.S_IMODE(info.st_mode))
    return result


def victim(tmp_path: Path) -> Path:
    """A file outside the results folder that a planted link points at."""
    target = tmp_path / "victim.txt"
    target.write_bytes(b"precious data\n")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    return target


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder)
                  if n.startswith((".robench-tmp-", ".robench-probe-", ".robench-manifest-")))


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


@pytest.fixture
def tokens(monkeypatch):
    """Queue the next random name parts: ``tokens.append("planted")``."""
    queue: list[str] = []
    real = outdir.files.token
    monkeypatch.setattr(outdir.files, "token", lambda: queue.pop(0) if queue else real())
    return queue


def child_env() -> dict[str, str]:
    """Environment for a child Python that imports the same robench.outdir as this test."""
    root = str(Path(outdir.__file__).parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


# -- opening ----------------------------------------------------------------------------------
def test_open_creates_the_folder_as_robenchs_and_releases_the_lock(tmp_path):
    path = tmp_path / "results" / "suite"
    with OutputFolder.open(path) as folder:
        assert folder.created and folder.has_manifest
        assert path.is_dir() and (path / LOCK_NAME).is_file()
        assert manifest(path)["files"] == {}
        assert not folder.owns("results.csv")
    assert folder.closed
    assert sorted(os.listdir(path)) == [MANIFEST_NAME]  # the lock this run made is gone
    with OutputFolder.open(path) as again:
        assert not again.created and again.has_manifest


def test_open_refuses_paths_that_are_not_folders(tmp_path):
    target = victim(tmp_path)
    (tmp_path / "to-file").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = fingerprint(target)
    with pytest.raises(UserError, match="is not a folder"):
        OutputFolder.open(target)
    with pytest.raises(UserError, match="symbolic link to something that is not a folder"):
        OutputFolder.open(tmp_path / "to-file")
    with pytest.raises(UserError, match="symbolic link to something that is not a folder"):
        OutputFolder.open(tmp_path / "dangling")
    with pytest.raises(UserError, match="does not exist"):
        OutputFolder.open(tmp_path / "missing", create=False)
    assert fingerprint(target) == before
    assert not (tmp_path / "missing").exists() and not (tmp_path / "nowhere").exists()


def test_a_link_to_a_folder_is_accepted(tmp_path):
    real = tmp_path / "scratch"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    with OutputFolder.open(tmp_path / "out") as folder:
        assert not folder.created
        folder.write_text("results.csv", "a\n")
    assert (real / "results.csv").read_text() == "a\n"


def test_probe_uses_a_unique_exclusive_name_and_never_follows_a_planted_link(tmp_path, tokens):
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".robench-write-test").symlink_to(target)  # the old fixed probe name
    (out / ".robench-probe-planted").symlink_to(target)  # the first name the probe will try
    tokens.append("planted")
    before = fingerprint(target)
    with OutputFolder.open(out):
        pass
    assert fingerprint(target) == before
    assert os.readlink(out / ".robench-probe-planted") == str(target)  # not removed either
    assert sorted(os.listdir(out)) == [".robench-probe-planted", ".robench-write-test"]


def test_a_planted_link_at_the_lock_name_is_refused(tmp_path):
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(target)
    before = fingerprint(target)
    with pytest.raises(UserError, match="symbolic link") as err:
        OutputFolder.open(out)
    assert "\n" not in str(err.value)
    assert fingerprint(target) == before
    assert os.readlink(out / LOCK_NAME) == str(target)


def test_a_planted_link_at_the_manifest_name_is_refused(tmp_path):
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).symlink_to(target)
    before = fingerprint(target)
    with pytest.raises(UserError, match="symbolic link"):
        OutputFolder.open(out)
    assert fingerprint(target) == before and (out / MANIFEST_NAME).is_symlink()
    # ... and the next run is not blocked by a stale lock
    (out / MANIFEST_NAME).unlink()
    with OutputFolder.open(out):
        pass


# -- links at output, log and temp names --------------------------------------------------------
def test_a_link_at_an_output_name_is_never_followed_or_replaced(tmp_path):
    target = victim(tmp_path)
    before = fingerprint(target)
    with OutputFolder.open(tmp_path / "out") as folder:
        (folder.path / "results.csv").symlink_to(target)
        with pytest.raises(UserError, match="symbolic link") as err:
            folder.write_text("results.csv", "pwned\n")
        assert str(folder.path / "results.csv") in str(err.value)
        assert folder.foreign_conflicts(["results.csv"]) == ["results.csv"]
        with pytest.raises(UserError):
            folder.remove("results.csv")
        # a file robench owned, swapped for a link by someone else, is refused too
        folder.write_text("checks.csv", "mine\n")
        (folder.path / "checks.csv").unlink()
        (folder.path / "checks.csv").symlink_to(target)
        assert not folder.owns("checks.csv")
        with pytest.raises(UserError, match="symbolic link"):
            folder.write_text("checks.csv", "pwned\n")
        assert folder.set_aside(["checks.csv", "results.csv"], "x") is None
    assert fingerprint(target) == before
    assert (tmp_path / "out" / "results.csv").is_symlink()
    assert (tmp_path / "out" / "checks.csv").is_symlink()


def test_a_link_at_the_log_name_is_refused(tmp_path):
    target = victim(tmp_path)
    before = fingerprint(target)
    with OutputFolder.open(tmp_path / "out") as folder:
        (folder.path / "run.log").symlink_to(target)
        with pytest.raises(UserError, match="symbolic link") as err:
            folder.append_line("run.log", "started")
        assert str(folder.path / "run.log") in str(err.value)
    assert fingerprint(target) == before
    assert (tmp_path / "out" / "run.log").is_symlink()


def test_links_planted_at_temp_names_are_skipped_not_followed(tmp_path, tokens):
    target = victim(tmp_path)
    before = fingerprint(target)
    with OutputFolder.open(tmp_path / "out") as folder:
        out = folder.path
        planted = [".robench-tmp-t1.results.csv", ".robench-tmp-t2.curve.png",
                   ".robench-manifest-m1.tmp"]
        for name in planted:
            (out / name).symlink_to(target)
        tokens.append("t1")  # write_text's first temp name
        folder.write_text("results.csv", "new\n")
        tokens.append("t2")  # temp_path's first temp name
        temp = folder.temp_path("curve.png")
        assert temp.name != "curve.png" and not temp.is_symlink() and temp.stat().st_size == 0
        temp.write_bytes(b"PNG")
        folder.commit(temp, "curve.png")
        tokens.append("m1")  # creating a log saves the manifest first
        folder.append_line("run.log", "hello")
        assert (out / "results.csv").read_text() == "new\n"
        assert (out / "curve.png").read_bytes() == b"PNG"
        assert folder.owns("results.csv") and folder.owns("curve.png") and folder.owns("run.log")
    assert fingerprint(target) == before
    assert all((tmp_path / "out" / name).is_symlink() for name in planted)
    assert temp_leftovers(tmp_path / "out") == sorted(planted)  # only the planted links


# -- ownership ----------------------------------------------------------------------------------
def test_a_foreign_folder_stays_byte_identical(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in [("results.csv", "a,b\n1,2\n"), ("leaderboard.md", "# mine\n"),
                       ("run.log", "my log\n"), ("notes.txt", "keep\n"), (".draft.tmp", "x")]:
        (out / name).write_text(text)
    (out / "sub").mkdir()
    (out / "sub" / "checks.csv").write_text("deep\n")
    before = snapshot(out)
    with OutputFolder.open(out) as folder:
        assert not folder.created and not folder.has_manifest
        assert folder.foreign_conflicts(OUTPUTS + ["run.log", "sub"]) == [
            "results.csv", "leaderboard.md", "run.log", "sub"]
        with pytest.raises(UserError) as err:
            folder.refuse_foreign(OUTPUTS)
        message = str(err.value)
        assert "\n" not in message
        assert "robench did not write: results.csv, leaderboard.md;" in message
        assert "choose another --out or move them away" in message
        for name in ["results.csv", "leaderboard.md", "notes.txt"]:
            assert not folder.owns(name)
            with pytest.raises(UserError, match="robench did not write"):
                folder.write_text(name, "overwritten\n")
            with pytest.raises(UserError, match="robench did not write"):
                folder.remove(name)
        with pytest.raises(UserError, match="robench did not write this log"):
            folder.append_line("run.log", "appended")
        assert folder.set_aside(OUTPUTS + ["run.log"], "20240101T000000Z") is None
        assert not folder.has_manifest  # nothing written: nothing recorded
    assert snapshot(out) == before  # no lock, probe, manifest or temp file left behind


def test_new_names_may_be_written_into_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("theirs\n")
    with OutputFolder.open(out) as folder:
        folder.write_text("checks.csv", "robench\n")
        assert folder.has_manifest
        assert folder.owns("checks.csv") and not folder.owns("results.csv")
    with OutputFolder.open(out) as folder:
        assert folder.owns("checks.csv") and not folder.owns("results.csv")
        assert folder.foreign_conflicts(["results.csv", "checks.csv"]) == ["results.csv"]
    assert (out / "results.csv").read_text() == "theirs\n"
    assert set(manifest(out)["files"]) == {"checks.csv"}


def test_owned_files_can_be_replaced_and_removed(tmp_path):
    with OutputFolder.open(tmp_path / "out") as folder:
        folder.write_text("results.csv", "v1\n")
        folder.write_bytes("curve.svg", b"<svg/>")
        assert folder.owns("results.csv")
    with OutputFolder.open(tmp_path / "out") as folder:  # a later run
        assert folder.foreign_conflicts(OUTPUTS + ["curve.svg"]) == []
        folder.write_text("results.csv", "v2\n")
        assert (folder.path / "results.csv").read_text() == "v2\n"
        assert folder.remove("curve.svg") is True
        assert not (folder.path / "curve.svg").exists()
        assert folder.remove("curve.svg") is False  # already gone
    entries = manifest(tmp_path / "out")["files"]
    assert set(entries) == {"results.csv"} and entries["results.csv"]["size"] == 3
    assert temp_leftovers(tmp_path / "out") == []


def test_editing_an_owned_file_by_hand_makes_it_foreign(tmp_path):
    with OutputFolder.open(tmp_path / "out") as folder:
        folder.write_text("results.csv", "acc\n0.91\n")
        folder.write_text("leaderboard.md", "# board\n")
        (folder.path / "results.csv").write_text("acc\n0.99\n")  # same size, other bytes
        os.utime(folder.path / "leaderboard.md", ns=(5, 5))  # a touch is not an edit
        assert not folder.owns("results.csv") and folder.owns("leaderboard.md")
        assert folder.foreign_conflicts(["results.csv", "leaderboard.md"]) == ["results.csv"]
        with pytest.raises(UserError, match="robench did not write"):
            folder.write_text("results.csv", "acc\n0.5\n")
        with pytest.raises(UserError, match="robench did not write"):
            folder.remove("results.csv")
    assert (tmp_path / "out" / "results.csv").read_text() == "acc\n0.99\n"


def test_the_log_is_append_only_and_stays_robenchs_across_runs(tmp_path):
    out = tmp_path / "out"
    with OutputFolder.open(out) as folder:
        folder.append_line("run.log", "one")
        folder.append_line("run.log", "two\n")
        assert folder.owns("run.log")
        with pytest.raises(UserError, match="appending to"):
            folder.write_text("run.log", "clobber\n")
    entry = manifest(out)["files"]["run.log"]
    assert entry["kind"] == "log" and entry["size"] == len("one\ntwo\n")
    with OutputFolder.open(out) as folder:
        folder.append_line("run.log", "three")
    assert (out / "run.log").read_text() == "one\ntwo\nthree\n"
    (out / "run.log").write_text("ONE\ntwo\nthree\n")  # an earlier line edited by hand
    with OutputFolder.open(out) as folder:
        assert not folder.owns("run.log")
        with pytest.raises(UserError, match="robench did not write this log"):
            folder.append_line("run.log", "four")
    assert (out / "run.log").read_text() == "ONE\ntwo\nthree\n"


def test_set_aside_moves_only_owned_files_into_a_new_dated_folder(tmp_path):
    out = tmp_path / "out"
    with OutputFolder.open(out) as folder:
        folder.write_text("results.csv", "old results\n")
        folder.write_text("leaderboard.md", "old board\n")
        folder.append_line("run.log", "old run")
    (out / "checks.csv").write_text("theirs\n")  # a foreign file with an output name
    (out / "leaderboard.md").write_text("edited\n")  # robench's, edited by hand: now foreign
    foreign = {n: fingerprint(out / n) for n in ["checks.csv", "leaderboard.md"]}
    with OutputFolder.open(out) as folder:
        names = ["results.csv", "leaderboard.md", "checks.csv", "run.log", "missing.csv"]
        aside = folder.set_aside(names, "20240102T030405Z")
        assert aside == out / "previous-20240102T030405Z"
        assert sorted(os.listdir(aside)) == ["results.csv", "run.log"]
        assert (aside / "results.csv").read_text() == "old results\n"
        assert (aside / "run.log").read_text() == "old run\n"
        assert not (out / "results.csv").exists() and not (out / "run.log").exists()
        assert {n: fingerprint(out / n) for n in foreign} == foreign
        assert not folder.owns("results.csv")
        folder.write_text("results.csv", "new results\n")
        again = folder.set_aside(["results.csv"], "20240102T030405Z")  # the name is taken
        assert again == out / "previous-20240102T030405Z-2"
        assert (again / "results.csv").read_text() == "new results\n"
        assert (aside / "results.csv").read_text() == "old results\n"
    recorded = manifest(out)
    assert "results.csv" not in recorded["files"]
    assert set(recorded["previous"]["previous-20240102T030405Z"]) == {"results.csv", "run.log"}


def test_temp_path_commit_discard_and_temp_file(tmp_path):
    with OutputFolder.open(tmp_path / "out") as folder:
        temp = folder.temp_path("curve_fgsm.png")
        assert temp.parent == folder.path and temp.name.endswith(".curve_fgsm.png")
        with open(temp, "wb") as handle:  # what matplotlib's savefig does
            handle.write(b"\x89PNG")
        folder.commit(temp, "curve_fgsm.png")
        assert not temp.exists() and folder.owns("curve_fgsm.png")
        unused = folder.temp_path("curve_pgd.png")
        folder.discard(unused)
        assert not unused.exists()
        with pytest.raises(ValueError):
            folder.commit(tmp_path / "elsewhere.png", "curve_pgd.png")
        with folder.temp_file("curve_pgd.svg") as path:
            path.write_text("<svg/>")
        assert (folder.path / "curve_pgd.svg").read_text() == "<svg/>"
        with pytest.raises(RuntimeError), folder.temp_file("curve_pgd.svg") as path:
            path.write_text("half")
            raise RuntimeError("plot failed")
        assert (folder.path / "curve_pgd.svg").read_text() == "<svg/>"
        # committing over a file robench did not write is refused and drops the temp file
        (folder.path / "report.html").write_text("theirs")
        temp = folder.temp_path("report.html")
        with pytest.raises(UserError, match="robench did not write"):
            folder.commit(temp, "report.html")
        assert not temp.exists() and (folder.path / "report.html").read_text() == "theirs"
        left = folder.temp_path("never.png")  # closing drops temp files never committed
    assert not left.exists()
    assert temp_leftovers(tmp_path / "out") == []
    assert manifest(tmp_path / "out")["temps"] == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "x\0y", LOCK_NAME, MANIFEST_NAME,
                                  ".robench-tmp-1.csv"])
def test_names_must_be_plain_and_not_robenchs_bookkeeping(tmp_path, name):
    with OutputFolder.open(tmp_path / "out") as folder:
        with pytest.raises(ValueError):
            folder.write_text(name, "x")
        with pytest.raises(ValueError):
            folder.owns(name)


# -- locking ------------------------------------------------------------------------------------
