"""What resume trusts: a stored cell is reused only when its row is exactly the cell this run
would compute and every number in the row is what its per-image outcomes give. ``robench run``
(``robench.recorder``) and ``robench plan`` (``robench.preflight``) ask the same question.
"""

from __future__ import annotations

import math
from typing import Any

from robench.outcomes import OutcomeTable
from robench.results import CellExpectation, ResultTable
from robench.stats import wilson_interval


def interval_columns(name: str, k: int, n: int) -> dict[str, float]:
    """The Wilson interval of ``k`` of ``n`` as a row's ``<name>_lo`` and ``<name>_hi``."""
    lo, hi = wilson_interval(k, n)
    return {f"{name}_lo": float(lo), f"{name}_hi": float(hi)}


def consistent(row: dict[str, Any], clean: int, robust: int, fooled: int, n: int) -> bool:
    """Whether every number of a stored row is what its per-image outcomes give."""
    expected = {"clean_acc": clean / n, "robust_acc": robust / n,
                "attack_success_rate": fooled / clean if clean else float("nan")}
    expected.update(interval_columns("clean_acc", clean, n))
    expected.update(interval_columns("robust_acc", robust, n))
    for column, value in expected.items():
        stored = float(row[column])
        if math.isnan(value) != math.isnan(stored):
            return False
        if not math.isnan(value) and abs(stored - value) > 1e-9 * max(1.0, abs(value)):
            return False
    return True


def cell_verified(table: ResultTable, outcomes: OutcomeTable, expect: CellExpectation,
                  eps: float, image_ids: list[int]) -> bool:
    """Whether a stored cell is exactly this cell and every number in its row is what its
    per-image outcomes (for exactly these images) give: what resume trusts (``robench plan``
    asks the same)."""
    row = table.verified(expect, eps)
    if row is None:
        return False
    counts = outcomes.counts(expect.defense, expect.attack, eps, expect.seed, image_ids)
    return counts is not None and consistent(row, *counts, n=len(image_ids))


__all__ = ["cell_verified", "consistent", "interval_columns"]
