"""``robench plan``: cells done or to do, models cached, the cost model, and the overall
progress line of ``robench run``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robench.cli import app
from robench.estimate import attack_work, baseline_work, defense_work, suite_work
from robench.plan import resolve_raw
from robench.progress import Reporter
from robench.work import Work

TINY = {
    "name": "tiny",
    "data": {"dataset": "mnist", "eval_limit": 60},
    "train": {"epochs": 0},
    "defenses": [{"name": "none"},
                 {"name": "unlearning", "params": {"rounds": 1, "forget_size": 40,
                                                   "retain_size": 80, "monitor_limit": 0}}],
    "attacks": [{"name": "fgsm", "eps": [0.0, 0.1, 0.3]},
                {"name": "pgd", "eps": [0.1, 0.3], "limit": 30, "params": {"steps": 2}}],
}


def plan_of(**changes):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw.update(changes)
    return resolve_raw(raw, "tiny.yaml")


def attack(name, eps=(0.3,), **params):
    return plan_of(attacks=[{"name": name, "eps": list(eps), "params": params}]).attacks[0]


def defense(name, **params):
    return plan_of(defenses=[{"name": name, "params": params}]).defenses[0]


# -- the cost model: monotone in steps, epochs, rounds and images --------------------------------
def test_attack_work_grows_with_steps_restarts_images_and_eps():
    pgd10, pgd40 = attack("pgd", steps=10), attack("pgd", steps=40)
    assert attack_work(pgd40, 100, [0.3]).units > attack_work(pgd10, 100, [0.3]).units
    assert attack_work(attack("pgd", steps=10, restarts=3), 100, [0.3]).grad == \
        3 * attack_work(pgd10, 100, [0.3]).grad
    assert attack_work(pgd10, 200, [0.3]).units > attack_work(pgd10, 100, [0.3]).units
    assert attack_work(pgd10, 100, [0.1, 0.3]).units > attack_work(pgd10, 100, [0.3]).units
    assert attack_work(pgd10, 100, []) == Work()
    # eps 0 is not attacked: only the forward passes that score it
    assert attack_work(pgd10, 100, [0.0, 0.3]).grad == attack_work(pgd10, 100, [0.3]).grad
    square = attack("square", n_queries=1000)
    assert attack_work(square, 100, [0.3]).grad == 0  # queries are forward passes
    assert attack_work(attack("square", n_queries=2000), 100, [0.3]).forward > \
        attack_work(square, 100, [0.3]).forward


def test_shared_sweeps_pay_once_and_bim_pays_its_steps_per_eps():
    fgsm = attack("fgsm", eps=(0.1, 0.2, 0.3))
    assert attack_work(fgsm, 100, [0.1, 0.2, 0.3]).grad == attack_work(fgsm, 100, [0.3]).grad
    bim = attack("bim", eps=(0.1, 0.3))
    assert attack_work(bim, 100, [0.3]).grad > attack_work(bim, 100, [0.1]).grad


def test_autoattack_budget_is_its_components():
    standard, fast = attack("autoattack"), attack("autoattack", version="fast")
    # APGD-CE 100 + APGD-T 9 x 100 + FAB-T 9 x 100 gradient steps, Square 5000 queries
    assert standard.plugin.budget(standard.params) == 1900 + 5000
    assert attack_work(standard, 10, [0.3]) == Work(grad=19_000, forward=50_000 + 20)
    assert attack_work(standard, 10, [0.3]).units > attack_work(fast, 10, [0.3]).units


def test_training_work_grows_with_epochs_steps_rounds_and_images():
    plan = plan_of(train={"epochs": 2})
    assert baseline_work(plan.baseline, 2000).train == 2 * baseline_work(plan.baseline, 1000).train
    assert baseline_work(plan_of(train={"epochs": 3}).baseline, 1000).units > \
        baseline_work(plan.baseline, 1000).units
    config = plan.suite.train

    def cost(spec, n_train=1000):
        return defense_work(spec, config, n_train, 100).units

    pgd5 = defense("adversarial_training", method="pgd", steps=5)
    assert cost(defense("adversarial_training", method="pgd", steps=10)) > cost(pgd5)
    assert cost(defense("adversarial_training", method="pgd", steps=5, epochs=4)) > cost(pgd5)
    assert cost(pgd5, 2000) > cost(pgd5)
    # (steps + 1) training passes per image and epoch, plus the monitor
    assert defense_work(pgd5, config, 1000, 0).train == 2 * 1000 * (5 + 1)
    assert cost(defense("unlearning", rounds=4)) > cost(defense("unlearning", rounds=2))
    assert cost(defense("unlearning", attack="pgd")) > cost(defense("unlearning"))
    assert cost(defense("certified_training", epochs=3)) > \
        cost(defense("certified_training", epochs=1))
    assert cost(defense("none")) == 0 and cost(defense("bit_depth_reduction")) == 0


def test_suite_work_counts_every_seed_and_defense():
    one, three = plan_of(seed=0), plan_of(seeds=[0, 1, 2], seed=None)
    assert suite_work(three, 1000, 100, 60).units == pytest.approx(
        3 * suite_work(one, 1000, 100, 60).units)
    fewer = plan_of(defenses=[{"name": "none"}])
    assert suite_work(fewer, 1000, 100, 60).units < suite_work(one, 1000, 100, 60).units


# -- the overall progress line -----------------------------------------------------------------
def test_overall_line_counts_work_and_is_silent_when_quiet(capsys):
    reporter = Reporter(quiet=False)
    reporter.start_overall(100.0, "suite x")
    reporter.skip(40.0)            # cached: off the total, not done
    reporter.advance(30.0)
    bar = reporter._overall
    assert bar is not None and (bar.n, bar.total) == (30.0, 60.0)
    reporter.advance(45.0)         # float sums never go past the total
    assert bar.n == bar.total == 60.0
    reporter.close_overall()
    assert "suite x" in capsys.readouterr().err

    quiet = Reporter(quiet=True)
    quiet.start_overall(100.0, "suite x")
    quiet.advance(10.0)
    quiet.skip(10.0)
    quiet.close_overall()
    assert capsys.readouterr().err == ""


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
