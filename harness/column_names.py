"""The column names robench generates, and the labels they reserve.

An attack's label names leaderboard columns (``<label>@<eps>``, ``<label>_mean``) and a defense's
label names a row; both are values of results.csv's ``attack``/``defense`` columns. A label that
spells a generated name is read as that name: an attack labelled ``verified`` made a
``verified@0.1`` column that passed for a verifier's certified accuracy (or, next to ``ibp``,
collided with it after the whole run). ``robench.leaderboard`` and ``robench.report.columns``
name their columns from here, and suite validation (``robench.config``, ``robench.plan``)
refuses the labels ``reserved_label_reason`` names.
"""

from __future__ import annotations

from robench.results import RESULT_COLUMNS

#: the worst case's column (``worst@<eps>``, with ``_lo``/``_hi``; ``worst`` without an eps)
WORST = "worst"
#: a verifier's certified-accuracy columns (``verified@<eps>``); the report reads every column
#: whose name starts with it as one
VERIFIED = "verified"

#: leaderboard columns with a fixed name and meaning (the summary, ranks and the worst case's
#: statistics)
FIXED_COLUMNS = frozenset({"rank", "defense", "clean_acc", "status", "reason", "p_vs_none",
                           "worst_n", "worst_kind", "clean_acc_lo", "clean_acc_hi", "worst_sd",
                           "seeds", "p_vs_none_holm", "clean_sd", "clean_per_seed",
                           "worst_per_seed", "upper_bound"})

#: a defense's completeness against the run's plan (``robench.completeness``): whether all its
#: planned cells have rows, how many do not and which
COMPLETENESS_COLUMNS = ("complete", "missing", "missing_cells")

#: every generated name a label must not spell (compared case-insensitively: ``Verified``
#: reads as ``verified`` in a table)
RESERVED_LABELS = frozenset(FIXED_COLUMNS | set(COMPLETENESS_COLUMNS) | set(RESULT_COLUMNS)
                            | {WORST, f"{WORST}_lo", f"{WORST}_hi", VERIFIED})
#: generated names that are prefixes: a label starting with one is read as that column
RESERVED_PREFIXES = (VERIFIED,)


def reserved_label_reason(label: str) -> str | None:
    """Why ``label`` cannot name a defense or an attack, as "must not ..." (None: it can)."""
    folded = label.casefold()
    prefix = next((p for p in RESERVED_PREFIXES if folded.startswith(p)), None)
    if prefix is not None:
        return (f"must not start with {prefix!r} (the leaderboard's {prefix}@eps columns: a "
                "verifier's certified accuracy)")
    if folded in RESERVED_LABELS:
        return "must not be a column name the leaderboard, report or results.csv generates"
    return None
