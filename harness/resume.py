"""What resume trusts: a stored cell is reused only when its row is exactly the cell this run
would compute and every number in the row is what its per-image outcomes give. ``robench run``
(``robench.recorder``) and ``robench plan`` (``robench.preflight``) ask the same question.
"""

from __future__ import annotations

import math
from typing import Any

from robench.eps import canonical_eps
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


def stored_row(table: ResultTable, expect: CellExpectation, eps: float) -> dict[str, Any] | None:
    """The stored row of this cell (defense, attack, eps, seed), whatever else it says."""
    for row in table.rows:
        if ((str(row["defense"]), str(row["attack"]), int(row["seed"]))
                == (expect.defense, expect.attack, expect.seed)
                and canonical_eps(row["eps"]) == canonical_eps(eps)):
            return row
    return None


#: what a stored row says that the cell this run computes must say too, and what a difference
#: means, in the order a reader acts on it
_FIELDS = (("data_hash", "the dataset differs"), ("defense_params", "defense settings differ"),
           ("attack_params", "attack settings differ"), ("role", "the attack's role differs"),
           ("n", "another number of images"), ("model_hash", "model weights differ"),
           ("code_hash", "the attack's code differs"))


def unverified_reason(table: ResultTable, outcomes: OutcomeTable, expect: CellExpectation,
                      eps: float, image_ids: list[int]) -> str | None:
    """Why the stored row of this cell does not verify (``cell_verified``), in a few words; None
    when it verifies or there is no stored row."""
    row = stored_row(table, expect, eps)
    if row is None or cell_verified(table, outcomes, expect, eps, image_ids):
        return None
    for field, meaning in _FIELDS:
        stored, wanted = row[field], getattr(expect, field)
        if (int(stored) != wanted) if field == "n" else str(stored) != str(wanted):
            return meaning
    counts = outcomes.counts(expect.defense, expect.attack, eps, expect.seed, image_ids)
    if counts is None:
        return "its per-image outcomes are missing or for other images"
    return "its numbers are not what its per-image outcomes give"


__all__ = ["cell_verified", "consistent", "interval_columns", "stored_row", "unverified_reason"]
