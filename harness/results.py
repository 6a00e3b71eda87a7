"""Result rows and their files. Every file is written atomically (temp file + rename), so a
killed run never leaves a torn CSV, and a re-run can resume from the rows already there."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

#: results.csv columns, one row per (defense, attack, eps, seed). Documented in the README.
RESULT_COLUMNS = [
    "suite", "dataset", "model", "defense", "defense_name", "defense_params",
    "attack", "attack_name", "attack_params", "backend", "eps", "seed", "n",
    "clean_acc", "robust_acc", "attack_success_rate", "attack_seconds", "defense_seconds",
    "robench_version", "torch_version", "created_at", "role",
]
CELL_KEY = ["defense", "attack", "eps", "seed"]
DEFENSE_METRIC_COLUMNS = ["defense", "method", "step", "metric", "value"]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def params_json(params: Any) -> str:
    """Canonical JSON of a params object/dict (the same params always give the same text)."""
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


class ResultTable:
    """The rows of results.csv, rewritten atomically after every finished cell."""

    def __init__(self, path: Path, columns: list[str] | None = None,
                 key: list[str] | None = None) -> None:
        self.path = path
        self.columns = columns or RESULT_COLUMNS
        self.key = key or CELL_KEY
        self.rows: list[dict[str, Any]] = []

    def load_existing(self) -> None:
        if self.path.exists() and self.path.stat().st_size > 0:
            frame = pd.read_csv(self.path)
            self.rows = frame.to_dict("records")

    def has(self, **key: Any) -> bool:
        return any(all(_same(row[k], v) for k, v in key.items()) for row in self.rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.flush()

    def replace_where(self, rows: list[dict[str, Any]], **key: Any) -> None:
        self.rows = [r for r in self.rows if not all(_same(r[k], v) for k, v in key.items())]
        self.add(rows)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        for column in self.columns:
            if column not in frame:
                frame[column] = pd.Series(dtype=object)
        extra = [c for c in frame.columns if c not in self.columns]
        return frame[self.columns + extra]

    def flush(self) -> None:
        write_csv(self.path, self.frame())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-12
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def read_results(path: Path) -> pd.DataFrame:
    """Read a results.csv (or a results folder) written by ``robench run``."""
    from robench.errors import UserError

    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise UserError("results file not found", where=str(path))
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"not a readable CSV ({err})", where=str(path)) from None
    missing = [c for c in ("defense", "attack", "eps", "clean_acc", "robust_acc", "attack_name")
               if c not in frame]
    if missing or frame.empty:
        raise UserError(f"not a robench results table (missing columns: {missing or 'rows'})",
                        where=str(path))
    return frame
