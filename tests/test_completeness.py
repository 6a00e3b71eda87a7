"""Completeness is part of a row's meaning: a defense whose planned cells (defense x attack x
eps x seed, from run.json's recorded suite) are not all in results.csv is unranked, labelled
incomplete (its worst case covers only the attacks present) and named first in the report's
summary; a planned defense without rows is listed as not measured; a results.csv without
run.json says that completeness cannot be checked. Unit cases give the planned cells directly;
the end-to-end cases use the real CLI on an interrupted run and on copies of committed
results."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from robench.checks import summarise
from robench.leaderboard import build_leaderboard, to_markdown

from .conftest import REPO, result_row

ATTACKS = {"fgsm": [0.0, 0.1], "pgd": [0.1]}
#: per (defense, attack): robust accuracy at eps 0.1; `weak` would rank first on FGSM alone
ACC = {("none", "fgsm"): 0.3, ("none", "pgd"): 0.1, ("at", "fgsm"): 0.7, ("at", "pgd"): 0.6,
       ("weak", "fgsm"): 0.9, ("weak", "pgd"): 0.0}


def planned(defenses=("none", "at", "weak"), seeds=(0,)) -> set[tuple[str, str, float, int]]:
    return {(d, a, e, s) for s in seeds for d in defenses for a, eps in ATTACKS.items()
            for e in eps}


def table(cells) -> pd.DataFrame:
    """results.csv rows of these cells (clean accuracy 1.0; eps 0 is clean)."""
    return pd.DataFrame([result_row(d, a, e, 1.0, 1.0 if e == 0 else ACC[d, a], seed=s)
                         for d, a, e, s in sorted(cells)])


def board(cells, plan):
    return build_leaderboard(table(cells), planned=plan).set_index("defense")


def test_a_defense_missing_a_whole_attack_is_unranked_and_labelled():
    plan = planned()
    got = board(plan - {("weak", "pgd", 0.1, 0)}, plan)
    assert got.loc["weak", "rank"] == "" and got.loc["weak", "complete"] == "no"
    assert got.loc["weak", "missing"] == 1 and got.loc["weak", "missing_cells"] == "pgd@0.1"
    # its worst case is FGSM's alone (0.9): it must not outrank the complete defenses
    assert got.loc["weak", "worst@0.1"] == pytest.approx(0.9)
    assert got.loc["at", "rank"] == "1" and got.loc["none", "rank"] == "2"
    assert (got.loc[["at", "none"], "complete"] == "yes").all()
    assert (got.loc[["at", "none"], "missing"] == 0).all()
    assert list(got.index)[-1] == "weak"
    text = to_markdown(got.reset_index())
    note = [line for line in text.splitlines() if line.startswith("- incomplete: weak")]
    assert len(note) == 1 and "attacks present" in note[0] and "pgd@0.1" in note[0]
    assert "(incomplete)" in next(line for line in text.splitlines() if "| weak" in line)


def test_a_defense_missing_one_eps_is_incomplete():
    plan = planned()
    got = board(plan - {("at", "fgsm", 0.0, 0)}, plan)
    assert got.loc["at", "rank"] == "" and got.loc["at", "complete"] == "no"
    assert got.loc["at", "missing_cells"] == "fgsm@0"
    assert got.loc["none", "rank"] == "1" and got.loc["weak", "rank"] == "2"


def test_a_defense_missing_a_seed_is_incomplete():
    plan = planned(seeds=(0, 1))
    got = board(plan - {c for c in plan if c[0] == "none" and c[3] == 1}, plan)
    assert got.loc["none", "rank"] == "" and got.loc["none", "missing"] == 3
    assert "seed 1" in got.loc["none", "missing_cells"]
    assert got.loc["at", "complete"] == "yes" and got.loc["at", "rank"] != ""


def test_a_planned_defense_without_rows_is_listed_as_not_measured():
    plan = planned(defenses=("none", "at", "weak", "absent"))
    got = board(planned(), plan)
    assert "absent" in got.index and got.loc["absent", "rank"] == ""
    assert got.loc["absent", "complete"] == "no" and got.loc["absent", "missing"] == 3
    assert pd.isna(got.loc["absent", "worst@0.1"])
    text = to_markdown(got.reset_index())
    assert any("absent" in line and "not measured" in line for line in text.splitlines())


def test_a_complete_run_is_ranked_as_before():
    plan = planned()
    before = build_leaderboard(table(plan))
    after = build_leaderboard(table(plan), planned=plan)
    assert (after["complete"] == "yes").all() and (after["missing"] == 0).all()
    shared = [c for c in before.columns if c not in ("complete", "missing", "missing_cells")]
    pd.testing.assert_frame_equal(before[shared], after[shared])
    assert "incomplete" not in to_markdown(after) and "cannot be checked" not in \
        to_markdown(after)


def test_the_complete_check_fails_an_incomplete_defense_and_names_an_absent_one():
    from robench.checks import complete_checks

    plan = planned(defenses=("none", "at", "weak", "absent"))
    checks = pd.DataFrame(complete_checks(table(planned() - {("at", "pgd", 0.1, 0)}), plan))
    status = summarise(checks).set_index("defense")["status"]
    assert status.to_dict() == {"none": "pass", "at": "fail", "weak": "pass", "absent": "fail"}
    assert set(checks["check"]) == {"complete"}
    got = build_leaderboard(table(planned() - {("at", "pgd", 0.1, 0)}), summarise(checks),
                            planned=plan).set_index("defense")
    assert got.loc["at", "status"] == "fail" and got.loc["absent", "status"] == "fail"


def test_rows_of_a_defense_the_plan_does_not_list_are_not_ranked():
    from robench.checks import complete_checks

    plan = planned(defenses=("none", "at"))
    checks = pd.DataFrame(complete_checks(table(planned()), plan))
    assert summarise(checks).set_index("defense").loc["weak", "status"] == "fail"
    got = board(planned(), plan)
    assert got.loc["weak", "rank"] == "" and got.loc["weak", "complete"] == "no"
    assert got.loc["weak", "missing_cells"] == "not in the run's plan"
    assert got.loc["at", "rank"] == "1"


def test_without_a_plan_completeness_is_unknown_and_said_once():
    got = build_leaderboard(table(planned()))
    assert (got["complete"] == "unknown").all() and got["missing"].isna().all()
    text = to_markdown(got)
    assert sum("completeness cannot be checked" in line for line in text.splitlines()) == 1
    assert list(got["rank"]) == ["1", "2", "3"]  # nothing is unranked for it


def _report_markdown(results, plan, tmp_path):
    from robench.checks import complete_checks
    from robench.outdir import OutputFolder
    from robench.report import write_report

    checks = pd.DataFrame(complete_checks(results, plan) if plan is not None else [],
                          columns=["defense", "check", "status", "detail"])
    lb = build_leaderboard(results, summarise(checks) if len(checks) else None, planned=plan)
    with OutputFolder.open(tmp_path / "report") as out:
        md, _ = write_report(out, results, checks, lb, source=tmp_path)
    html = (tmp_path / "report" / "report.html").read_text()
    return md.read_text(), html


def _summary_first_line(md: str) -> str:
    after = md.split("## Summary", 1)[1].strip().splitlines()
    return after[0]


def test_the_report_summary_says_first_which_defenses_are_incomplete(tmp_path):
    plan = planned(defenses=("none", "at", "weak", "absent"))
    md, html = _report_markdown(table(planned() - {("weak", "pgd", 0.1, 0)}), plan, tmp_path)
    first = _summary_first_line(md)
    assert first.lower().startswith("**incomplete run"), first
    assert "weak" in first and "absent" in first and "not measured" in first
    assert "incomplete" in md.split("## Summary", 1)[0]  # the headline counts them
    summary = html.split("id='summary'", 1)[1]
    assert "Incomplete run" in summary.split("<table", 1)[0]


def test_an_incomplete_defense_with_an_odd_label_is_named_escaped(tmp_path):
    evil = "<b>x|y</b>"
    cells = {(evil if d == "weak" else d, a, e, s) for d, a, e, s in planned()}
    results = table(planned()).replace({"defense": {"weak": evil}})
    md, html = _report_markdown(results.query("attack != 'pgd' or defense != @evil"),
                                cells, tmp_path)
    first = _summary_first_line(md)
    assert "x\\|y" in first and "<b>" not in first  # escape_markdown: no tag, no table break
    assert "<b>x" not in html and "&lt;b&gt;x|y&lt;/b&gt;" in html


def test_no_p_value_against_an_incomplete_baseline():
    from .test_leaderboard import cells as outcome_cells

    plan = {(d, a, 0.3, 0) for d in ("none", "at") for a in ("fgsm", "pgd")}
    rng = __import__("numpy").random.default_rng(0)
    none = outcome_cells("none", {"fgsm": rng.random(200) < 0.3})
    at = outcome_cells("at", {"fgsm": rng.random(200) < 0.8, "pgd": rng.random(200) < 0.7})
    results = pd.DataFrame(none[0] + at[0])
    outcomes = pd.concat([none[1], at[1]])
    with_p = build_leaderboard(results, outcomes=outcomes).set_index("defense")
    assert with_p.loc["at", "p_vs_none"] < 0.05  # today's p-value: against FGSM alone
    got = build_leaderboard(results, outcomes=outcomes, planned=plan).set_index("defense")
    assert got["p_vs_none"].isna().all() and got.loc["at", "rank"] == "1"


def test_the_report_says_when_completeness_cannot_be_checked(tmp_path):
    md, _ = _report_markdown(table(planned()), None, tmp_path)
    assert "completeness cannot be checked" in _summary_first_line(md).lower()


# -- the real CLI ----------------------------------------------------------------------------
COMMITTED = sorted(p.parent for p in (REPO / "results").glob("*/run.json"))


def test_every_committed_run_records_a_complete_plan():
    from robench.completeness import completeness_of, read_run_record
    from robench.outdir import RunFiles
    from robench.results import read_results

    assert len(COMMITTED) == 7
    for folder in COMMITTED:
        known = completeness_of(read_run_record(RunFiles.of(folder)), folder / "run.json")
        assert known.planned is not None, (folder, known.reason)
        assert known.missing(read_results(folder)) == {}, folder


@pytest.mark.slow
@pytest.mark.parametrize("name", ["madry_mnist_short", "seed_claim"])
def test_leaderboard_on_a_copy_of_committed_results_is_complete(tmp_path, robench_cli, name):
    copy = tmp_path / name
    shutil.copytree(REPO / "results" / name, copy)
    proc = robench_cli("leaderboard", str(copy / "results.csv"), "--write")
    assert proc.returncode == 0, proc.stderr
    assert "incomplete" not in proc.stdout and "cannot be checked" not in proc.stdout
    lb = pd.read_csv(copy / "leaderboard.csv")
    assert (lb["complete"] == "yes").all() and (lb["missing"] == 0).all()
    assert lb["rank"].notna().all()


@pytest.mark.slow
def test_a_bare_results_csv_says_completeness_cannot_be_checked(tmp_path, robench_cli):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(REPO / "results" / "madry_mnist_short" / "results.csv", bare)
    proc = robench_cli("leaderboard", str(bare / "results.csv"), "--write")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "completeness cannot be checked"
             in line]
    assert len(lines) == 1 and "run.json" in lines[0]
    lb = pd.read_csv(bare / "leaderboard.csv")
    assert (lb["complete"] == "unknown").all() and lb["rank"].notna().all()
    assert "completeness cannot be checked" in _summary_first_line(
        (bare / "report.md").read_text()).lower()


SLOW_SUITE = """\
name: cut
adaptive: off
data: {dataset: mnist, eval_limit: 2000, validation_size: 58000}
train: {epochs: 3}
defenses:
  - name: none
  - name: bit_depth_reduction
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
  - name: pgd
    eps: [0.1]
    params: {steps: 1500, alpha: 0.05, early_stop: false}
