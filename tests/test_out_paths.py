"""Where ``--out`` points: a path is resolved (``..``, links, the working folder robench started
in) before any guard looks at it, so ``compare --out`` never writes into or over a results
folder and ``leaderboard --out`` never into another run's folder, whatever detour the path
takes. Each refusal is one line, exit code 2, and the results folders are byte-identical after.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import REPO

#: small committed results folders, copied (never used in place)
RUN_A = REPO / "results" / "madry_mnist_short"
RUN_B = REPO / "results" / "backends"


def copy_run(tmp_path: Path, source: Path = RUN_A, name: str = "R") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (folders and links too) with a file's bytes."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink()
                                         else None)
            for p in sorted(folder.rglob("*"))}


def one_line_error(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_compare_out_through_a_missing_folder_cannot_overwrite_results_csv(tmp_path,
                                                                            robench_cli):
    """The issue's case: ``newsub/`` does not exist, so ``newsub/../results.csv`` looked new."""
    run = copy_run(tmp_path)
    before = tree(run)
    line = one_line_error(robench_cli("compare", str(run), str(run), "--out",
                                      str(run / "newsub" / ".." / "results.csv")))
    assert "results.csv" in line
    assert tree(run) == before  # no newsub/ either


def test_compare_out_cannot_replace_outcomes_through_dotdot(tmp_path, robench_cli):
    run = copy_run(tmp_path)
    before = tree(run)
    line = one_line_error(robench_cli("compare", str(run), str(run), "--out",
                                      str(run / "a" / "b" / ".." / ".." / "outcomes.parquet")))
    assert "outcomes.parquet" in line
    assert tree(run) == before


def test_compare_out_through_a_linked_parent_cannot_write_into_a_results_folder(tmp_path,
                                                                                robench_cli):
    run = copy_run(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    before = tree(run)
    for out in (link / "newsub" / ".." / "diff.md", link / "diff.md",
                link / "newsub" / ".." / "report.md"):
        line = one_line_error(robench_cli("compare", str(run), str(run), "--out", str(out)))
        assert "results folder" in line or "exists" in line, line
        assert tree(run) == before


def test_compare_out_in_a_new_folder_inside_a_results_folder_is_refused(tmp_path,
                                                                        robench_cli):
    """A parent that does not exist yet, under a results folder: nothing is created there."""
    run = copy_run(tmp_path)
    before = tree(run)
    line = one_line_error(robench_cli("compare", str(run), str(run), "--out",
                                      str(run / "new" / "dir" / "diff.md")))
    assert "results folder" in line
    assert tree(run) == before


def test_compare_out_never_follows_a_link_at_its_name(tmp_path, robench_cli):
    run = copy_run(tmp_path)
    dangling, to_file = tmp_path / "dangling.md", tmp_path / "to_file.md"
    dangling.symlink_to(run / "not_yet.md")
    to_file.symlink_to(run / "results.csv")
    before = tree(run)
    for out in (dangling, to_file):
        one_line_error(robench_cli("compare", str(run), str(run), "--out", str(out)))
        assert tree(run) == before and out.is_symlink()


def test_compare_out_relative_and_in_new_folders_elsewhere_still_works(tmp_path, robench_cli):
    run = copy_run(tmp_path)
    before = tree(run)
    work = tmp_path / "work"
    work.mkdir()
    result = robench_cli("compare", str(run), str(run), "--out", "new/dir/../diff.md", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "new" / "diff.md").read_text() == result.stdout
    assert tree(run) == before


@pytest.mark.slow
def test_leaderboard_out_through_a_missing_folder_cannot_write_into_another_run(tmp_path,
                                                                               robench_cli):
    run, other = copy_run(tmp_path), copy_run(tmp_path, RUN_B, "other")
    before = tree(other)
    line = one_line_error(robench_cli("leaderboard", str(run / "results.csv"), "--out",
                                      str(other / "newsub" / "..")))
    assert "another run's results.csv" in line
    assert tree(other) == before
