"""``robench verify RESULTS``: a fresh run verifies bit-identically, and each kind of tampering
that keeps the manifest consistent (an outcome, a shipped weight, a results row, the
leaderboard) is caught, exit 1, naming the cell; bad input is one line, exit 2; verify writes
nothing. The real CLI on copies of one small real MNIST run (untrained LeNet: ``epochs: 0``)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load

from robench.models import LeNet5
from robench.outdir import OutputFolder, RunFiles
from robench.results import csv_text, read_results
from robench.resume import interval_columns
from robench.shipped import model_file, shipped_models
from robench.verify_attack import DEFAULT_SAMPLE, sample_positions

from .conftest import finished_run
from .test_reliability import one_line_error

SUITE = """\
name: vcmd
seed: 0
data: {dataset: mnist, eval_limit: 120}
train: {epochs: 0}
adaptive: off               # the cells counted here are the suite's own
defenses:
  - name: none
  - name: bit_depth_reduction
    params: {bits: 2}
  - name: unlearning
    label: unlearn
    params: {rounds: 1, forget_size: 32, retain_size: 32, method: finetune, monitor_limit: 0}
attacks:
  - name: fgsm
    eps: [0.0, 0.1, 0.3]
  - name: pgd
    eps: [0.1, 0.3]
    limit: 100
    params: {steps: 5, alpha: 0.05, random_start: true}
"""

pytestmark = pytest.mark.slow
#: images re-attacked per cell in the tampering tests (the default in the fresh-run test)
SAMPLE = "20"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One small finished run that ships its models (each test works on a copy)."""
    tmp = tmp_path_factory.mktemp("verifycmd")
    return finished_run(tmp, SUITE)


