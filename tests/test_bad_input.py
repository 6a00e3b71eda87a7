"""The bad-input catalogue: each malformed input gives one clear line naming the file and key,
exit code 2, no traceback, and nothing written."""

import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from robench.cli import app

GOOD = {
    "name": "bad",
    "data": {"dataset": "mnist", "eval_limit": 50},
    "train": {"epochs": 0},
    "defenses": [{"name": "none"}],
    "attacks": [{"name": "fgsm", "eps": [0.1]}, {"name": "pgd", "eps": [0.1],
                                                 "params": {"steps": 2}}],
}


def mutate(**changes):
    suite = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = suite
        keys = dotted.split("/")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return yaml.safe_dump(suite)


CASES = [
    # id, suite text (None: file missing), extra CLI args, expected fragments of the message
    ("yaml_syntax", "name: x\nattacks: [\n", [], ["invalid YAML at line"]),
    ("unknown_top_key", mutate(colour="red"), [], [": colour:", "unknown key"]),
    ("unknown_plugin", mutate(**{"attacks/0/name": "fgsn"}), [],
     ["attacks[0].name", "did you mean 'fgsm'"]),
    ("negative_eps", mutate(**{"attacks/0/eps": [-0.1]}), [],
     ["attacks[0].eps[0]", "greater than or equal to 0"]),
    ("eps_above_one", mutate(**{"attacks/0/eps": [8]}), [],
     ["attacks[0].eps[0]", "less than or equal to 1"]),
    ("eps_not_list", mutate(**{"attacks/0/eps": 0.3}), [], ["attacks[0].eps", "valid list"]),
    ("wrong_param_type", mutate(**{"attacks/1/params": {"steps": "ten"}}), [],
     ["attacks[1].params.steps", "integer"]),
    ("unknown_param", mutate(**{"attacks/1/params": {"stepz": 3}}), [],
     ["attacks[1].params.stepz", "unknown key"]),
    ("missing_name", yaml.safe_dump({k: v for k, v in GOOD.items() if k != "name"}), [],
     [": name:", "required"]),
    ("empty_attacks", mutate(attacks=[]), [], [": attacks:", "at least 1"]),
    ("duplicate_defense", mutate(defenses=[{"name": "none"}, {"name": "none"}]), [],
     ["defenses[1]", "duplicate"]),
    ("bad_device", mutate(device="gpu"), [], [": device:", "'auto'"]),
    ("bad_device_option", mutate(), ["--device", "tpu"], ["--device", "unknown device"]),
    ("unknown_dataset", mutate(**{"data/dataset": "cifar10"}), [], ["data.dataset", "unknown"]),
    ("missing_attack_name", mutate(**{"attacks/0": {"eps": [0.1]}}), [],
     ["attacks[0].name", "required"]),
    ("suite_missing", None, [], ["suite file not found"]),
    ("unknown_norm", mutate(**{"attacks/1/params": {"steps": 2, "norm": "l1"}}), [],
     ["attacks[1].params.norm", "'linf' or 'l2'"]),
    ("bpda_unknown_norm", mutate(**{"attacks/1": {"name": "bpda", "eps": [0.1],
                                                  "params": {"steps": 2, "norm": "l1"}}}), [],
     ["attacks[1].params.norm", "'linf' or 'l2'"]),
    ("l2_eps_above_diameter", mutate(**{"attacks/0/params": {"norm": "l2"},
                                        "attacks/0/eps": [29]}), [],
     ["attacks[0].eps[0]", "less than or equal to 28"]),
    ("l2_label_without_norm", mutate(**{"attacks/0/params": {"norm": "l2"},
                                        "attacks/0/label": "fgm"}), [],
     ["attacks[0].label", "must name its norm"]),
]
if not torch.cuda.is_available():
    CASES.append(("cuda_without_gpu", mutate(device="cuda"), [], [": device:", "no CUDA GPU"]))


@pytest.mark.parametrize("case_id,text,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_suite(tmp_path, mnist_root, case_id, text, args, fragments):
    suite = tmp_path / "suite.yaml"
    if text is not None:
        suite.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(out),
                                      "--data-dir", str(mnist_root), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("robench: error: ")
    assert str(suite) in lines[0] or "--device" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out.exists()  # nothing written


def test_data_missing_offline(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(mutate())
    empty = tmp_path / "no-data"
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(tmp_path / "out"),
                                      "--data-dir", str(empty)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "mnist not found under" in result.output and "--data-dir" in result.output
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path, mnist_root):
    suite = tmp_path / "suite.yaml"
    suite.write_text(mutate())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["run", str(suite), "--out", str(blocker / "out"),
                                      "--data-dir", str(mnist_root)])
    assert result.exit_code == 2
    assert "cannot create the results folder" in result.output
    assert str(blocker / "out") in result.output


@pytest.mark.slow
def test_no_traceback_in_a_real_process(tmp_path, robench_subprocess):
    suite = tmp_path / "suite.yaml"
    suite.write_text(mutate(**{"attacks/0/eps": [2]}))
    proc = robench_subprocess("run", str(suite), env=dict(os.environ), cwd=Path.cwd(),
                              timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0
