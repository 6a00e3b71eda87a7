"""``robench plan`` (robench.preflight): cells done or to do, models cached, what it refuses,
and that it writes and trains nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robench.cli import app

from .test_estimate import TINY


# -- bad input: one line, exit 2, nothing written ------------------------------------------------
@pytest.mark.parametrize("case,args,fragment", [
    ("missing_file", ["missing.yaml"], "suite file not found"),
    ("bad_key", ["{suite}"], "unknown key"),
    ("seeds_junk", ["{good}", "--seeds", "0,x"], "--seeds"),
    ("bad_device", ["{good}", "--device", "tpu"], "unknown device"),
])
def test_bad_input_is_one_line(tmp_path, mnist_root, monkeypatch, case, args, fragment):
    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "colour": "red"}))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    args = [a.format(suite=bad, good=good) for a in args]
    if case == "missing_file":
        args = [str(tmp_path / "missing.yaml")]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["plan", *args, "--out", str(out), "--data-dir",
                                      str(mnist_root), "--no-calibrate"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: ")
    assert fragment in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case,fragment", [
    ("foreign", "holds files robench did not write: results.csv"),
    ("a_file", "is not a folder"),
    ("under_a_file", "cannot create the results folder"),
    ("locked", "another robench run is writing this folder"),
])
def test_plan_refuses_the_folders_run_refuses(tmp_path, mnist_root, monkeypatch, case,
                                              fragment):
    """What `run` refuses about --out, `plan` refuses the same way, writing nothing."""
    import fcntl

    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    holder = None
    if case == "foreign":
        out.mkdir()
        (out / "results.csv").write_text("someone's,own\n1,2\n")
    elif case in ("a_file", "under_a_file"):
        out.write_text("not a folder")
    else:
        out.mkdir()
        holder = os.open(out / ".robench.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a running `robench run` holds it
    target = out / "sub" if case == "under_a_file" else out
    before = snapshot(tmp_path)
    try:
        result = CliRunner().invoke(app, ["plan", str(good), "--out", str(target),
                                          "--data-dir", str(mnist_root), "--no-calibrate"])
    finally:
        if holder is not None:
            os.close(holder)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines
    assert snapshot(tmp_path) == before


# -- end to end on real MNIST ------------------------------------------------------------------
def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under the folders with its size and modification time."""
    found = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                st = (Path(root) / name).stat()
                found[str(Path(root) / name)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.slow
def test_plan_before_and_after_a_run(tmp_path, mnist_root, monkeypatch):
    from robench.preflight import preflight
    from robench.runner import RunOptions

    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(cache))
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "results"
    opts = RunOptions(data_dir=str(mnist_root), out=str(out), quiet=True)
    args = ["plan", str(suite), "--out", str(out), "--data-dir", str(mnist_root)]

    before = preflight(suite, opts, calibrated=False)
    assert before.cells() == 2 * 5 and before.cells("done") == 0
    assert before.seeds[0].baseline_model == "to train"
    assert [d.model for d in before.seeds[0].defenses] == ["free", "to run"]
    printed = CliRunner().invoke(app, args)
    assert printed.exit_code == 0, printed.output
    assert re.search(r"\b10 of 10 cells", printed.output)
    assert "total" in printed.output and "upper bounds" in printed.output
    assert not out.exists() and not cache.exists()  # plan wrote nothing, trained nothing

    ran = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--data-dir",
                                   str(mnist_root)])
    assert ran.exit_code == 0, ran.output
    assert "suite tiny" in ran.output and "ETA" in ran.output  # the overall line

    files = snapshot(out, cache)
    after = preflight(suite, opts, calibrated=True)
    assert after.cells("done") == after.cells() == 10
    assert after.seeds[0].baseline_model == "cached"
    assert [d.model for d in after.seeds[0].defenses] == ["free", "cached"]
    assert all(w.units == 0 for w in after.stage_work().values())
    printed = CliRunner().invoke(app, args)
    assert printed.exit_code == 0 and re.search(r"\b0 of 10 cells", printed.output)
    assert snapshot(out, cache) == files  # nothing written, nothing touched

    # another eps: the new cells are to do, the others stay done
    wider = yaml.safe_load(yaml.safe_dump(TINY))
    wider["attacks"][0]["eps"].append(0.2)
    suite.write_text(yaml.safe_dump(wider))
    more = preflight(suite, opts, calibrated=False)
    todo = [(d.spec.label, eps) for d in more.seeds[0].defenses for a in d.attacks
            for eps, state in a.cells if state != "done"]
    assert todo == [("none", 0.2), ("unlearning", 0.2)]

    quiet = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--data-dir",
                                     str(mnist_root), "--quiet"])
    assert quiet.exit_code == 0 and "ETA" not in quiet.output
