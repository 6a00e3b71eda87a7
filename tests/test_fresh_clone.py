"""``robench run SUITE`` on a folder that holds a complete run of the suite (a fresh clone):
verified (shipped models) or its tables checked (none shipped), in one line, with nothing
computed or written; an interrupted or different run still resumes; ``--recompute`` writes a
new folder and compares; one shipped file serves every label of the same model; the shipped
models' size is warned about. The real CLI on copies of one small real MNIST run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from robench.models import LeNet5
from robench.outdir import OutputFolder, RunFiles
from robench.results import csv_text, read_results
from robench.run_files import is_model_name
from robench.shipped import merge_model_files, model_file, shipped_models, size_warning

from .conftest import finished_run
from .test_reliability import one_line_error

# adversarial training with the suite's 0 epochs leaves the baseline as it is: its model is
# the baseline's, shipped in the baseline's file
SUITE = """\
name: fresh
seed: 0
data: {dataset: mnist, eval_limit: 100}
train: {epochs: 0}
defenses:
  - name: none
  - name: adversarial_training
    label: at
    params: {eps: 0.1}
attacks:
  - name: fgsm
    eps: [0.0, 0.1]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fresh")
    return finished_run(tmp, SUITE)


@pytest.fixture
def run(finished, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    (tmp_path / "s.yaml").write_text(SUITE)
    return folder


def tree(*folders: Path) -> dict[str, bytes | None]:
    """Every path below each folder (hidden ones too; folders as None) with its bytes."""
    return {str(p): None if p.is_dir() else p.read_bytes()
            for folder in folders if folder.exists() for p in sorted(folder.rglob("*"))}


def run_again(robench_cli, folder: Path, *args: str):
    return robench_cli("run", str(folder.parent / "s.yaml"), "--out", str(folder), "-q", *args)


@pytest.mark.slow
def test_a_complete_shipped_run_is_verified_and_nothing_is_written(run, robench_cli, cli_env):
    cache = Path(cli_env["ROBENCH_CACHE_DIR"])
    before = tree(run.parent, cache)
    proc = run_again(robench_cli, run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"{run} holds a complete run of this suite: verified: 4 cells, 50 images each "
        "re-attacked, 0 differences (bit-identical)"], proc.stdout
    assert tree(run.parent, cache) == before  # no lock, log, cache entry or folder


@pytest.mark.slow
def test_a_tampered_shipped_weight_fails_and_nothing_is_written(run, robench_cli):
    entry = shipped_models(RunFiles.of(run))[0]
    data = bytearray(entry.data)
    data[-1] ^= 0x40  # a bit of the last weight; the manifest is made to agree
    with OutputFolder.open(run) as out:
        out.write_bytes(entry.name, bytes(data))
    before = tree(run.parent)
    proc = run_again(robench_cli, run)
    line = one_line_error(proc)
    assert entry.name in line and "weights hash" in line, line
    assert tree(run.parent) == before


@pytest.mark.slow
def test_a_complete_run_without_shipped_models_has_its_tables_checked(run, robench_cli):
    with OutputFolder.open(run) as out:
        for name in [p.name for p in run.iterdir() if is_model_name(p.name)]:
            out.remove(name)
    before = tree(run.parent)
    proc = run_again(robench_cli, run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line, = proc.stdout.strip().splitlines()
    assert line.startswith(f"{run} holds a complete run of this suite: tables checked: 4 cells "
                           "agree with their per-image outcomes"), line
    assert "cannot be re-attacked because its models are not shipped" in line
    assert "--recompute" in line
    assert tree(run.parent) == before


@pytest.mark.slow
def test_a_complete_run_made_by_other_code_is_checked_and_its_stale_cells_named(run,
                                                                               robench_cli):
    """The committed results after a change on the code-hash path: run.json and the rows
    record another code hash for the attack (the manifest made to agree, as robench would
    have written it)."""
    import json
    record = json.loads((run / "run.json").read_text())
    record["attacks"]["fgsm"]["code_hash"] = "0" * 16
    results = read_results(run)
    results["code_hash"] = "0" * 16
    with OutputFolder.open(run) as out:
        out.write_text("run.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        out.write_text("results.csv", csv_text(results))
    before = tree(run.parent)
    proc = run_again(robench_cli, run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line, = proc.stdout.strip().splitlines()
    assert line.startswith(f"{run} holds a complete run of this suite: verified: 4 cells"), line
    assert line.endswith(
        "4 of its 4 cells were computed by other code than this checkout's (fgsm), so they are "
        f"stale: robench run {run.parent / 's.yaml'} --recompute recomputes the run into a new "
        "folder, --update recomputes the stale cells in this folder (its earlier outputs set "
        "aside in previous-<time>/)"), line
    assert tree(run.parent) == before
    # --update resumes in the folder: the earlier outputs set aside, the run.json rewritten
    proc = run_again(robench_cli, run, "--update")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "holds a complete run" not in proc.stdout
    assert list(run.glob("previous-*"))
    assert json.loads((run / "run.json").read_text())["attacks"]["fgsm"]["code_hash"] != "0" * 16


@pytest.mark.slow
def test_a_run_missing_a_planned_cell_resumes(run, robench_cli):
    results = read_results(run)
    with OutputFolder.open(run) as out:
        out.write_text("results.csv", csv_text(results.iloc[:-1]))
    proc = run_again(robench_cli, run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "holds a complete run" not in proc.stdout
    assert len(read_results(run)) == 4
    assert "resumed: 3 of the 3 stored rows verified and kept, 1 cells computed" in \
        (run / "run.log").read_text()
    assert not list(run.glob("previous-*"))


@pytest.mark.slow
def test_plan_says_a_plain_run_checks_a_complete_run_instead_of_computing_it(run, robench_cli):
    def plan_notes() -> str:
        proc = robench_cli("plan", str(run.parent / "s.yaml"), "--out", str(run),
                           "--no-calibrate")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return " ".join(proc.stdout.split())

    before = tree(run)
    assert "holds a complete run of this suite: a plain `robench run` computes nothing" in \
        plan_notes()
    assert tree(run) == before  # plan writes nothing
    results = read_results(run)
    with OutputFolder.open(run) as out:
        out.write_text("results.csv", csv_text(results.iloc[:-1]))
    assert "holds a complete run" not in plan_notes()


@pytest.mark.slow
def test_another_suite_into_the_folder_runs_as_before(run, robench_cli):
    (run.parent / "s.yaml").write_text(SUITE.replace("[0.0, 0.1]", "[0.0, 0.1, 0.2]"))
    said = robench_cli("run", str(run.parent / "s.yaml"), "--out", str(run), "--epochs", "1",
                       "--eval-limit", "1", "--update", "--recompute")  # refused: one of them
    assert said.returncode == 2 and "--update" in said.stderr
    proc = run_again(robench_cli, run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "holds a complete run" not in proc.stdout
    assert len(read_results(run)) == 6


@pytest.mark.slow
def test_recompute_writes_a_new_folder_and_compares(run, robench_cli):
    before = tree(run)
    proc = run_again(robench_cli, run, "--recompute")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new, = run.parent.glob("run-recompute-*")
    assert proc.stdout.strip().splitlines()[-1] == (
        f"recomputed into {new}: 4 of 4 cells bit-identical to {run}, 0 differ (largest "
        "difference 0.00 pp)")
    assert len(read_results(new)) == 4
    assert tree(run) == before


def test_recompute_into_a_folder_that_is_not_empty_is_refused(run, robench_cli, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    line = one_line_error(run_again(robench_cli, run, "--recompute-into", str(full)))
    assert line == (f"robench: error: {full}: exists and is not empty; --recompute writes "
                    "only into a new or empty folder")
    assert tree(tmp_path) == before


def test_recompute_refuses_models_from(run, robench_cli):
    line = one_line_error(run_again(robench_cli, run, "--recompute", "--models-from", str(run)))
    assert "--recompute" in line and "--models-from" in line


@pytest.mark.slow
def test_the_shared_file_serves_the_baseline_and_the_defense(finished):
    entry, = shipped_models(RunFiles.of(finished))
    assert [(e.role, e.label, e.defense) for e in entry.served()] == [
        ("baseline", "baseline", ""), ("defense", "at", "adversarial_training")]


def _files(model: torch.nn.Module):
    common = dict(dataset="mnist", model_name="lenet5", num_classes=10, seed=0)
    return (model_file(model, role="baseline", label="baseline", **common),
            model_file(model, role="defense", label="at", defense="adversarial_training",
                       defense_params='{"eps": 0.1}', seconds=1.5, **common),
            model_file(model, role="defense", label="at2", defense="adversarial_training",
                       defense_params='{"eps": 0.2}', **common))


def test_merged_files_list_every_label_in_any_order(tmp_path):
    torch.manual_seed(0)
    base, at, at2 = _files(LeNet5(num_classes=10))
    one = merge_model_files(merge_model_files(at2, base), at)
    other = merge_model_files(merge_model_files(at, at2), base)
    assert one == other  # the same bytes, whichever label came first
    with OutputFolder.open(tmp_path) as out:
        out.write_bytes(one.name, one.data)
    entry, = shipped_models(RunFiles.of(tmp_path))
    served = {e.label: e for e in entry.served()}
    assert sorted(served) == ["at", "at2", "baseline"]
    assert served["at"].defense_params == '{"eps": 0.1}' and served["at"].seconds == 1.5
    assert served["baseline"].role == "baseline"


def test_the_shipped_models_size_is_warned_about_above_30_mb(tmp_path):
    big = tmp_path / ("model-" + "0" * 16 + ".safetensors")
    with big.open("wb") as f:
        f.truncate(31 * 10**6)
    warning = size_warning(tmp_path)
    assert warning is not None and "31.0 MB" in warning and "30 MB" in warning
    with big.open("r+b") as f:
        f.truncate(29 * 10**6)
    assert size_warning(tmp_path) is None


def test_a_transfer_cell_is_stale_only_against_its_own_seeds_code_hash(tmp_path):
    """A transfer cell's code hash includes its source model's key, which differs by seed: a
    complete multi-seed run is not stale because seed 1's transfer rows differ from seed 0's."""
    from robench.config import load_suite
    from robench.fresh_clone import stale_cells
    from robench.plan import resolve

    path = tmp_path / "t.yaml"
    path.write_text(SUITE.replace("seed: 0", "seeds: [0, 1]") + """\
  - name: transfer
    eps: [0.1]
    params: {source: none, attack: fgsm}
""")
    plan = resolve(load_suite(path), str(path))
    run = {"baseline": {"code_hash": plan.baseline.code_hash},
           "defenses": {d.label: {"code_hash": d.code_hash} for d in plan.defenses},
           "attacks": {a.label: {"code_hash": a.code_hash} for a in plan.attacks}}
    rows = pd.DataFrame([{"defense": d.label, "attack": a.label, "seed": seed,
                          "code_hash": a.code_hash}
                         for seed in plan.seeds for a in plan.for_seed(seed).attacks
                         for d in plan.defenses])
    transfer = rows[rows["attack"].str.startswith("transfer")]
    assert transfer.groupby("seed")["code_hash"].first().nunique() == 2  # per seed
    assert stale_cells(run, rows, plan).cells == 0
    rows.loc[transfer.index[transfer["seed"] == 1], "code_hash"] = "0" * 16
    stale = stale_cells(run, rows, plan)
    assert stale.labels == (transfer["attack"].iloc[0],) and stale.cells == len(transfer)
