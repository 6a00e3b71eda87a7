"""run.json records its planned cells (``planned``: defense labels, attack labels with their eps,
seeds), so completeness is checked where the run's plugins are not installed; a run.json whose
plan can be neither read nor resolved ranks nothing. The end-to-end case interrupts a run of a
third-party attack and reads its results where that attack is not installed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from robench.completeness import completeness_of
from robench.leaderboard import build_leaderboard, completeness_notes

from .conftest import REPO, plugin_site
from .test_completeness import planned, table

SUITE = {"name": "s", "data": {"dataset": "mnist"}, "defenses": [{"name": "none"}],
         "attacks": [{"name": "not_installed_attack", "eps": [0.1]}]}
PLANNED = {"defenses": ["none", "at", "weak"], "attacks": {"fgsm": [0.0, 0.1], "pgd": [0.1]},
           "seeds": [0]}


def test_the_planned_record_is_read_without_resolving_the_suite():
    got = completeness_of({"suite": SUITE, "planned": PLANNED}, "run.json")
    assert got.known and got.planned == planned()


@pytest.mark.parametrize("damaged", [
    {**PLANNED, "seeds": ["0"]},
    {**PLANNED, "attacks": {"pgd": 0.1}},
    {**PLANNED, "attacks": {"pgd": [True]}},
    {**PLANNED, "defenses": "none"},
    [1, 2],
])
def test_a_damaged_planned_record_ranks_nothing(damaged):
    plan = completeness_of({"suite": SUITE, "planned": damaged}, "run.json")
    assert not plan.known and not plan.ranked and "run.json: planned" in plan.reason


def test_a_plan_that_cannot_be_resolved_ranks_nothing():
    """Hostile-review finding: run.json without ``planned`` whose suite names a plugin not
    installed here: `none` ranked 1 on the attacks present, completeness "unknown"."""
    plan = completeness_of({"suite": SUITE}, "run.json")
    assert not plan.known and not plan.ranked
    board = build_leaderboard(table(planned()), planned=plan)
    assert (board["rank"] == "").all() and (board["complete"] == "unknown").all()
    assert board["p_vs_none"].isna().all()
    notes = completeness_notes(board)
    assert len(notes) == 1, notes
    assert notes[0].startswith("completeness cannot be checked: run.json's plan cannot be "
                               "resolved here (") and notes[0].endswith("): not ranked"), notes
    assert "not_installed_attack" in notes[0]


def test_a_bare_table_is_still_ranked():
    """No run.json at all: no plan claims cells that could be missing; ranked, and said."""
    plan = completeness_of(None, "run.json")
    board = build_leaderboard(table(planned()), planned=plan)
    assert list(board["rank"]) == ["1", "2", "3"]
    assert completeness_notes(board) == [
        "completeness cannot be checked: no run.json beside results.csv, so the planned cells "
        "are unknown"]


# -- end to end: a third-party attack, interrupted, read where it is not installed -----------
PLUGIN = '''\
"""PGD under a third-party name."""
from robench.attacks.pgd import PGD


class SlowPGD(PGD):
    """PGD, registered by an entry point of its own."""
'''
SLOW_SUITE = """\
name: cut
data: {dataset: mnist, eval_limit: 2000, validation_size: 58000}
train: {epochs: 3}
adaptive: off               # the cells counted here are the suite's own
defenses:
  - name: none
  - name: bit_depth_reduction
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
  - name: slow_pgd
    eps: [0.1]
    params: {steps: 1500, alpha: 0.05, early_stop: false}
"""


@pytest.mark.slow
def test_an_interrupted_run_of_a_plugin_attack_is_incomplete_without_the_plugin(
        tmp_path, cli_env, robench_cli):
    """Hostile-review finding: an interrupted run whose attack plugin is not installed where
    ``robench leaderboard`` runs ranked `none` 1 (status pass, worst case from FGSM alone) and
    left the planned, never measured defense out."""
    env = plugin_site(tmp_path, "slow_attack", PLUGIN, "robench.attacks",
                      "slow_pgd = slow_attack:SlowPGD", cli_env)
    path, out = tmp_path / "cut.yaml", tmp_path / "out"
    path.write_text(SLOW_SUITE)
    proc = subprocess.Popen([sys.executable, "-m", "robench.cli", "run", str(path), "--out",
                             str(out), "-q"], env=env, cwd=REPO, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "results.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(pd.read_csv(out / "results.csv")) == 2  # none's FGSM cells only

    got = robench_cli("leaderboard", str(out / "results.csv"), "--write")  # no plugin here
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr
    lb = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("defense")
    assert lb.loc["none", "rank"] == "" and lb.loc["none", "complete"] == "no"
    assert lb.loc["none", "missing_cells"] == "slow_pgd@0.1"
    assert lb.loc["bit_depth_reduction", "complete"] == "no"
    assert lb.loc["bit_depth_reduction", "missing"] == 3
    assert "cannot be checked" not in got.stdout
