"""model.weights: a checkpoint evaluated instead of a trained baseline (robench.weights)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from robench.cache import cache_dir
from robench.data import load_dataset
from robench.errors import UserError
from robench.models import LeNet5, MnistCNN
from robench.plan import load_plan, resolve_raw
from robench.probe import check_baseline
from robench.runner import RunOptions, run_suite


def suite_raw(weights: str | None = None, model: str = "lenet5", **model_extra) -> dict:
    spec = {"name": model, **model_extra}
    if weights is not None:
        spec["weights"] = weights
    return {"name": "byo",
            "data": {"dataset": "mnist", "eval_limit": 200, "validation_size": 55000},
            "train": {"epochs": 1}, "model": spec,
            "defenses": [{"name": "none"},
                         {"name": "bit_depth_reduction", "params": {"bits": 2}}],
            "attacks": [{"name": "fgsm", "eps": [0.0, 0.1]},
                        {"name": "pgd", "eps": [0.1], "params": {"steps": 5, "alpha": 0.04}}]}


def lenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return LeNet5().state_dict()


def resolve_and_check(path: Path, mnist, model: str = "lenet5", source: str | None = None):
    plan = resolve_raw(suite_raw(str(path), model), source or str(path.parent / "suite.yaml"))
    check_baseline(plan, mnist)
    return plan


# -- the round trip ---------------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_saved_by_one_run_evaluates_identically(tmp_path, mnist_root, monkeypatch):
    """Train a baseline in one run, save its weights, and evaluate them through
    ``model.weights`` (safetensors and torch, relative path): every result cell is the same."""
    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBENCH_DATA_DIR", str(mnist_root))
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(suite_raw()))
    run_suite(first, RunOptions(out=str(tmp_path / "out_first"), quiet=True))
    trained = pd.read_csv(tmp_path / "out_first" / "results.csv")

    # the trained baseline's state dict, from the model cache of the first run
    key = load_plan(first).baseline.key.with_data(load_dataset("mnist", mnist_root).fingerprint)
    state = torch.load(cache_dir() / f"{key.hex}.pt", weights_only=True)["state_dict"]
    (tmp_path / "ckpt").mkdir()
    save_file(state, tmp_path / "ckpt" / "baseline.safetensors")
    torch.save(state, tmp_path / "ckpt" / "baseline.pt")

    suites = tmp_path / "suites"
    suites.mkdir()
    for name in ("baseline.safetensors", "baseline.pt"):
        suite = suites / f"{name.replace('.', '_')}.yaml"
        # relative to the suite file's folder, not to the working directory
        suite.write_text(yaml.safe_dump(suite_raw(f"../ckpt/{name}")))
        out = tmp_path / f"out_{name}"
        run_suite(suite, RunOptions(out=str(out), quiet=True))
        loaded = pd.read_csv(out / "results.csv")
        cols = ["defense", "attack", "eps", "n", "clean_acc", "robust_acc", "model_hash"]
        pd.testing.assert_frame_equal(
            loaded[cols].sort_values(cols[:3]).reset_index(drop=True),
            trained[cols].sort_values(cols[:3]).reset_index(drop=True))
        record = json.loads((out / "run.json").read_text())["baseline"]["weights"]
        assert record == {"path": str((tmp_path / "ckpt" / name).resolve()),
                          "sha256": hashlib.sha256((tmp_path / "ckpt" / name).read_bytes())
                          .hexdigest()}
        log = (out / "run.log").read_text()
        assert "trained" not in log and "weights" in log  # loaded, not trained again
    # a trained model (one epoch on 5000 images: about 0.75), not a constant one (about 0.1)
    assert 0.5 < trained["clean_acc"].iloc[0] < 1.0


# -- cache keys -------------------------------------------------------------------------------
def test_cache_keys_follow_the_file_content_not_its_name(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.save(lenet_state(0), a)
    b.write_bytes(a.read_bytes())
    changed = lenet_state(0)
    changed["classifier.5.bias"][3] += 1e-3
    torch.save(changed, c)
    plans = [resolve_raw(suite_raw(str(p)), str(tmp_path / "s.yaml")) for p in (a, b, c)]
    trained = resolve_raw(suite_raw(), str(tmp_path / "s.yaml"))
    keys = [p.baseline.cache_key for p in plans]
    assert keys[0] == keys[1]  # same bytes under another name: same key
    assert len({keys[0], keys[2], trained.baseline.cache_key}) == 3
    # every defense's key builds on the baseline's
    assert plans[0].defenses[1].cache_key == plans[1].defenses[1].cache_key
    assert plans[0].defenses[1].cache_key != plans[2].defenses[1].cache_key
    assert plans[2].baseline.weights.sha256 == hashlib.sha256(c.read_bytes()).hexdigest()


def test_a_file_changed_after_resolve_is_refused(tmp_path, mnist):
    path = tmp_path / "w.pt"
    torch.save(lenet_state(0), path)
    plan = resolve_and_check(path, mnist)
    torch.save(lenet_state(1), path)
    with pytest.raises(UserError, match="changed since the suite was read"):
        plan.baseline.build(10)


# -- accepted layouts -------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["plain", "state_dict", "model_state_dict", "dataparallel",
                                    "safetensors_without_suffix"])
def test_common_checkpoint_layouts_load_the_same_weights(tmp_path, mnist, layout):
    state = lenet_state(3)
    path = tmp_path / "w.bin"
    if layout == "plain":
        torch.save(state, path)
    elif layout == "dataparallel":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif layout == "safetensors_without_suffix":
        save_file(state, path)
    else:
        torch.save({layout: state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    model = resolve_and_check(path, mnist).baseline.build(10)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


# -- bad input --------------------------------------------------------------------------------
def _write(path: Path, what: str) -> None:
    state = lenet_state(0)
    if what == "text":
        path.write_text("not a checkpoint\n")
    elif what == "module":
        torch.save(LeNet5(), path)
    elif what == "tensor":
        torch.save(torch.zeros(3), path)
    elif what == "dict_of_numbers":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif what == "missing_key":
        del state["classifier.5.bias"]
        torch.save(state, path)
    elif what == "unexpected_key":
        state["extra.weight"] = torch.zeros(2)
        torch.save(state, path)
    elif what == "wrong_shape":
        state["classifier.5.weight"] = torch.zeros(5, 84)
        torch.save(state, path)
    elif what == "other_architecture":
        torch.save(MnistCNN().state_dict(), path)
    elif what == "integer_values":
        torch.save({k: v.to(torch.int64) for k, v in state.items()}, path)
    elif what == "bad_safetensors":
        path.write_bytes((100).to_bytes(8, "little") + b"{" + b"x" * 120)
    elif what in ODD_TENSORS:
        state["classifier.5.weight"] = ODD_TENSORS[what](state["classifier.5.weight"])
        torch.save(state, path)


#: tensors torch.load(weights_only=True) reads that are not plain dense values (hostile-user
#: finding, issue 27, 9: a sparse tensor gave a traceback; a meta tensor holds no values at all)
ODD_TENSORS = {
    "sparse_coo": lambda t: t.to_sparse(),
    "sparse_csr": lambda t: t.to_sparse_csr(),
    "meta": lambda t: t.to("meta"),
    "quantized": lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8),
    "nested": lambda t: torch.nested.nested_tensor(list(t)),
}


BAD = [
    ("text", "not a checkpoint", "UnpicklingError"),
    ("module", "not a checkpoint", "pickles a robench.models.LeNet5 object"),
    ("tensor", "holds a Tensor, not a state dict", ""),
    ("dict_of_numbers", "holds a dict without a state dict (keys: epoch, lr)", ""),
    ("missing_key", "does not fit model 'lenet5': missing keys classifier.5.bias", ""),
    ("unexpected_key", "unexpected keys extra.weight", ""),
    ("wrong_shape", "another architecture?", "classifier.5.weight (file 5x84, model 10x84)"),
    ("other_architecture", "missing keys normalize.mean, normalize.std, classifier.5.weight",
     "(+"),
    ("bad_safetensors", "not a readable safetensors file", ""),
    ("integer_values", "non-float values", "(file torch.int64, model torch.float32)"),
    ("sparse_coo", "'classifier.5.weight' is not a plain dense tensor", "sparse"),
    ("sparse_csr", "'classifier.5.weight' is not a plain dense tensor", "sparse"),
    ("meta", "'classifier.5.weight' is not a plain dense tensor", "meta"),
    ("quantized", "'classifier.5.weight' is not a plain dense tensor", "quantized"),
    ("nested", "'classifier.5.weight' is not a plain dense tensor", "nested"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: sparse/quantized are "beta"
@pytest.mark.parametrize(("what", "fragment", "detail"), BAD, ids=[b[0] for b in BAD])
def test_bad_checkpoints_are_one_line_errors_naming_the_key(tmp_path, mnist, what, fragment,
                                                            detail):
    path = tmp_path / "w.pt"
    _write(path, what)
    with pytest.raises(UserError) as caught:
        resolve_and_check(path, mnist)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'suite.yaml'}: model.weights: ")
    assert fragment in message and detail in message
    assert "\n" not in message


def test_missing_file_and_folder(tmp_path, mnist):
    with pytest.raises(UserError, match=r"model\.weights: weights file .*nope\.pt not found"):
        resolve_and_check(tmp_path / "nope.pt", mnist)
    with pytest.raises(UserError, match="is a folder, not a checkpoint file"):
        resolve_and_check(tmp_path, mnist)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)  # reading it would block: refused without opening it
    with pytest.raises(UserError, match=r"fifo\.pt is not a regular file"):
        resolve_and_check(fifo, mnist)


def test_empty_weights_path_is_a_schema_error(tmp_path):
    with pytest.raises(UserError, match=r"model\.weights: String should have at least 1"):
        resolve_raw(suite_raw(""), str(tmp_path / "s.yaml"))


def test_cli_wrong_architecture_exits_2_before_writing(tmp_path, cli_env, robench_cli):
    torch.save(lenet_state(0), tmp_path / "lenet.pt")
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(suite_raw("lenet.pt", model="mnist_cnn")))
    out = tmp_path / "out"
    done = robench_cli("run", str(suite), "--out", str(out),
                       env=dict(cli_env, OMP_NUM_THREADS="1"))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{suite}: model.weights: checkpoint does not fit model " \
        "'mnist_cnn'" in lines[0]
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("what", ["sparse", "oversized_256m", "oversized_7g"])
def test_cli_odd_or_oversized_weights_exit_2_before_reading_or_writing(tmp_path, cli_env,
                                                                       robench_cli, what):
    """Hostile-user finding (issue 27, 9): a sparse tensor in a .pt gave a traceback, and a
    7 GB weights file was read whole. A file far larger than the architecture needs is
    refused from its size, before a byte is read (the file here is sparse on disk)."""
    path = tmp_path / "w.pt"
    if what == "sparse":
        state = lenet_state(0)
        state["classifier.3.weight"] = state["classifier.3.weight"].to_sparse()
        torch.save(state, path)
    else:
        torch.save(lenet_state(0), path)  # a real checkpoint, then a hole to the size asked
        with path.open("r+b") as f:
            f.truncate(256 * 2**20 if what == "oversized_256m" else 7 * 2**30)
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(suite_raw("w.pt")))
    out = tmp_path / "out"
    done = robench_cli("run", str(suite), "--out", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{suite}: model.weights: " in lines[0]
    if what == "sparse":
        assert "'classifier.3.weight' is not a plain dense tensor (sparse" in lines[0]
    else:
        assert str(path) in lines[0] and ("256.0 MiB" in lines[0] or "7.0 GiB" in lines[0])
        assert "model 'lenet5' has" in lines[0]
    assert not out.exists()


def test_loading_silences_only_torchs_notes_on_odd_tensors(tmp_path, monkeypatch):
    """Reviewer's finding: every warning around torch.load was ignored, so a warning unrelated
    to sparse or quantized tensors (a deprecation, a torch bug's note) was lost too. Now only
    torch's notes on those tensors are silenced (the file is refused in one line anyway)."""
    import warnings

    from robench.weights import parse_checkpoint

    for what in ODD_TENSORS:
        path = tmp_path / f"{what}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # creating them: torch's "beta" notes
            _write(path, what)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(UserError, match="not a plain dense tensor"):
                parse_checkpoint(path.read_bytes(), path, "model.weights")
        assert [str(w.message) for w in caught] == [], what
    real_load = torch.load

    def load_with_a_note(*args, **kwargs):
        warnings.warn("an unrelated note from torch", UserWarning, stacklevel=2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_with_a_note)
    torch.save(lenet_state(), tmp_path / "dense.pt")
    with pytest.warns(UserWarning, match="an unrelated note from torch"):
        state = parse_checkpoint((tmp_path / "dense.pt").read_bytes(), tmp_path / "dense.pt",
                                 "model.weights")
    assert set(state) == set(lenet_state())


@pytest.mark.slow
def test_a_relative_weights_path_verifies_from_another_folder(tmp_path, cli_env, robench_cli):
    """run.json records model.weights relative to the results folder (the suite gave it
    relative to the suite file's folder), so ``robench verify`` finds the checkpoint from any
    working folder, and wherever the results and the checkpoint move together."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "ckpt").mkdir()
    torch.manual_seed(0)
    save_file(LeNet5().state_dict(), str(tmp_path / "ckpt" / "base.safetensors"))
    raw = {"name": "rel", "data": {"dataset": "mnist", "eval_limit": 40},
           "train": {"epochs": 0}, "adaptive": "off",
           "model": {"name": "lenet5", "weights": "../ckpt/base.safetensors"},
           "attacks": [{"name": "fgsm", "eps": [0.0, 0.1]}]}
    (tmp_path / "suites" / "s.yaml").write_text(yaml.safe_dump(raw))
    done = robench_cli("run", "suites/s.yaml", "--out", "out/res", "-q", env=cli_env,
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "out" / "res" / "run.json").read_text())
    assert run["suite"]["model"]["weights"] == "../../ckpt/base.safetensors"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = robench_cli("verify", str(tmp_path / "out" / "res"), "--sample", "5", env=cli_env,
                       cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # the same suite run again into the folder is still the same suite (its checkpoint is
    # compared by sha256, not by how a path to it is written): checked, not recomputed
    again = robench_cli("run", str(tmp_path / "suites" / "s.yaml"), "--out", "res", "-q",
                        env=cli_env, cwd=tmp_path / "out")
    assert again.returncode == 0, again.stderr
    assert "holds a complete run of this suite" in again.stdout + again.stderr
    # a run recorded with the suite's own relative path (before this record) still verifies,
    # through the resolved path baseline.weights records (its sha256 checked as always)
    from robench.outdir import OutputFolder
    from robench.results import write_json

    run["suite"]["model"]["weights"] = "../ckpt/base.safetensors"
    with OutputFolder.open(tmp_path / "out" / "res") as out:  # as robench writes it
        write_json(out, "run.json", run)
    proc = robench_cli("verify", "res", "--sample", "5", env=cli_env, cwd=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # a replaced checkpoint (other weights at the recorded path) is refused in one line
    torch.manual_seed(1)
    save_file(LeNet5().state_dict(), str(tmp_path / "ckpt" / "base.safetensors"))
    proc = robench_cli("verify", "res", "--sample", "5", env=cli_env, cwd=tmp_path / "out")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr + proc.stdout
    assert "model.weights" in lines[0] and "sha256 differs" in lines[0], lines[0]
