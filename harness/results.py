"""Result rows and their files.

``ResultRow`` is the one definition of a results.csv row: its field list is the column list of
results.csv and of docs/outputs.md's table (tests/test_docs.py keeps them in step). Every file
goes through the run's ``OutputFolder`` (atomic, link-safe, only robench's own files replaced),
so a killed run never leaves a torn CSV. Resume trusts a stored row only when it is exactly the
cell the plan is about to compute and its numbers are exactly what its per-image outcomes give
(see ``ResultTable.verified`` and ``robench.resume``).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from robench.eps import FLOAT_FORMAT, canonical_eps, same_eps
from robench.errors import UserError
from robench.outdir import OutputFolder, RunFiles, check_whole_csv
from robench.outdir.atomic import atomic_write_text as atomic_write_text  # its old home

if TYPE_CHECKING:
    from robench.outcomes import Cell


@dataclass(frozen=True)
class ResultRow:
    """One results.csv row: one (defense, attack, eps, seed) cell. Documented in docs/outputs.md."""

    suite: str
    dataset: str
    data_hash: str            # sha256 prefix of the dataset's images and labels
    model: str
    defense: str              # the defense entry's label
    defense_name: str         # its plugin
    defense_params: str       # canonical JSON, defaults included
    attack: str               # the attack entry's label
    attack_name: str
    attack_params: str
    backend: str
    eps: float                # canonical (robench.eps)
    seed: int                 # the suite seed
    n: int                    # images attacked
    clean_acc: float
    clean_acc_lo: float       # 95 % Wilson score interval of clean_acc (robench.stats)
    clean_acc_hi: float
    robust_acc: float         # correct before AND after the attack (bound: certified)
    robust_acc_lo: float      # 95 % Wilson score interval of robust_acc
    robust_acc_hi: float
    attack_success_rate: float
    attack_seconds: float
    defense_seconds: float
    robench_version: str
    torch_version: str
    created_at: str
    role: str                 # eval | check | bound (a verifier's lower bound)
    model_hash: str           # sha256 prefix of the attacked model's weights
    code_hash: str            # of the attack's and the evaluation loop's source


RESULT_COLUMNS: list[str] = [f.name for f in fields(ResultRow)]
#: text columns are read as text (a hash like "0123e4" must not become a number)
TEXT_DTYPES = {f.name: str for f in fields(ResultRow) if f.type == "str"}
DEFENSE_METRIC_COLUMNS = ["defense", "seed", "method", "step", "metric", "value"]
TIMING_COLUMNS = ["attack_seconds", "defense_seconds", "created_at"]


def csv_text(frame: pd.DataFrame) -> str:
    """The CSV text of a table as robench writes every CSV (floats round-trip eps exactly)."""
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT)


def write_csv(folder: OutputFolder, name: str, frame: pd.DataFrame) -> None:
    folder.write_text(name, csv_text(frame))


def write_json(folder: OutputFolder, name: str, data: Any) -> None:
    folder.write_text(name, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@dataclass(frozen=True)
class CellExpectation:
    """What a stored row must say to count as the cell the plan is about to compute."""

    defense: str
    attack: str
    seed: int
    data_hash: str
    defense_params: str
    attack_params: str
    role: str
    n: int
    model_hash: str
    code_hash: str


class ResultTable:
    """The rows of results.csv, rewritten atomically after every finished cell."""

    NAME = "results.csv"

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        self.path = folder.path / self.NAME
        self.rows: list[dict[str, Any]] = []

    def load_existing(self, data: bytes | None = None) -> int:
        """Read the rows already on disk (or ``data``, the file's bytes as a reader verified
        them: ``robench plan``); returns how many could not be parsed (dropped)."""
        if data is None and (not self.path.exists() or self.path.stat().st_size == 0):
            return 0
        if data is not None and not data:
            return 0
        try:
            frame = _read_csv(self.path if data is None else io.StringIO(data.decode("utf-8")))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
                ValueError):
            return -1
        if not set(RESULT_COLUMNS) <= set(frame.columns):
            return len(frame)
        records = frame.to_dict("records")
        self.rows = [r for r in records if _complete(r)]
        return len(records) - len(self.rows)

    def verified(self, expect: CellExpectation, eps: float) -> dict[str, Any] | None:
        """The stored row of this cell if it matches every expectation, else None."""
        for row in self.rows:
            if (str(row["defense"]), str(row["attack"])) != (expect.defense, expect.attack):
                continue
            if canonical_eps(row["eps"]) != canonical_eps(eps) or int(row["seed"]) != expect.seed:
                continue
            if (str(row["data_hash"]) == expect.data_hash
                    and str(row["defense_params"]) == expect.defense_params
                    and str(row["attack_params"]) == expect.attack_params
                    and str(row["role"]) == expect.role and int(row["n"]) == expect.n
                    and str(row["model_hash"]) == expect.model_hash
                    and str(row["code_hash"]) == expect.code_hash):
                return row
        return None

    def replace_cells(self, rows: list[ResultRow]) -> None:
        """Store fresh rows, replacing any stored row of the same cells, and flush."""
        keys = {(r.defense, r.attack, canonical_eps(r.eps), r.seed) for r in rows}
        self.rows = [r for r in self.rows
                     if (str(r["defense"]), str(r["attack"]), canonical_eps(r["eps"]),
                         int(r["seed"])) not in keys]
        self.rows.extend(asdict(r) for r in rows)
        self.flush()

    def keep_only(self, cells: set[Cell]) -> int:
        """Drop rows that are no cell of the plan; returns how many were dropped."""
        before = len(self.rows)
        self.rows = [r for r in self.rows if (str(r["defense"]), str(r["attack"]),
                                              canonical_eps(r["eps"]), int(r["seed"])) in cells]
        if len(self.rows) != before:
            self.flush()
        return before - len(self.rows)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=RESULT_COLUMNS)
        return frame[RESULT_COLUMNS]

    def keys(self) -> set[Cell]:
        return {(str(r["defense"]), str(r["attack"]), canonical_eps(r["eps"]), int(r["seed"]))
                for r in self.rows}

    def flush(self) -> None:
        write_csv(self.folder, self.NAME, self.frame())


def _complete(row: dict[str, Any]) -> bool:
    """A row whose fields parse: labels present, counts and accuracies valid numbers."""
    try:
        if any(pd.isna(row[c]) for c in ("defense", "attack", "model_hash", "code_hash")):
            return False
        accs = [float(row[c]) for c in ("clean_acc", "robust_acc")]
        return (all(0.0 <= a <= 1.0 for a in accs) and int(row["n"]) > 0
                and math.isfinite(float(row["eps"])) and int(row["seed"]) == float(row["seed"]))
    except (TypeError, ValueError, KeyError, OverflowError):  # OverflowError: n or seed inf
        return False


def read_results(path: Path, files: RunFiles | None = None) -> pd.DataFrame:
    """Read a results.csv (or a results folder) written by ``robench run``: as robench wrote
    it (``files``, default ``RunFiles.of(path)``: verified against the folder's manifest, a
    regular file, whole; see ``robench.outdir.verify``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not os.path.lexists(path):
        raise UserError("results file not found", where=str(path))
    own = files is None  # read here: warned here, once the table has parsed
    files = files or RunFiles.of(path)
    data = files.read(path.name)
    if data is None:
        raise UserError("results file not found", where=str(path))
    text = check_whole_csv(data, str(path))
    try:
        frame = _read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            ValueError) as err:
        raise UserError(f"not a readable CSV ({' '.join(str(err).split())[:120]})",
                        where=str(path)) from None
    missing = [c for c in RESULT_COLUMNS if c not in frame]
    if missing or frame.empty:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"not a robench results table (missing columns: {shown or 'rows'})",
                        where=str(path))
    for column in ("eps", "seed", "n", "clean_acc", "robust_acc"):
        if (not pd.api.types.is_numeric_dtype(frame[column])
                or not frame[column].map(math.isfinite).all()):
            raise UserError(f"not a robench results table (column {column!r} holds values that "
                            "are not numbers)", where=str(path))
    bad = ~(frame["clean_acc"].between(0, 1) & frame["robust_acc"].between(0, 1)
            & (frame["n"] > 0) & (frame["eps"] >= 0))
    if bad.any():
        raise UserError(f"not a robench results table (row {int(bad.idxmax()) + 2}: accuracies "
                        "must be in [0, 1], n > 0, eps >= 0)", where=str(path))
    if frame[["defense", "attack", "attack_name"]].isna().any().any():
        raise UserError("not a robench results table (empty defense, attack or attack_name)",
                        where=str(path))
    if own:
        files.warn()
    return frame.assign(eps=frame["eps"].map(canonical_eps))


def _read_csv(path: Path | io.StringIO) -> pd.DataFrame:
    """Text columns as text, and only an empty field is missing (a label "NA" stays "NA")."""
    return pd.read_csv(path, dtype=TEXT_DTYPES, keep_default_na=False, na_values=[""])


def eps_mask(values: pd.Series, eps: float) -> pd.Series:
    """A boolean mask of the entries of an eps column (results or outcomes) that are the budget
    ``eps``. ``same_eps`` is decided once per distinct value, not once per row: an outcome
    table holds one row per image and cell but only a handful of distinct eps values."""
    verdict = {value: same_eps(value, eps) for value in pd.unique(values)}
    return values.map(verdict).astype(bool)