"""


@pytest.mark.slow
def test_an_interrupted_run_ranks_no_incomplete_defense(tmp_path, cli_env, robench_cli):
    # cells run seed, defense, attack, eps: `none`'s two FGSM cells, then its slow PGD cell,
    # interrupted as Ctrl-C in a terminal would (SIGINT; see test_reliability.start_slow). The
    # model is trained (on 2000 images) so that no other check unranks `none`: only its
    # missing PGD cell may.
    path, out = tmp_path / "cut.yaml", tmp_path / "out"
    path.write_text(SLOW_SUITE)
    proc = subprocess.Popen([sys.executable, "-m", "robench.cli", "run", str(path), "--out",
                             str(out), "-q"], env=cli_env, cwd=REPO, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "results.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(pd.read_csv(out / "results.csv")) == 2  # none's FGSM cells only

    got = robench_cli("leaderboard", str(out / "results.csv"), "--write")
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr
    lb = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("defense")
    assert lb.loc["none", "rank"] == "" and lb.loc["none", "complete"] == "no"
    assert lb.loc["none", "missing_cells"] == "pgd@0.1" and lb.loc["none", "status"] == "fail"
    assert lb.loc["bit_depth_reduction", "complete"] == "no"
    assert lb.loc["bit_depth_reduction", "missing"] == 3
    assert any("none" in line and "incomplete" in line and "attacks present" in line
               for line in got.stdout.splitlines())
    assert any("bit_depth_reduction" in line and "not measured" in line
               for line in got.stdout.splitlines())
    first = _summary_first_line((out / "report.md").read_text())
    assert first.lower().startswith("**incomplete run") and "none" in first
    checks = pd.read_csv(out / "checks.csv").set_index(["defense", "check"])
    assert checks.loc[("none", "complete"), "status"] == "fail"


def test_a_recorded_plan_has_the_cells_of_the_plan_it_records():
    # two definitions of a run's cells (a resolved plan's for the recorder, a recorded suite's
    # for the leaderboard) come from one function and agree: labels, eps, seeds
    from robench.completeness import planned_cells
    from robench.plan import resolve_raw
    from robench.recorder import plan_cells

    # a run.json without `planned` predates adaptive attacks (its suite reads as `off`)
    suite = {"name": "cells", "seeds": [0, 3], "data": {"dataset": "mnist", "eval_limit": 50},
             "train": {"epochs": 0}, "adaptive": "off",
             "defenses": [{"name": "none"}, {"name": "bit_depth_reduction", "params": {"bits": 3}},
                          {"name": "bit_depth_reduction", "params": {"bits": 5}}],
             "attacks": [{"name": "fgsm", "eps": [0.0, 0.1, 0.30000000001]},
                         {"name": "pgd", "label": "pgd2", "eps": [0.2],
                          "params": {"steps": 2}}]}
    cells = plan_cells(resolve_raw(suite, "s.yaml"))
    assert len(cells) == 3 * 4 * 2
    assert cells == planned_cells({"suite": suite}, "run.json")
