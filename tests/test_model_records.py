"""run.json records how every model of the run was obtained (``robench.model_records``): for
each baseline and defense its source (trained now or loaded from the model cache), its cache
entry, its code hash and the entry's training set-up (device, torch threads, torch version)."""

from __future__ import annotations

import json

import pytest
import torch

SUITE = """\
name: records
seed: 0
data: {dataset: mnist, eval_limit: 50}
train: {epochs: 0}
defenses:
  - name: none
  - name: unlearning
    label: unlearn
    params: {rounds: 1, forget_size: 32, retain_size: 32, method: finetune, monitor_limit: 0}
attacks:
  - name: fgsm
    eps: [0.1]
"""
SET_UP = {"device", "torch_threads", "torch", "arch", "memory_format",
          "cpu_capability", "cpu_kernel_settings"}


def _records(out):
    return json.loads((out / "run.json").read_text())["model_training"]


@pytest.mark.slow
def test_run_json_records_each_models_training_and_whether_it_came_from_the_cache(
        tmp_path, robench_cli, cli_env):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    first = robench_cli("run", str(suite), "--out", str(tmp_path / "a"), "-q")
    assert first.returncode == 0, first.stderr
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    records = run["model_training"]
    assert set(records) == {"baseline", "none", "unlearn"}
    for label in ("baseline", "unlearn"):
        record = records[label]
        assert record["source"] == "trained in this run", record
        assert set(record["trained_with"]) == SET_UP
        assert record["trained_with"]["torch"] == torch.__version__
        assert record["trained_with"]["torch_threads"] == torch.get_num_threads()
        assert record["trained_with"]["device"] == "cpu"
    assert records["baseline"]["code_hash"] == run["baseline"]["code_hash"]
    assert records["unlearn"]["code_hash"] == run["defenses"]["unlearn"]["code_hash"]
    # the entries are the model cache's files
    cache = tmp_path / "cache"
    for label in ("baseline", "unlearn"):
        assert (cache / f"{records[label]['cache_entry']}.pt").is_file()
    # a defense that is never cached has no entry and says so
    assert records["none"] == {"role": "defense", "seed": 0, "source":
                               "applied in this run (not cached)", "cache_entry": None,
                               "code_hash": run["defenses"]["none"]["code_hash"],
                               "trained_with": None}

    # the same suite into another folder: every cacheable model is a cache hit, recorded with
    # the set-up its entry was trained with
    second = robench_cli("run", str(suite), "--out", str(tmp_path / "b"), "-q")
    assert second.returncode == 0, second.stderr
    again = _records(tmp_path / "b")
    for label in ("baseline", "unlearn"):
        assert again[label]["source"] == "loaded from cache"
        assert again[label]["trained_with"] == records[label]["trained_with"]
        assert again[label]["cache_entry"] == records[label]["cache_entry"]


@pytest.mark.slow
def test_without_the_cache_a_trained_model_records_no_entry(tmp_path, robench_cli):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    proc = robench_cli("run", str(suite), "--out", str(tmp_path / "a"), "-q", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    records = _records(tmp_path / "a")
    assert records["baseline"]["source"] == "trained in this run"
    assert records["baseline"]["trained_with"] is None
    assert records["baseline"]["cache_entry"] is None
