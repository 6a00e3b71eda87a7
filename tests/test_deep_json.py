"""JSON nested far deeper than robench writes it, in every JSON file robench reads (run.json,
diagnostics.json, a shipped model's header and metrics): one line naming the file, exit 2, no
``RecursionError`` traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from robench.errors import UserError
from robench.results import RESULT_COLUMNS

from .conftest import result_row
from .test_reliability import one_line_error, snapshot

DEEP = 100_000


def deep(depth: int = DEEP) -> str:
    """A JSON array nested ``depth`` deep (valid JSON: only its depth is hostile)."""
    return "[" * depth + "]" * depth


def bare_folder(tmp_path: Path) -> Path:
    """A results.csv without a manifest (read with one "unverified" warning)."""
    folder = tmp_path / "bare"
    folder.mkdir()
    rows = [result_row("none", "fgsm", eps, 0.99, robust) for eps, robust in
            ((0.0, 0.99), (0.1, 0.5))]
    pd.DataFrame(rows, columns=RESULT_COLUMNS).to_csv(folder / "results.csv", index=False)
    return folder


@pytest.mark.parametrize("name", ["diagnostics.json", "run.json"])
@pytest.mark.parametrize("command", ["leaderboard", "report"])
def test_deeply_nested_json_beside_the_results_is_one_line(tmp_path, robench_cli, name,
                                                           command):
    """Hostile-user finding: diagnostics.json nested 100 000 deep gave a RecursionError
    traceback from ``leaderboard`` and ``report``."""
    folder = bare_folder(tmp_path)
    (folder / name).write_text(deep())
    before = snapshot(folder)
    target = folder / "results.csv" if command == "leaderboard" else folder
    line = one_line_error(robench_cli(command, str(target)))
    assert name in line and "nested" in line, line
    assert snapshot(folder) == before


@pytest.mark.parametrize("name", ["diagnostics.json", "run.json"])
def test_shallow_json_is_refused_as_before(tmp_path, robench_cli, name):
    """Not a depth cap: ordinary (shallow) files still give the ordinary message."""
    folder = bare_folder(tmp_path)
    (folder / name).write_text(deep(50))
    line = one_line_error(robench_cli("leaderboard", str(folder / "results.csv")))
    assert name in line and "nested" not in line, line


def shipped_bytes(header: str) -> bytes:
    data = header.encode()
    data += b" " * (-len(data) % 8)
    return len(data).to_bytes(8, "little") + data


@pytest.mark.parametrize("where", ["header", "metrics"])
def test_a_shipped_model_with_deeply_nested_json_is_one_line(where):
    from robench.shipped import FORMAT, METADATA_KEYS, read_metadata

    meta = {key: "" for key in METADATA_KEYS}
    meta.update(format=FORMAT, num_classes="10", seed="0", role="baseline", label="baseline",
                weights_hash="0" * 16, model_hash="0123456789abcdef", metrics="[]")
    if where == "header":
        header = json.dumps({"__metadata__": meta, "deep": json.loads(deep(50))})
        header = header.replace(deep(50), deep())
    else:
        header = json.dumps({"__metadata__": {**meta, "metrics": deep()}})
    with pytest.raises(UserError) as err:
        read_metadata(shipped_bytes(header), "model-0123456789abcdef.safetensors", "m.st")
    assert "nested" in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_deeply_nested_attack_params_in_a_bare_csv_are_no_traceback(tmp_path, robench_cli):
    """A row's attack_params are JSON too (their ``norm``): nested 60 000 deep they are read
    as params that name no norm, like any other params that are not JSON."""
    folder = bare_folder(tmp_path)
    rows = pd.read_csv(folder / "results.csv", dtype=str, keep_default_na=False)
    rows["attack_params"] = deep(60_000)  # under the CSV reader's 131 072-byte field limit
    rows.to_csv(folder / "results.csv", index=False)
    proc = robench_cli("leaderboard", str(folder / "results.csv"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
