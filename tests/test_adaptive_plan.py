"""Escalation (``adaptive: auto | off``) and attacks restricted to some defenses
(``attacks[i].defenses``): the plan's cells, their record, completeness, the leaderboard and an
end-to-end run on real MNIST (docs/adaptive.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import save_file

from robench.adaptive import run_notes
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
    assert ("no BPDA variant of bim for bit_depth_reduction: bpda is PGD; bim's own number "
            "stays an upper bound") in plan.adaptive_notes


#: one entry of every gradient attack of the suite (and a black-box one, which needs none)
EVERY_GRADIENT_ATTACK = [
    {"name": "fgsm", "eps": [0.1, 0.3]},
    {"name": "rfgsm", "eps": [0.3]},
    {"name": "pgd", "eps": [0.3], "limit": 50, "params": {"steps": 10, "alpha": 0.05}},
    {"name": "bim", "eps": [0.3]},
    {"name": "autoattack", "eps": [0.3], "limit": 20},
    {"name": "autoattack", "eps": [0.3], "limit": 20, "params": {"version": "fast"}},
    {"name": "square", "eps": [0.3], "limit": 20},
]


def every_gradient_attack(defense: dict) -> dict:
    return {**suite(), "defenses": [{"name": "none"}, defense],
            "attacks": EVERY_GRADIENT_ATTACK, "adaptive_eot_samples": 7}


def test_a_surrogate_defense_gets_bpda_of_pgd_and_a_note_for_every_other_gradient_attack():
    plan = resolve_raw(every_gradient_attack({"name": "bit_depth_reduction"}), "s.yaml")
    suite_labels = ["fgsm", "rfgsm", "pgd", "bim", "autoattack", "autoattack[version=fast]",
                    "square"]
    assert [a.label for a in plan.attacks] == [*suite_labels, "bpda[of=pgd]"]
    said = {label: f"no BPDA variant of {label} for bit_depth_reduction: bpda is PGD; "
                   f"{label}'s own number stays an upper bound"
            for label in ("fgsm", "rfgsm", "bim", "autoattack", "autoattack[version=fast]")}
    assert plan.adaptive_notes == tuple(said.values())  # square follows no gradient: no note
    # recorded in run.json and shown as the report's and leaderboard's notes
    run = {"planned": json.loads(json.dumps(planned_record(plan)))}
    assert run["planned"]["adaptive_notes"] == list(said.values())
    assert f"adaptive: {said['fgsm']}" in run_notes(run)


def test_a_randomized_defense_gets_the_eot_variant_of_every_gradient_attack(monkeypatch):
    from robench.defenses import DEFENSES

    monkeypatch.setattr(DEFENSES.get("none"), "randomized", True, raising=False)
    plan = resolve_raw(every_gradient_attack({"name": "bit_depth_reduction"}), "s.yaml")
    variants = {a.label: a for a in plan.attacks if a.adaptive}
    assert set(variants) == {"fgsm[eot=7]", "rfgsm[eot=7]", "pgd[eot=7]", "bim[eot=7]",
                             "autoattack[eot=7]", "bpda[of=pgd]"}
    for label in ("fgsm", "rfgsm", "pgd", "bim", "autoattack"):
        eot = variants[f"{label}[eot=7]"]
        source = next(a for a in plan.attacks if a.label == label)
        assert eot.name == source.name and eot.defenses == ("none",)
        assert json.loads(eot.params_json) == {**json.loads(source.params_json),
                                               "eot_samples": 7}
        assert (eot.eps, eot.limit, eot.role) == (source.eps, source.limit, source.role)
        assert "randomness (randomized)" in eot.adaptive
    # torchattacks' AutoAttack (version fast) has no EOT: said, not skipped silently
    assert ("no EOT variant of autoattack[version=fast] for none: its params refuse "
            "eot_samples > 1 (eot_samples > 1 needs version standard (torchattacks' "
            "AutoAttack, version fast, has no EOT)); autoattack[version=fast]'s own number "
            "stays an upper bound") in plan.adaptive_notes


def test_a_surrogate_and_randomized_defense_gets_bpda_with_eot(monkeypatch):
    from robench.defenses import DEFENSES

    monkeypatch.setattr(DEFENSES.get("bit_depth_reduction"), "randomized", True,
                        raising=False)
    plan = resolve_raw(every_gradient_attack({"name": "bit_depth_reduction"}), "s.yaml")
    assert [a.label for a in plan.attacks if a.adaptive] == ["bpda[of=pgd,eot=7]"]
    assert ("no BPDA variant of fgsm for bit_depth_reduction: bpda is PGD; fgsm's own number "
            "stays an upper bound") in plan.adaptive_notes


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
    # a complete folder (the adaptive cells included) is checked reading only: nothing computed
    assert (out / "results.csv").stat().st_mtime_ns == stamp
    assert "holds a complete run of this suite" in proc.stdout + proc.stderr

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
    assert ("adaptive: no BPDA variant of fgsm for bit_depth_reduction: bpda is PGD; fgsm's "
            "own number stays an upper bound") in text


@pytest.mark.slow
def test_a_surrogate_the_model_does_not_offer_stops_the_run(tmp_path, robench_cli,
                                                             trained_lenet, monkeypatch):
    """bit_depth_reduction still declares has_surrogate, but its model has no surrogate():
    the run stops at the first BPDA cell with one line naming the defense (never plain PGD
    under the label bpda[of=pgd]); the cells before it are kept."""
    from robench.defenses.bit_depth import Quantize

    monkeypatch.delattr(Quantize, "surrogate")
    _weights(tmp_path, trained_lenet)
    out = tmp_path / "out"
    raw = suite()
    raw["data"]["eval_limit"] = 20
    raw["attacks"][1]["limit"] = 20
    proc = robench_cli("run", str(_write(tmp_path, raw)), "--out", str(out), "--quiet")
    line = one_line_error(proc)
    assert "'bit_depth_reduction' declares a differentiable surrogate" in line
    assert "bpda[of=pgd]" in line
    if (out / "results.csv").exists():
        assert "bpda" not in (out / "results.csv").read_text()
