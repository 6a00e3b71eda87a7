"""Reliability end to end: kill -9 and resume, determinism, and a warm re-run from the cache."""

import subprocess
import sys

import pandas as pd
import pytest

from .conftest import (
    REPO,
    REUSE_ATTACKS,
    REUSE_DEFENSES,
    kill_when_written,
    reuse_suite,
    run_logged,
)

SUITE = """
name: resume
seed: 0
data: {dataset: mnist, eval_limit: 1000, validation_size: 55000}
train: {epochs: 1}
defenses:
  - name: none
attacks:
  - name: fgsm
    eps: [0.0, 0.1, 0.2]
  - name: pgd
    eps: [0.1, 0.2]
    params: {steps: 30, alpha: 0.01}
  - name: pgd
    label: pgd_long
    eps: [0.3]
    params: {steps: 60, alpha: 0.01}
"""
TIMING = ["attack_seconds", "defense_seconds", "created_at"]


def start(suite, out, env, *extra):
    return subprocess.Popen([sys.executable, "-m", "robench.cli", "run", str(suite), "--out",
                             str(out), "--quiet", *extra], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, cli_env):
    suite = tmp_path / "resume.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    proc = start(suite, out, cli_env)
    csv = out / "results.csv"
    kill_when_written(proc, csv, 300)
    partial = pd.read_csv(csv)  # never torn: written by rename
    assert 0 < len(partial) < 6
    done_before = partial.set_index(["attack", "eps"])["created_at"]

    resumed = start(suite, out, cli_env)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    final = pd.read_csv(csv)
    assert len(final) == 6
    assert not final.duplicated(["defense", "attack", "eps", "seed"]).any()
    after = final.set_index(["attack", "eps"])["created_at"]
    for key, stamp in done_before.items():
        assert after[key] == stamp  # finished cells were not recomputed
    log = (out / "run.log").read_text()
    assert "loaded from cache" in log and "already in results.csv" in log
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_same_seed_same_results_and_warm_rerun(tmp_path, cli_env):
    suite = tmp_path / "det.yaml"
    suite.write_text(SUITE.replace("steps: 60", "steps: 5").replace("steps: 30", "steps: 5"))
    a, b = tmp_path / "a", tmp_path / "b"
    assert start(suite, a, cli_env).wait() == 0
    assert start(suite, b, cli_env, "--force").wait() == 0   # retrains, ignores the cache
    first = pd.read_csv(a / "results.csv").drop(columns=TIMING)
    second = pd.read_csv(b / "results.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(first, second)

    # a warm re-run of a finished suite recomputes nothing: it verifies the complete run
    # and writes nothing (robench.fresh_clone)
    stamp = (a / "results.csv").stat().st_mtime_ns
    log = (a / "run.log").read_bytes()
    assert start(suite, a, cli_env).wait() == 0
    assert (a / "run.log").read_bytes() == log
    assert (a / "results.csv").stat().st_mtime_ns == stamp  # not even rewritten


@pytest.mark.slow
def test_a_resume_keeps_the_suite_order_of_rows_and_leaderboard_columns(tmp_path, robench_cli):
    # a resume re-runs stale cells after the others; results.csv and the leaderboard still
    # list them in the suite's order (pgd before fgsm here)
    suite = tmp_path / "s.yaml"
    suite.write_text(reuse_suite(REUSE_DEFENSES[:1], [REUSE_ATTACKS[1], REUSE_ATTACKS[0]]))
    out = tmp_path / "o"
    run_logged(robench_cli, suite, out)
    keys = ["defense", "attack", "eps"]
    rows = pd.read_csv(out / "results.csv")[keys]
    header = (out / "leaderboard.csv").read_text().splitlines()[0]
    assert header.index("pgd@") < header.index("fgsm@")

    suite.write_text(suite.read_text().replace("steps: 3", "steps: 4"))  # pgd's cell is stale
    run_logged(robench_cli, suite, out)
    resumed = (out / "run.log").read_text().split("suite reuse:")[-1]  # a new suite: new log
    assert "[none] pgd robust accuracy" in resumed
    assert "[none] fgsm: already in results.csv, skipped" in resumed
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[keys], rows)
    assert (out / "leaderboard.csv").read_text().splitlines()[0] == header
