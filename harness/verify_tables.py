"""``robench verify``'s table checks: every number of results.csv against the per-image
outcomes, and the folder's leaderboard.csv and checks.csv against what finalize computes now
from results.csv and outcomes.parquet (``robench.finalize.leaderboard_of`` / ``checked``).

Compared as tables: the computed frame is written to CSV text exactly as robench writes every
CSV (``robench.results.csv_text``), both texts are parsed as strings, and every cell must be
equal as text, so a number is compared to the CSV's printed precision. report.md is not
regenerated (it needs the figures drawn); its numbers are the leaderboard's and results.csv's,
which are checked here. Nothing is written.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from robench.eps import canonical_eps, eps_text
from robench.finalize import RunInputs, checked, leaderboard_of
from robench.outcomes import Cell, CellOutcomes
from robench.outdir import RunFiles
from robench.results import csv_text
from robench.resume import consistent

#: the tables finalize writes that verify recomputes
RECOMPUTED = ("leaderboard.csv", "checks.csv")


def cell_name(defense: Any, attack: Any, eps: Any, seed: Any) -> str:
    """How verify names a cell in its lines."""
    return f"[{defense}] {attack}@{eps_text(canonical_eps(eps))} seed {int(seed)}"


def row_problems(results: pd.DataFrame,
                 blocks: dict[Cell, CellOutcomes]) -> list[str]:
    """One line per results.csv row whose numbers are not what its per-image outcomes give
    (or that has none)."""
    problems = []
    for _, row in results.iterrows():
        key = (str(row["defense"]), str(row["attack"]), canonical_eps(row["eps"]),
               int(row["seed"]))
        name = cell_name(*key)
        block = blocks.get(key)
        if block is None:
            problems.append(f"{name}: results.csv has a row but outcomes.parquet no images")
            continue
        clean, adv, n = block.clean_correct, block.adv_correct, len(block)
        if int(row["n"]) != n:
            problems.append(f"{name}: results.csv says n={int(row['n'])}, outcomes.parquet "
                            f"has {n} images")
            continue
        counts = (int(clean.sum()), int((clean & adv).sum()), int((clean & ~adv).sum()))
        if not consistent(row.to_dict(), *counts, n=n):
            problems.append(f"{name}: results.csv's numbers are not what outcomes.parquet "
                            f"gives (clean {counts[0]}/{n}, robust {counts[1]}/{n})")
    return problems


def table_difference(name: str, stored: str, computed: str) -> str | None:
    """None when the two CSV texts are the same table (every cell equal as text), else what
    differs first, in a few words."""
    if stored == computed:
        return None
    try:
        a = pd.read_csv(io.StringIO(stored), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return f"{name} is not a readable CSV"
    b = pd.read_csv(io.StringIO(computed), dtype=str, keep_default_na=False)
    if list(a.columns) != list(b.columns):
        extra = sorted(set(a.columns) ^ set(b.columns))
        return f"{name} has other columns than finalize computes ({', '.join(extra[:4])})"
    if len(a) != len(b):
        return f"{name} has {len(a)} rows, finalize computes {len(b)}"
    differ = np.argwhere(a.to_numpy() != b.to_numpy())
    if not len(differ):
        return None  # the same cells: only quoting or line ends differ
    row, col = differ[0]
    column = a.columns[col]
    first = a.iloc[row, 0]
    return (f"{name} row {row + 1} ({first}), column {column}: stored {a.iloc[row, col]!r}, "
            f"computed now {b.iloc[row, col]!r} ({len(differ)} cells differ)")


def finalized_problems(inputs: RunInputs, files: RunFiles) -> list[str]:
    """One line per table finalize wrote that differs from what it computes now from the
    folder's results.csv and outcomes.parquet (an absent table is a problem too)."""
    checks, _ = checked(inputs)
    computed = {"leaderboard.csv": csv_text(leaderboard_of(inputs)),
                "checks.csv": csv_text(checks)}
    problems = []
    for name in RECOMPUTED:
        data = files.read(name, may_be_absent=True)
        if data is None:
            problems.append(f"{name} is missing (robench leaderboard FOLDER --write makes it)")
            continue
        diff = table_difference(name, data.decode("utf-8", errors="replace"), computed[name])
        if diff:
            problems.append(diff)
    return problems


__all__ = ["RECOMPUTED", "cell_name", "finalized_problems", "row_problems",
           "table_difference"]
