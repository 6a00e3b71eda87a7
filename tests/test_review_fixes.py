"""Regression tests for breaks a hostile review found: ranks when a defense has no worst case,
a changed model.weights checkpoint taken for the same suite, and a recompute folder nested in
the folder it is compared with."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from robench.errors import UserError
from robench.fresh_clone import checkpoint_sha
from robench.models import LeNet5
from robench.ranking import rank_ranges
from robench.recompute import new_folder


def test_a_defense_without_a_worst_case_is_unranked_and_the_others_keep_their_tests():
    """A restriction can leave a defense with no regular attack at the threat eps: it has no
    worst case, so it gets no rank, and the others are still ranked by their (Holm-adjusted)
    tests, not by plain positions."""
    board = pd.DataFrame({"defense": ["none", "ul1", "ul2"],
                          "worst@0.3": [0.0, 0.0, float("nan")]})
    failed = pd.Series([False, False, False])
    per_image = {"none": [False, False], "ul1": [False, False]}
    ranks = rank_ranges(board, "worst@0.3", failed, per_image, {})  # type: ignore[arg-type]
    assert ranks == ["1–2", "1–2", ""]


def test_checkpoint_sha_reads_the_content_not_the_path():
    a = {"weights": {"path": "/x/w.pt", "sha256": "aa"}}
    assert checkpoint_sha(a) == checkpoint_sha({"weights": {"path": "/y/w.pt", "sha256": "aa"}})
    assert checkpoint_sha(a) != checkpoint_sha({"weights": {"path": "/x/w.pt", "sha256": "bb"}})
    assert checkpoint_sha({"weights": None}) is None and checkpoint_sha(None) is None


@pytest.mark.slow
def test_a_changed_checkpoint_is_another_suite_not_a_verified_run(tmp_path, robench_cli):
    """The same suite text naming a checkpoint whose bytes changed is another run: robench
    computes it (setting the old outputs aside), never reports the old run as verified."""
    for name, seed in (("a.safetensors", 0), ("b.safetensors", 1)):
        torch.manual_seed(seed)
        save_file({k: v.contiguous() for k, v in LeNet5().state_dict().items()},
                  str(tmp_path / name))
    weights = tmp_path / "w.safetensors"
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\nseed: 0\ndata: {{dataset: mnist, eval_limit: 20}}\n"
                     f"model: {{name: lenet5, weights: {weights}}}\ntrain: {{epochs: 0}}\n"
                     "defenses: [{name: none}]\nattacks: [{name: fgsm, eps: [0.1]}]\n")
    out = tmp_path / "run"
    weights.write_bytes((tmp_path / "a.safetensors").read_bytes())
    first = robench_cli("run", str(suite), "--out", str(out), "-q")
    assert first.returncode == 0, first.stderr
    weights.write_bytes((tmp_path / "b.safetensors").read_bytes())
    second = robench_cli("run", str(suite), "--out", str(out))
    assert second.returncode == 0, second.stderr
    assert "holds a complete run of this suite" not in second.stdout
    assert "checkpoint is another file" in second.stdout
    assert list(out.glob("previous-*")), "the earlier run was not set aside"


def test_a_recompute_folder_never_nests_with_the_compared_one(tmp_path):
    existing = tmp_path / "run"
    existing.mkdir()
    with pytest.raises(UserError, match="inside"):
        new_folder(existing, str(existing / "again"))
    with pytest.raises(UserError, match="around"):
        new_folder(existing / "sub", str(existing))
    a_file = tmp_path / "afile"
    a_file.write_text("hi")
    with pytest.raises(UserError, match="not a folder"):
        new_folder(a_file, str(tmp_path / "elsewhere"))
    assert new_folder(existing, str(tmp_path / "beside")) == tmp_path / "beside"
