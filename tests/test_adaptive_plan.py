"""Escalation (``adaptive: auto | off``) and attacks restricted to some defenses
(``attacks[i].defenses``): the plan's cells, their record, completeness, the leaderboard and an
end-to-end run on real MNIST (docs/adaptive.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import save_file

from robench.completeness import planned_cells, planned_record, recorded_cells
from robench.config import parse_suite, recorded_suite
from robench.errors import UserError
from robench.plan import applies, resolve_raw
from robench.recorder import plan_cells

from .test_out_paths import one_line_error


def suite(adaptive: str | None = None, pgd_defenses: list[str] | None = None,
          **extra) -> dict:
    pgd = {"name": "pgd", "eps": [0.3], "limit": 50,
           "params": {"steps": 10, "alpha": 0.05}}
    if pgd_defenses is not None:
        pgd["defenses"] = pgd_defenses
    raw = {"name": "adapt", "data": {"dataset": "mnist", "eval_limit": 100},
           "train": {"epochs": 0},
           "defenses": [{"name": "none"}, {"name": "bit_depth_reduction", "params": {"bits": 1}}],
           "attacks": [{"name": "fgsm", "eps": [0.1, 0.3]}, pgd], **extra}
    if adaptive is not None:
        raw["adaptive"] = adaptive
    return raw


def test_auto_is_the_default_and_adds_bpda_for_the_surrogate_defense_only():
    plan = resolve_raw(suite(), "s.yaml")
    assert plan.suite.adaptive == "auto"  # written out: run.json records what ran
    labels = [a.label for a in plan.attacks]
    assert labels == ["fgsm", "pgd", "bpda[of=pgd]"]
    pgd, bpda = plan.attacks[1], plan.attacks[2]
    assert bpda.name == "bpda" and bpda.defenses == ("bit_depth_reduction",)
    # same eps, limit, role and params: only the gradient differs, and it starts where pgd does
    assert (bpda.eps, bpda.limit, bpda.role) == (pgd.eps, pgd.limit, "eval")
    assert bpda.params_json == pgd.params_json and bpda.seed == pgd.seed
    assert "bit_depth_reduction" in bpda.adaptive and "surrogate" in bpda.adaptive
    assert not applies(bpda, "none") and applies(bpda, "bit_depth_reduction")
    assert [a.label for a in plan.attacks_on("none")] == ["fgsm", "pgd"]
    cells = plan_cells(plan)
    assert ("bit_depth_reduction", "bpda[of=pgd]", 0.3, 0) in cells
    assert not any(c[0] == "none" and c[1] == "bpda[of=pgd]" for c in cells)
    assert len(cells) == 2 * 3 + 1


def test_off_and_no_surrogate_defense_add_nothing(tmp_path):
    assert [a.label for a in resolve_raw(suite("off"), "s.yaml").attacks] == ["fgsm", "pgd"]
    # YAML reads a bare `off` as false: the same
    from robench.plan import load_plan

    path = tmp_path / "s.yaml"
    path.write_text("adaptive: off\n" + "\n".join(f"{k}: {json.dumps(v)}"
                                                    for k, v in suite().items()))
    assert [a.label for a in load_plan(path).attacks] == ["fgsm", "pgd"]
    raw = suite()
    raw["defenses"] = [{"name": "none"}]
    plan = resolve_raw(raw, "s.yaml")
    assert [a.label for a in plan.attacks] == ["fgsm", "pgd"]
    assert planned_record(plan) == {"defenses": ["none"], "attacks": {"fgsm": [0.1, 0.3],
                                                                      "pgd": [0.3]},
                                    "seeds": [0]}  # as before restrictions existed


def test_a_suite_bpda_entry_is_not_repeated_and_non_pgd_params_are_said():
    raw = suite()
    raw["attacks"].append({"name": "bpda", "eps": [0.3], "limit": 50,
                           "params": {"steps": 10, "alpha": 0.05}})
    assert [a.label for a in resolve_raw(raw, "s.yaml").attacks] == ["fgsm", "pgd", "bpda"]
    raw = suite()
    raw["attacks"].append({"name": "bim", "eps": [0.3]})
    plan = resolve_raw(raw, "s.yaml")
    assert "bpda[of=bim]" not in [a.label for a in plan.attacks]
    assert plan.adaptive_notes == ("no adaptive variant of bim for bit_depth_reduction: "
                                   "bim's params are not bpda's",)


def test_a_randomized_defense_gets_the_eot_variant_or_a_reason(monkeypatch):
    from robench.attacks import ATTACKS
    from robench.defenses import DEFENSES

    monkeypatch.setattr(DEFENSES.get("none"), "randomized", True, raising=False)
    plan = resolve_raw(suite(adaptive_eot_samples=7), "s.yaml")
    if "eot_samples" in ATTACKS.get("pgd").Params.model_fields:
        eot = next(a for a in plan.attacks if a.label == "pgd[eot=7]")
        assert eot.defenses == ("none",) and json.loads(eot.params_json)["eot_samples"] == 7
    else:
        assert plan.adaptive_notes == ("no adaptive variant of pgd for none: pgd takes no "
                                       "eot_samples (no EOT variant exists)",)


def test_a_user_restriction_limits_the_cells_and_is_recorded():
    plan = resolve_raw(suite("off", pgd_defenses=["bit_depth_reduction"]), "s.yaml")
    assert [(d.label, a.label) for d, a in plan.pairs()] == [
        ("none", "fgsm"), ("bit_depth_reduction", "fgsm"), ("bit_depth_reduction", "pgd")]
    record = planned_record(plan)
    assert record["only"] == {"pgd": ["bit_depth_reduction"]}
    # read back without any plugin: the same cells as the plan's
    assert recorded_cells(json.loads(json.dumps(record)), "run.json") == plan_cells(plan)


@pytest.mark.parametrize(("change", "where", "says"), [
    (lambda r: r["attacks"][1].update(defenses=["none", "bdr"]), "attacks[1].defenses[1]",
     "'bdr' is not a defense label of this suite"),
    (lambda r: r["attacks"][1].update(defenses=["none", "none"]), "attacks[1].defenses[1]",
     "listed twice"),
    (lambda r: r["attacks"][1].update(defenses=[]), "attacks[1].defenses", "at least 1"),
    (lambda r: r.update(adaptive="maybe"), "adaptive", "'auto' or 'off'"),
    (lambda r: r.update(adaptive_eot_samples=0), "adaptive_eot_samples", "greater than"),
    (lambda r: r["attacks"].append({"name": "fgsm", "label": "bpda[of=pgd]", "eps": [0.2]}),
     "attacks[1]", "adaptive: off"),
])
def test_bad_input_names_the_key(change, where, says):
    raw = suite()
    change(raw)
    with pytest.raises(UserError) as err:
        resolve_raw(raw, "s.yaml")
    assert err.value.where == f"s.yaml: {where}" and says in err.value.message


def test_a_recorded_suite_without_the_key_ran_without_adaptive_attacks():
    # an old run.json (no `adaptive`, no `planned`) with bit_depth_reduction: no bpda cells
    # are planned, so none is missing
    raw = parse_suite(suite(), "s").model_dump(mode="json")
    del raw["adaptive"]
    assert recorded_suite(raw, "run.json").adaptive == "off"
    run = {"suite": raw}
    assert {c[1] for c in planned_cells(run, "run.json")} == {"fgsm", "pgd"}
    assert recorded_suite({**raw, "adaptive": "auto"}, "run.json").adaptive == "auto"


def _weights(folder: Path, trained_lenet) -> None:
    save_file({k: v.contiguous() for k, v in trained_lenet.state_dict().items()},
              folder / "w.safetensors")


def _write(folder: Path, raw: dict) -> Path:
    raw = {**raw, "model": {"name": "lenet5", "weights": str(folder / "w.safetensors")}}
    raw["data"] = {**raw["data"], "validation_size": 100}
    path = folder / "s.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


@pytest.mark.slow
def test_auto_end_to_end_bpda_in_the_worst_case_resume_and_verify(tmp_path, robench_cli,
                                                                   trained_lenet):
    _weights(tmp_path, trained_lenet)
    out = tmp_path / "out"
    path = _write(tmp_path, suite())
    proc = robench_cli("run", str(path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(out / "results.csv")
    bpda = results[results["attack"] == "bpda[of=pgd]"]
    assert list(bpda["defense"]) == ["bit_depth_reduction"]
    planned = json.loads((out / "run.json").read_text())["planned"]
    assert planned["only"] == {"bpda[of=pgd]": ["bit_depth_reduction"]}
    assert "surrogate" in planned["adaptive"]["bpda[of=pgd]"]

    board = pd.read_csv(out / "leaderboard.csv").set_index("defense")
    assert set(board["complete"]) == {"yes"}
    bdr = board.loc["bit_depth_reduction"]
    # BPDA breaks the 1-bit quantiser where plain PGD does not, and the worst case has it
    assert bdr["bpda[of=pgd]@0.3"] < bdr["pgd@0.3"] - 0.2
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    cells = outcomes[(outcomes["defense"] == "bit_depth_reduction") & (outcomes["eps"] == 0.3)]
    robust = (cells["clean_correct"] & cells["adv_correct"]).groupby(cells["image"]).agg(
        ["all", "size"])
    common = robust[robust["size"] == 3]  # the 50 images every attack at 0.3 saw
    assert bdr["worst@0.3"] == pytest.approx(common["all"].mean())
    assert bdr["worst@0.3"] <= bdr["bpda[of=pgd]@0.3"]
    md = (out / "leaderboard.md").read_text()
    assert "not run" in md and "adaptive: bpda\\[of=pgd\\]" in md
    assert "adaptive: bpda\\[of=pgd\\]" in (out / "report.md").read_text()

    stamp = (out / "results.csv").stat().st_mtime_ns
    proc = robench_cli("run", str(path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.csv").stat().st_mtime_ns == stamp  # the resume computed nothing
    log = (out / "run.log").read_text().split("suite resume:")[-1]
    assert log.count("already in results.csv") == 2 + 3  # none: 2 attacks, bdr: 3

    proc = robench_cli("verify", str(out), "--sample", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_off_and_a_user_restriction_end_to_end(tmp_path, robench_cli, trained_lenet):
    _weights(tmp_path, trained_lenet)
    out = tmp_path / "out"
    raw = suite("off", pgd_defenses=["none"])
    raw["data"]["eval_limit"] = 30
    del raw["attacks"][1]["limit"]
    proc = robench_cli("run", str(_write(tmp_path, raw)), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(out / "results.csv")
    assert sorted(zip(results["defense"], results["attack"], results["eps"], strict=True)) == [
        ("bit_depth_reduction", "fgsm", 0.1), ("bit_depth_reduction", "fgsm", 0.3),
        ("none", "fgsm", 0.1), ("none", "fgsm", 0.3), ("none", "pgd", 0.3)]
    board = pd.read_csv(out / "leaderboard.csv").set_index("defense")
    assert set(board["complete"]) == {"yes"}
    row = next(line for line in (out / "leaderboard.md").read_text().splitlines()
               if line.startswith("|") and "bit_depth_reduction" in line)
    assert "not run" in row


@pytest.mark.parametrize(("change", "key"), [
    (lambda r: r["attacks"][1].update(defenses=["bdr"]), "attacks[1].defenses[0]"),
    (lambda r: r.update(adaptive="maybe"), "adaptive"),
])
def test_bad_input_on_the_command_line(tmp_path, robench_cli, change, key):
    raw = suite()
    change(raw)
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(raw))
    line = one_line_error(robench_cli("plan", str(path), "--no-calibrate"))
    assert line.startswith(f"{path}: {key}: ") or f"{path}: {key}" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_robench_plan_lists_the_adaptive_cells_and_why(tmp_path, robench_cli):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(suite()))
    proc = robench_cli("plan", str(path), "--no-calibrate", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "adaptive: auto" in text
    assert ("adaptive bpda[of=pgd]: bpda (variant of pgd) for bit_depth_reduction: it declares "
            "a differentiable surrogate (has_surrogate)") in text
    assert "│ bpda[of=pgd] │ 50" in text  # its row in the cell table, priced as any other
    assert text.count("bpda[of=pgd] │") == 1  # bit_depth_reduction's only
