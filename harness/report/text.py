"""Numbers and labels as the report prints them, the same in Markdown and HTML.

Accuracies are percentages with one decimal, intervals ``[lo, hi]``, p-values three decimals
(``<0.001`` below), and anything missing (``None``, ``pd.NA``, NaN) is ``DASH``, never ``<NA>``
or ``nan``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

DASH = "–"                  # shown for anything missing (never <NA> or nan)
BADGE = {"pass": "PASS ✓", "warn": "WARN !", "fail": "FAIL ✗"}


def missing(value: Any) -> bool:
    """Whether ``value`` is absent: None, ``pd.NA``, ``pd.NaT`` or NaN."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_float(value: Any) -> float | None:
    """``value`` as a float, None when missing."""
    return None if missing(value) else float(value)


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; "–" when missing."""
    return DASH if missing(value) else f"{100 * float(value):.1f}"


def interval_text(lo: Any, hi: Any) -> str:
    """An interval of fractions as ``[lo, hi]`` in %; "" when either end is missing."""
    return "" if missing(lo) or missing(hi) else f"[{pct(lo)}, {pct(hi)}]"


def p_text(value: Any) -> str:
    """A p-value with three decimals, ``<0.001`` below that; "–" when missing."""
    if missing(value):
        return DASH
    value = float(value)
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def rank_text(value: Any) -> str:
    """The leaderboard's rank (an integer, a range such as "4–12", or missing) as text."""
    if missing(value) or str(value).strip() in ("", "nan", "<NA>", "None"):
        return DASH
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def number(value: Any) -> str:
    """A number with four significant digits, anything else as is; "–" when missing."""
    if missing(value):
        return DASH
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)


def plural(n: int, word: str) -> str:
    """``n word`` with an ``s`` unless ``n`` is 1."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def n_note(results: pd.DataFrame, attack: str) -> str:
    """How many images ``attack`` ran on: ``n = 500``, or a range over its rows."""
    n = results.loc[results["attack"] == attack, "n"]
    if n.empty:
        return ""
    lo, hi = int(n.min()), int(n.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def n_note_all(results: pd.DataFrame) -> str:
    """The largest number of images any row ran on, as ``n = …``."""
    return f"n = {int(results['n'].max())}" if not results.empty else ""
