"""``robench verify`` on a randomized defense (``gaussian_noise``'s vote): an image's outcome
is a new random draw on every re-attack, so a cell is judged by an exact sign test on the
images that changed (Holm over the run's randomized cells), not by a count. A fresh run
verifies; outcomes shifted one way (a stored accuracy its procedure does not give) are caught.
The real CLI on copies of one small real MNIST run (untrained LeNet-5, so the vote is close
to a coin toss and many images change between draws)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robench.results import read_results
from robench.resume import interval_columns
from robench.verify_attack import RANDOMIZED_ALPHA, CellCheck, least_flagged, sign_test_p

from .conftest import finished_run
from .test_verify_cmd import write_tampered

SUITE = """\
name: vrand
seed: 0
data: {dataset: mnist, eval_limit: 60}
train: {epochs: 0}
adaptive: off
defenses:
  - name: none
  - name: gaussian_noise
    params: {sigma: 0.5, votes: 4, eval_samples: 1}
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
"""


def test_the_sign_test_reads_direction_not_count():
    old = np.array([True] * 10 + [False] * 10)
    swapped = ~old  # 20 changes, 10 each way: no evidence of a shift
    assert sign_test_p(old, old, old, swapped) == 1.0
    one_way = np.zeros(20, dtype=bool)  # 10 changes, all "was correct, now wrong"
    p = sign_test_p(old, old, old, one_way)
    assert p == pytest.approx(2 * 2 * 0.5 ** 10)  # two-sided, doubled for two outcomes
    check = CellCheck("c", 20, 10, 0, "random", p=p)
    assert check.ok is (p >= RANDOMIZED_ALPHA)
    check.p_adjusted = min(1.0, 3 * p)  # Holm over a larger family can clear it
    assert check.ok is (3 * p >= RANDOMIZED_ALPHA)


def test_least_flagged_is_the_smallest_one_way_count_holm_can_flag():
    for cells in (1, 2, 26, 561):
        k = least_flagged(cells)
        old = np.ones(k, dtype=bool)
        gone = np.zeros(k, dtype=bool)
        assert min(1.0, cells * sign_test_p(old, old, old, gone)) < RANDOMIZED_ALPHA
        old, gone = old[1:], gone[1:]
        assert min(1.0, cells * sign_test_p(old, old, old, gone)) >= RANDOMIZED_ALPHA
    assert least_flagged(1) == 7


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("verifyrand"), SUITE)


@pytest.fixture
def run(finished, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    return folder


@pytest.mark.slow
def test_a_randomized_defense_verifies_by_its_sign_test(run, robench_cli):
    proc = robench_cli("verify", str(run), "--sample", "60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("verified: 4 cells, 60 images each re-attacked"), last
    # the untrained vote changes some images between draws; they are allowed by the test
    if " 0 differences " in last:  # the draws agreed: said so, never "bit-identical"
        assert "identical outcomes; the random forward pass of 2 cells drew alike" in last, last
    else:
        assert "sign test per cell" in last and "forward pass is random" in last, last


def _shift_one_way(folder: Path) -> None:
    """Every image of gaussian_noise's fgsm@0.1 cell stored as correct, clean and attacked,
    with results.csv agreeing: a consistent forgery of a better number."""
    outcomes = pd.read_parquet(folder / "outcomes.parquet")
    cell = ((outcomes["defense"] == "gaussian_noise") & (outcomes["attack"] == "fgsm")
            & (outcomes["eps"] == 0.1))
    outcomes.loc[cell, ["clean_correct", "adv_correct"]] = True
    n = int(cell.sum())
    results = read_results(folder)
    row = ((results["defense"] == "gaussian_noise") & (results["attack"] == "fgsm")
           & (results["eps"] == 0.1))
    values = {"clean_acc": 1.0, "robust_acc": 1.0, "attack_success_rate": 0.0,
              **interval_columns("clean_acc", n, n), **interval_columns("robust_acc", n, n)}
    write_tampered(folder, outcomes, results, row, values)


@pytest.mark.slow
def test_outcomes_shifted_one_way_are_caught(run, robench_cli):
    _shift_one_way(run)
    assert robench_cli("leaderboard", str(run), "--write").returncode == 0
    proc = robench_cli("verify", str(run), "--sample", "60")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "sign test p" in x)
    assert line.startswith("[gaussian_noise] fgsm@0.1 seed 0: "), line
    assert "Holm-adjusted" in line and "0 became correct" in line, line
    assert proc.stdout.strip().splitlines()[-1].startswith("NOT verified")


@pytest.mark.slow
def test_retrain_judges_the_retrained_cells_by_holm_too(run, robench_cli):
    """--retrain re-attacks on retrained models: their randomized cells are a Holm family of
    their own, so an honest run is not flagged on a raw p; the shifted cell still is."""
    proc = robench_cli("verify", str(run), "--sample", "60", "--retrain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _shift_one_way(run)
    assert robench_cli("leaderboard", str(run), "--write").returncode == 0
    proc = robench_cli("verify", str(run), "--sample", "60", "--retrain")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flagged = [x for x in proc.stdout.splitlines() if "sign test p" in x]
    assert any(x.startswith("retrained: [gaussian_noise] fgsm@0.1") for x in flagged), flagged
