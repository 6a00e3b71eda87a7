"""Results ship the models they were computed from (``robench.shipped``), and ``robench run
--models-from`` evaluates a suite on them without training (``robench.models_from``)."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from safetensors.torch import load, save

from robench.models import LeNet5, model_hash, weights_hash
from robench.outdir import RunFiles
from robench.results import TIMING_COLUMNS
from robench.shipped import METADATA_KEYS, load_shipped, read_metadata, shipped_models

from .conftest import REPO

SUITE = """
name: ship
seed: 0
data: {dataset: mnist, eval_limit: 100}
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
    eps: [0.1]
"""
#: the same suite with one more attack
MORE = SUITE + """  - name: pgd
    eps: [0.1]
    params: {steps: 2, alpha: 0.05}
"""
#: what differs between two runs of the same cells besides the numbers
VOLATILE = [*TIMING_COLUMNS, "created_at"]

pytestmark = pytest.mark.slow


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("robench: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, mnist_root):
    """A finished run of SUITE: (its folder, its suite file, the environment it ran in)."""
    root = tmp_path_factory.mktemp("shipped")
    suite = root / "ship.yaml"
    suite.write_text(SUITE)
    env = dict(os.environ, ROBENCH_DATA_DIR=str(mnist_root),
               ROBENCH_CACHE_DIR=str(root / "cache"))
    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "robench.cli", "run", str(suite), "--out",
                           str(out), "--quiet"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, suite, env


def test_a_run_ships_the_baseline_and_its_cacheable_defended_models(shipped):
    out, _, _ = shipped
    rows = pd.read_csv(out / "results.csv")
    by_defense = dict(zip(rows["defense"], rows["model_hash"], strict=True))
    files = RunFiles.of(out)
    models = {m.label: m for m in shipped_models(files)}
    # the baseline (the rows of `none` attack it) and the cacheable defense; not bit_depth,
    # a cheap function of the baseline that --models-from applies again
    assert set(models) == {"baseline", "unlearn"}
    assert models["baseline"].model_hash == by_defense["none"]
    assert models["unlearn"].model_hash == by_defense["unlearn"]
    assert by_defense["bit_depth_reduction"] not in {m.model_hash for m in models.values()}
    for model in models.values():
        assert model.name == f"model-{model.model_hash}.safetensors"
        assert model.name in files.listed()  # the manifest covers them
        assert set(model.metadata) == set(METADATA_KEYS)
        assert (model.dataset, model.model, model.num_classes, model.seed) == \
            ("mnist", "lenet5", 10, 0)
        loaded = load_shipped(model, LeNet5())
        assert model_hash(loaded) == model.model_hash
        assert weights_hash(loaded) == model.weights_hash
    unlearn = models["unlearn"].metadata
    assert (unlearn["role"], unlearn["defense"]) == ("defense", "unlearning")
    assert json.loads(unlearn["defense_params"]) == json.loads(
        rows.loc[rows["defense"] == "unlearn", "defense_params"].iloc[0])
    base = models["baseline"].metadata
    assert (base["role"], base["defense"], base["defense_params"]) == ("baseline", "", "")
    # a LeNet-5 is about 0.25 MB
    assert all(200_000 < (out / m.name).stat().st_size < 300_000 for m in models.values())


def test_models_from_gives_the_same_cells_without_training(shipped, tmp_path, robench_cli):
    out, _, env = shipped
    suite = tmp_path / "more.yaml"
    suite.write_text(MORE)
    new = tmp_path / "new"
    # an empty cache: nothing can come from there, only from the shipped files
    env = dict(env, ROBENCH_CACHE_DIR=str(tmp_path / "empty-cache"))
    result = robench_cli("run", str(suite), "--out", str(new), "--models-from", str(out),
                         "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    log = (new / "run.log").read_text()
    assert f"baseline lenet5: loaded from {out}/model-" in log
    assert f"[unlearn] defended model loaded from {out}/model-" in log
    assert "trained" not in log and "defense unlearning took" not in log
    before = pd.read_csv(out / "results.csv").drop(columns=VOLATILE)
    after = pd.read_csv(new / "results.csv").drop(columns=VOLATILE)
    shared = after[after["attack"] == "fgsm"].reset_index(drop=True)
    pd.testing.assert_frame_equal(before.drop(columns="suite"), shared.drop(columns="suite"))
    assert len(after[after["attack"] == "pgd"]) == 3
    pd.testing.assert_frame_equal(pd.read_csv(out / "defense_metrics.csv"),
                                  pd.read_csv(new / "defense_metrics.csv"))
    # the new folder ships the same models
    assert sorted(m.name for m in shipped_models(RunFiles.of(new))) == \
        sorted(m.name for m in shipped_models(RunFiles.of(out)))
    assert json.loads((new / "run.json").read_text())["models_from"] == str(out)


def test_plan_with_models_from_trains_nothing(shipped, tmp_path, robench_cli):
    out, suite, env = shipped
    result = robench_cli("plan", str(suite), "--out", str(tmp_path / "new"), "--models-from",
                         str(out), "--no-calibrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "baseline lenet5 (0 epochs on 55000 images): from --models-from" in result.stdout
    assert "0 of 1" in result.stdout and "0 of 3 to run" in result.stdout
    assert not (tmp_path / "new").exists()


def test_a_resumed_run_ships_the_models_that_are_missing(shipped, tmp_path, robench_cli):
    out, suite, env = shipped
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    gone = next(copy.glob("model-*.safetensors"))
    gone.unlink()
    # the manifest lists a file that is not there: a damaged folder, which a plain run
    # (a check, reading only) refuses in one line, writing nothing ...
    before = {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}
    plain = robench_cli("run", str(suite), "--out", str(copy), "--quiet", env=env)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert gone.name in plain.stderr and "Traceback" not in plain.stderr
    assert {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()} == before
    # ... and a resume in it (--update) ships the missing model again, keeping the cells
    result = robench_cli("run", str(suite), "--out", str(copy), "--quiet", "--update", env=env)
    assert result.returncode == 0, result.stderr
    assert gone.read_bytes() == (out / gone.name).read_bytes()
    assert "already in results.csv, skipped" in (copy / "run.log").read_text()


# -- bad input: one line, exit 2, nothing written -----------------------------------------------
def forged(tmp_path, out, change):
    """A folder without a manifest holding copies of ``out``'s model files, the baseline's
    metadata changed by ``change`` (its tensors too, when it returns a state dict)."""
    folder = tmp_path / "forged"
    folder.mkdir()
    for path in out.glob("model-*.safetensors"):
        data = path.read_bytes()
        meta = read_metadata(data, path.name, str(path))
        state = load(data)
        if meta["role"] == "baseline":
            state = change(meta, state) or state
        (folder / path.name).write_bytes(save(state, meta))
    return folder


def _other_classes(meta, state):
    meta["num_classes"] = "11"


def _wrong_weights_hash(meta, state):
    meta["weights_hash"] = "0" * 16


def _edited_weights(meta, state):
    state["classifier.5.bias"] = state["classifier.5.bias"] + 1
    return state


@pytest.mark.parametrize("change, fragments", [
    (_other_classes, ["11 classes", "10 classes"]),
    (_wrong_weights_hash, ["weights hash to", "not to the weights_hash 0000000000000000"]),
    (_edited_weights, ["weights hash to", "edited or damaged"]),
], ids=["num_classes", "weights_hash", "weights"])
def test_models_from_refuses_models_that_do_not_fit(shipped, tmp_path, robench_cli, change,
                                                    fragments):
    out, suite, env = shipped
    source = forged(tmp_path, out, change)
    new = tmp_path / "new"
    result = robench_cli("run", str(suite), "--out", str(new), "--models-from", str(source),
                         env=env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert all(f in line for f in fragments), line
    assert not new.exists()


@pytest.mark.parametrize("suite_change, args, fragments", [
    (("name: lenet5", "name: mnist_cnn"), [], ["architecture lenet5", "mnist_cnn"]),
    (None, ["--seed", "3"], ["no model for the baseline of seed 3", "baseline (seed 0)"]),
    (("label: unlearn", "label: forget"), [], ["defense 'forget' of seed 0",
                                                "unlearn (seed 0)"]),
    (("forget_size: 32", "forget_size: 33"), [], ["'unlearn'", "params", "forget_size"]),
], ids=["architecture", "seed", "label", "params"])
def test_models_from_refuses_another_suite(shipped, tmp_path, robench_cli, suite_change, args,
                                           fragments):
    out, _, env = shipped
    text = SUITE.replace("data: {dataset: mnist", "model: {name: lenet5}\ndata: {dataset: mnist")
    if suite_change is not None:
        text = text.replace(*suite_change)
    suite = tmp_path / "other.yaml"
    suite.write_text(text)
    new = tmp_path / "new"
    for command in ("run", "plan"):
        result = robench_cli(command, str(suite), "--out", str(new), "--models-from", str(out),
                             "--no-calibrate" if command == "plan" else "--quiet", *args,
                             env=env)
        assert result.returncode == 2, (command, result.stderr)
        line = one_error_line(result.stderr)
        assert "--models-from:" in line and all(f in line for f in fragments), line
        assert not new.exists()


def test_models_from_refuses_a_folder_without_models_and_an_edited_file(shipped, tmp_path,
                                                                       robench_cli):
    out, suite, env = shipped
    empty = tmp_path / "empty"
    empty.mkdir()
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    model = next(edited.glob("model-*.safetensors"))
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    new = tmp_path / "new"
    for source, fragments in [(empty, ["holds no shipped models"]),
                              (tmp_path / "absent", ["absent: not found"]),
                              (edited, [model.name, "differs from what robench wrote"])]:
        result = robench_cli("run", str(suite), "--out", str(new), "--models-from", str(source),
                             env=env)
        assert result.returncode == 2, result.stderr
        line = one_error_line(result.stderr)
        assert all(f in line for f in fragments), line
        assert not new.exists()
    result = robench_cli("run", str(suite), "--out", str(new), "--models-from", " ", env=env)
    assert result.returncode == 2 and "--models-from: empty folder name" in result.stderr
