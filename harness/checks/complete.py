"""The ``complete`` check: every cell the run planned for a defense has its row.

A defense with planned cells missing (the run was stopped, rows were deleted) fails: its worst
case covers only the attacks present, so it cannot be ranked. A planned defense without any row
fails as "not measured", and so do rows of a defense the plan does not list. Nothing is
checked when the plan is unknown (a results.csv without run.json); the leaderboard says so
instead (``robench.completeness``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from robench.checks.registry import FAIL, register
from robench.completeness import Completeness, cells_text
from robench.outcomes import Cell

COMPLETE = register(
    "complete", FAIL,
    "planned cells of this defense have no row (the run was stopped or rows were deleted): "
    "its worst case, if any, covers only the attacks present, so it is unranked; run the same "
    "command again to resume")


def complete_checks(results: pd.DataFrame,
                    planned: Completeness | Iterable[Cell] | None) -> list[dict[str, Any]]:
    """One ``complete`` row per planned defense (none when the plan is unknown)."""
    plan = Completeness.of(planned)
    if not plan.known:
        return []
    missing, measured = plan.missing(results), plan.measured(results)
    rows = []
    for defense in plan.defenses():
        total, absent = len(plan.planned_of(defense)), missing.get(defense, set())
        if defense not in measured:
            detail = f"not measured: none of its {total} planned cells has a row"
        elif absent:
            detail = (f"{len(absent)} of {total} planned cells missing: "
                      f"{cells_text(absent, plan.seeds())}")
        else:
            detail = f"all {total} planned cells present"
        rows.append(COMPLETE.row(defense, bool(absent), detail))
    for defense in dict.fromkeys(str(d) for d in results["defense"]):
        if defense not in plan.defenses():  # rows the recorded run did not plan
            rows.append(COMPLETE.row(defense, True, "not in the run's plan (run.json): rows "
                                     "of another run?"))
    return rows
