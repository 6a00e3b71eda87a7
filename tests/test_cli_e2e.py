"""End to end: the real ``robench`` CLI on suites/smoke.yaml with real MNIST."""

import subprocess
import sys

import pandas as pd
import pytest

from robench.results import RESULT_COLUMNS

from .conftest import REPO


def robench(*args, env, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path, cli_env):
    out = tmp_path / "smoke"
    proc = robench("run", "suites/smoke.yaml", "--out", str(out), "--quiet", env=cli_env)
    assert proc.returncode == 0, proc.stderr

    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(results) == 4 + 2  # fgsm at 4 eps, pgd at 2 eps, one defense
    assert results[["clean_acc", "robust_acc"]].apply(lambda c: c.between(0, 1).all()).all()
    assert (results["n"] == 500).all()
    assert results["clean_acc"].iloc[0] > 0.9  # one epoch of LeNet-5 on real MNIST

    fgsm = results[results["attack"] == "fgsm"].sort_values("eps")
    assert fgsm["robust_acc"].iloc[0] == fgsm["clean_acc"].iloc[0]   # eps 0 = clean
    assert fgsm["robust_acc"].is_monotonic_decreasing                 # no rise with eps
    pgd = results[(results["attack"] == "pgd") & (results["eps"] == 0.3)]
    assert pgd["robust_acc"].item() <= fgsm[fgsm["eps"] == 0.3]["robust_acc"].item()

    board = pd.read_csv(out / "leaderboard.csv")
    assert board["defense"].tolist() == ["none"]
    for column in ["clean_acc", "fgsm@0.1", "fgsm_mean", "pgd@0.3", "worst@0.3"]:
        assert column in board
    assert (out / "leaderboard.md").read_text().startswith("# Leaderboard: smoke")
    assert (out / "run.json").exists()

    printed = robench("leaderboard", str(out / "results.csv"), env=cli_env)
    assert printed.returncode == 0 and "| none" in printed.stdout


def test_list_shows_plugins(cli_env):
    proc = robench("list", env=cli_env)
    assert proc.returncode == 0
    for name in ("mnist", "lenet5", "fgsm", "pgd", "none"):
        assert f"  {name} " in proc.stdout


def test_version(cli_env):
    proc = robench("--version", env=cli_env)
    assert proc.returncode == 0 and proc.stdout.startswith("robench ")


@pytest.mark.parametrize("command", ["run", "plan", "list", "leaderboard", "compare", "report"])
def test_every_command_has_help_with_an_example(command):
    from typer.testing import CliRunner

    from robench.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: robench " + command in " ".join(result.output.split())