@pytest.fixture
def run(finished, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    return folder


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder`` (hidden ones too): its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def verify(robench_cli, folder: Path, *args: str):
    """``robench verify --sample SAMPLE`` on ``folder`` (``args`` may give another sample),
    asserting it changed nothing there."""
    before = state(folder)
    proc = robench_cli("verify", str(folder), "--sample", SAMPLE, *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert state(folder) == before
    return proc


def refresh_tables(robench_cli, folder: Path) -> None:
    """Rewrite leaderboard, checks and report from the (tampered) results, as robench would:
    only the re-attack or the model check can then catch the tampering."""
    assert robench_cli("leaderboard", str(folder), "--write").returncode == 0


def test_a_fresh_run_verifies_bit_identically(run, robench_cli):
    proc = verify(robench_cli, run, "--sample", str(DEFAULT_SAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last == (f"verified: 15 cells, {DEFAULT_SAMPLE} images each re-attacked, "
                    "0 differences (bit-identical)"), proc.stdout


def _tamper_outcome(folder: Path) -> str:
    """Flip adv_correct of one sampled image of a PGD cell, and make results.csv agree."""
    outcomes = pd.read_parquet(folder / "outcomes.parquet")
    cell = ((outcomes["defense"] == "none") & (outcomes["attack"] == "pgd")
            & (outcomes["eps"] == 0.1))
    rows = outcomes.index[cell]
    sampled = rows[sample_positions(len(rows), int(SAMPLE), 0, 0, "pgd")]
    correct = [i for i in sampled if outcomes.at[i, "clean_correct"]]
    hit = (correct or list(sampled))[0]
    outcomes.at[hit, "adv_correct"] = not outcomes.at[hit, "adv_correct"]
    block = outcomes[cell]
    n, clean = len(block), int(block["clean_correct"].sum())
    robust = int((block["clean_correct"] & block["adv_correct"]).sum())
    results = read_results(folder)
    row = ((results["defense"] == "none") & (results["attack"] == "pgd")
           & (results["eps"] == 0.1))
    values = {"robust_acc": robust / n, "attack_success_rate": (clean - robust) / clean
              if clean else float("nan"), **interval_columns("robust_acc", robust, n)}
    write_tampered(folder, outcomes, results, row, values)
    return str(outcomes.at[hit, "image"])


def write_tampered(folder: Path, outcomes: pd.DataFrame, results: pd.DataFrame, row,
                   values: dict) -> None:
    """Set ``values`` in the ``row`` of results.csv and write it with the outcomes, through
    robench's own writer, so the manifest vouches for both (only verify can catch it)."""
    for column, value in values.items():
        results.loc[row, column] = value
    buffer = io.BytesIO()
    outcomes.to_parquet(buffer, index=False)
    with OutputFolder.open(folder) as out:
        out.write_bytes("outcomes.parquet", buffer.getvalue())
        out.write_text("results.csv", csv_text(results))


def test_a_tampered_outcome_is_caught_by_the_reattack(run, robench_cli):
    image = _tamper_outcome(run)
    refresh_tables(robench_cli, run)
    proc = verify(robench_cli, run)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "re-attacked images differ" in x)
    assert line.startswith("[none] pgd@0.1 seed 0: 1 of ") and image in line, line
    assert proc.stdout.strip().splitlines()[-1].startswith("NOT verified: 1 problem")


def _tamper_weight(folder: Path, role: str) -> str:
    """One weight of the shipped ``role`` model changed, shipped again under its new hash
    (metadata consistent), the old file removed: the manifest agrees with every file."""
    entry = next(e for e in shipped_models(RunFiles.of(folder)) if e.role == role)
    model = LeNet5(num_classes=10)
    model.load_state_dict(load(entry.data))
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] += 0.5
    meta = entry.metadata
    file = model_file(model, dataset=meta["dataset"], model_name=meta["model"],
                      num_classes=int(meta["num_classes"]), seed=int(meta["seed"]),
                      role=role, label=meta["label"], defense=meta["defense"],
                      defense_params=meta["defense_params"], data_hash=meta["data_hash"],
                      cache_key=meta["cache_key"],
                      seconds=float(meta["seconds"]) if meta["seconds"] else None,
                      metrics=entry.metrics)
    with OutputFolder.open(folder) as out:
        out.write_bytes(file.name, file.data)
        out.remove(entry.name)
    return file.name


def test_a_tampered_defense_weight_is_caught(run, robench_cli):
    name = _tamper_weight(run, "defense")
    proc = verify(robench_cli, run)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = [x for x in proc.stdout.splitlines() if "has model_hash" in x]
    assert len(bad) == 1 and bad[0].startswith("[unlearn] seed 0: its model (" + name), bad


def test_retrain_finds_the_same_weights_and_outcomes(run, robench_cli, cli_env):
    cache = Path(cli_env["ROBENCH_CACHE_DIR"])
    proc = verify(robench_cli, run, "--retrain")
    assert not cache.exists() or not any(cache.iterdir())  # no model cached either
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("(bit-identical); 2 models retrained: the same "
                                        "weights and outcomes"), proc.stdout


def test_retrain_names_a_shipped_model_that_training_does_not_give(run, robench_cli):
    name = _tamper_weight(run, "defense")
    proc = verify(robench_cli, run, "--retrain")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if "retrained weights hash" in x]
    assert len(lines) == 1 and lines[0].startswith("[unlearn] seed 0:") and name in lines[0]


def test_another_thread_count_states_its_tolerance(run, robench_subprocess, cli_env):
    threads = json.loads((run / "run.json").read_text())["threads"]
    here = 1 if threads != 1 else 2  # torch caps OMP_NUM_THREADS at the cores there are
    before = state(run)
    proc = robench_subprocess("verify", str(run), "--sample", "10",
                              env=dict(cli_env, OMP_NUM_THREADS=str(here)))
    assert state(run) == before
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"note: here {here} thread(s) (the run: {threads}): up to 1%" in proc.stdout
    assert proc.stdout.strip().endswith(f"although here {here} thread(s) (the run: "
                                        f"{threads}))"), proc.stdout


def test_a_tampered_baseline_names_every_defense_applied_to_it(run, robench_cli):
    _tamper_weight(run, "baseline")
    proc = verify(robench_cli, run)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = sorted(x.split("]")[0] + "]" for x in proc.stdout.splitlines() if "has model_hash" in x)
    assert bad == ["[bit_depth_reduction]", "[none]"], proc.stdout


def test_a_tampered_results_row_is_caught(run, robench_cli):
    results = read_results(run)
    row = (results["defense"] == "unlearn") & (results["attack"] == "fgsm") \
        & (results["eps"] == 0.3)
    results.loc[row, "robust_acc"] = 0.5
    with OutputFolder.open(run) as out:
        out.write_text("results.csv", csv_text(results))
    proc = verify(robench_cli, run)
    assert proc.returncode == 1
    assert "[unlearn] fgsm@0.3 seed 0: results.csv's numbers are not what outcomes.parquet" \
        in proc.stdout, proc.stdout


def test_a_tampered_leaderboard_is_caught(run, robench_cli):
    text = (run / "leaderboard.csv").read_text()
    lines = text.splitlines(keepends=True)
    cells = lines[1].split(",")
    cells[-1] = "x" + cells[-1]
    lines[1] = ",".join(cells)
    with OutputFolder.open(run) as out:
        out.write_text("leaderboard.csv", "".join(lines))
    proc = verify(robench_cli, run)
    assert proc.returncode == 1
    assert any(x.startswith("leaderboard.csv row 1") for x in proc.stdout.splitlines()), \
        proc.stdout


def test_a_sample_larger_than_the_cells_is_clamped_with_a_note(run, robench_cli):
    proc = verify(robench_cli, run, "--sample", "100000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: --sample 100000 is more than the cells' images" in proc.stdout
    assert "100-120 images each re-attacked, 0 differences (bit-identical)" in proc.stdout


def test_a_sample_larger_than_some_cells_names_them(run, robench_cli):
    proc = verify(robench_cli, run, "--sample", "110")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: --sample 110 is more than the images of the cells of pgd (100): theirs " \
        "are all re-attacked" in proc.stdout
    assert "100-110 images each re-attacked" in proc.stdout


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_sample_below_one_is_refused(run, robench_cli, value):
    line = one_line_error(verify(robench_cli, run, "--sample", value))
    assert "--sample" in line and "at least 1" in line


def test_a_folder_without_outcomes_is_refused(run, robench_cli):
    with OutputFolder.open(run) as out:
        out.remove("outcomes.parquet")
    line = one_line_error(verify(robench_cli, run))
    assert "has no outcomes.parquet" in line and "robench run SUITE" in line


def test_a_folder_without_shipped_models_is_refused(run, robench_cli):
    with OutputFolder.open(run) as out:
        for entry in shipped_models(RunFiles.of(run)):
            out.remove(entry.name)
    line = one_line_error(verify(robench_cli, run))
    assert "ships no models" in line and "robench run SUITE" in line


def test_an_edited_model_file_is_refused(run, robench_cli):
    path = next(run.glob("model-*.safetensors"))
    with open(path, "ab") as f:
        f.write(b"\0")
    line = one_line_error(verify(robench_cli, run))
    assert path.name in line and "differs from what robench wrote" in line


def test_a_folder_without_a_manifest_is_refused(run, robench_cli):
    (run / ".robench-manifest.json").unlink()
    line = one_line_error(verify(robench_cli, run))
    assert "unverified" in line and "verify checks only folders robench wrote" in line


def test_a_missing_folder_is_refused(tmp_path, robench_cli):
    line = one_line_error(robench_cli("verify", str(tmp_path / "nope")))
    assert "nope" in line and "not found" in line
