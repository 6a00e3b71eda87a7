"""End to end: the real ``robench`` CLI on suites/smoke.yaml with real MNIST."""

import pandas as pd
import pytest

from robench.results import RESULT_COLUMNS

from .conftest import REUSE_ATTACKS, REUSE_DEFENSES, reuse_suite, run_logged


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path, robench_cli):
    out = tmp_path / "smoke"
    proc = robench_cli("run", "suites/smoke.yaml", "--out", str(out), "--quiet")
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

    printed = robench_cli("leaderboard", str(out / "results.csv"))
    assert printed.returncode == 0 and "| none" in printed.stdout


def test_list_shows_plugins(robench_cli):
    proc = robench_cli("list")
    assert proc.returncode == 0
    for name in ("mnist", "lenet5", "fgsm", "pgd", "none"):
        assert f"  {name} " in proc.stdout


def test_version(robench_cli):
    proc = robench_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("robench ")


@pytest.mark.parametrize("command", ["run", "plan", "list", "leaderboard", "compare", "report"])
def test_every_command_has_help_with_an_example(command):
    from typer.testing import CliRunner

    from robench.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: robench " + command in " ".join(result.output.split())


@pytest.mark.slow
def test_run_leaderboard_and_report_share_one_finalize(tmp_path, plugin_env, robench_subprocess):
    suite = tmp_path / "s.yaml"
    suite.write_text(reuse_suite(REUSE_DEFENSES[:1], REUSE_ATTACKS[:2]))
    out = tmp_path / "o"
    run_logged(robench_subprocess, suite, out, plugin_env)
    files = ("checks.csv", "leaderboard.csv", "leaderboard.md", "report.md")
    written = {name: (out / name).read_bytes() for name in files}
    assert "input_gradients" in written["checks.csv"].decode()  # model diagnostics included
    assert robench_subprocess("leaderboard", str(out / "results.csv"), "--write",
                              env=plugin_env).returncode == 0
    assert robench_subprocess("report", str(out), env=plugin_env).returncode == 0
    for name in files:
        assert (out / name).read_bytes() == written[name], name
