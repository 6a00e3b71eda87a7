"""The report's content, computed once from the finalized tables and rendered twice.

``ReportContent`` holds everything report.md and report.html show (summary lines, problems,
passes, column groups and packed tables, figures, defense metrics, provenance) and the
sentences both share (headline, interval note, check counts); ``robench.report.markdown`` and
``robench.report.html`` only lay it out.
"""

from __future__ import annotations

import pandas as pd

from robench.adaptive import run_notes
from robench.checks import STATUSES
from robench.leaderboard import (
    HOLM_NOTE,
    INCOMPLETE,
    ONE_SEED,
    UPPER_BOUND_MARK,
    UPPER_BOUND_NOTE,
    completeness_notes,
    subset_notes,
    upper_bounds,
)
from robench.report.columns import BoardColumns
from robench.report.figures import Figure
from robench.report.layout import (
    board_groups,
    defense_lines,
    pack_groups,
    problem_rows,
    provenance,
    shown_p_column,
)
from robench.report.text import DASH, missing, number, plural


class ReportContent:
    """The report's content, computed once and rendered as Markdown and as HTML."""

    def __init__(self, results: pd.DataFrame, checks: pd.DataFrame, board: pd.DataFrame,
                 metrics: pd.DataFrame | None, run: dict, log: list[str],
                 figures: list[Figure], note: str | None = None) -> None:
        # note: the "unverified" mark of files no manifest vouches for, in the title itself
        self.title = str(results["suite"].iloc[0]) + (f" ({note})" if note else "")
        self.results, self.checks, self.board = results, checks, board
        self.columns = BoardColumns.of(board)
        self.worst = self.columns.worst
        self.lines, self.derived_ci = defense_lines(board, checks, results, self.columns)
        self.problems = problem_rows(checks, [str(d) for d in board["defense"]])
        self.passes = checks[checks["status"] == "pass"]
        self.groups = board_groups(board, results, self.columns)
        longest = max((len(str(d)) for d in board["defense"]), default=8)
        self.tables = pack_groups(self.groups, fixed_px=40 + min(260, 8 * longest + 12))
        self.metrics = last_metrics(metrics, [str(d) for d in board["defense"]])
        self.provenance = provenance(run, log, results)
        self.figures = figures
        self.notes = subset_notes(results)
        self.adaptive = run_notes(run)  # adaptive attacks: which, for which defenses, why
        self.completeness = completeness_notes(board)

    @property
    def has_p(self) -> bool:
        """Whether the summary has a p-value column."""
        return any(line.p is not None for line in self.lines)

    @property
    def has_verified(self) -> bool:
        """Whether the summary has a verified-accuracy column."""
        return any(line.verified is not None for line in self.lines)

    @property
    def incomplete(self) -> int:
        """How many defenses were not fully measured (incomplete or without rows)."""
        return int((self.board["complete"] == INCOMPLETE).sum()) if "complete" in self.board \
            else 0

    def completeness_lead(self) -> tuple[str, str]:
        """The summary's first sentence, (bold part, rest), when the run is incomplete or its
        completeness unknown (("", "") when every planned cell has its row)."""
        if not self.completeness:
            return "", ""
        if not self.incomplete:  # one line: completeness cannot be checked
            return "", self.completeness[0][0].upper() + self.completeness[0][1:] + "."
        return (f"Incomplete run: {self.incomplete} of {plural(len(self.lines), 'defense')} "
                "not fully measured, so unranked.", "; ".join(self.completeness) + ".")

    def headline(self) -> str:
        """Defenses and their statuses, the threat model, data and model, in one line."""
        counts = {s: sum(line.status == s for line in self.lines) for s in STATUSES}
        parts = [plural(len(self.lines), "defense")] + [f"{n} {s}" for s, n in counts.items()
                                                         if n]
        if self.incomplete:
            parts.insert(1, f"{self.incomplete} incomplete")
        eps = self.worst.threat
        if eps:
            parts.append(f"threat model L∞ eps {eps}")
        data = self.results["dataset"].iloc[0] if "dataset" in self.results else ""
        model = self.results["model"].iloc[0] if "model" in self.results else ""
        if data or model:
            parts.append(f"{data} / {model}".strip(" /"))
        return " · ".join(parts)

    def p_header(self) -> str:
        """The summary's p column header (the value that decides: Holm-adjusted if present)."""
        return "p vs none (Holm)" if shown_p_column(self.board) != "p_vs_none" else "p vs none"

    def worst_header(self) -> str:
        """The summary's worst-case column header."""
        eps = self.worst.threat
        return f"worst case @ {eps}" if eps else "worst case"

    def ci_note(self) -> str:
        """What the summary's numbers and intervals are."""
        how = ("per image: an image counts only if it is correct and survives every regular "
               "attack at the threat eps, on the images all of them evaluated"
               if self.columns.worst_kind == "per image" else
               "the minimum over the attacks run at the threat eps")
        text = (f"Accuracy in % with 95 % Wilson score intervals in brackets; the worst case is "
                f"{how}. A defense with a failed check is unranked (–): its numbers cannot be "
                "trusted; so is one with planned cells missing (its worst case covers only the "
                "attacks present).")
        if "seeds" in self.board:
            text += (" Several seeds: accuracies are means over seeds; the intervals of the "
                     "worst case and of clean accuracy cover both the Student-t interval over "
                     "seeds and the Wilson interval of the mean count, and p vs none is paired "
                     "over seeds; curve "
                     "bands are the envelope of the per-seed Wilson intervals.")
        else:
            text += f" {ONE_SEED}"
        text += f" {HOLM_NOTE.replace('`p_vs_none_holm`', 'p vs none (Holm)')}"
        text += "".join(f" {d}: {cells.replace(';', ', ')} {UPPER_BOUND_MARK}."
                        for d, cells in upper_bounds(self.board).items())
        if upper_bounds(self.board):
            text += f" {UPPER_BOUND_NOTE.replace('`', '')}"
        if self.derived_ci:
            text += (" The worst case's interval is that of the attack that attains the "
                     "minimum (the leaderboard has no per-image worst-case interval).")
        return text

    def check_counts(self) -> str:
        """How many checks failed, warned and passed, over how many defenses."""
        n = {s: int((self.checks["status"] == s).sum()) for s in STATUSES}
        return (f"{n['fail']} failed, {n['warn']} warned, {n['pass']} passed "
                f"({plural(len(self.checks), 'check')} over "
                f"{plural(self.checks['defense'].nunique(), 'defense')})")


def last_metrics(metrics: pd.DataFrame | None, defenses: list[str]) -> pd.DataFrame | None:
    """The last logged value of each (defense, metric), one row per defense (wide) when the
    metrics are few, else long; every value already as text."""
    if metrics is None or metrics.empty or not {"defense", "metric", "value"} <= set(metrics):
        return None
    if "step" in metrics:
        metrics = metrics.sort_values("step", kind="stable")
    last = metrics.groupby(["defense", "metric"], sort=False).tail(1)
    if last["metric"].nunique() <= 10:
        wide = last.pivot(index="defense", columns="metric", values="value")
        rows = [d for d in defenses if d in set(wide.index)]
        rows += [d for d in dict.fromkeys(last["defense"]) if d not in rows]
        wide = wide.reindex(index=rows, columns=list(dict.fromkeys(last["metric"])))
        # one format per column: whole numbers as such, else three decimals
        wide = wide.apply(_column_text)
        return wide.reset_index()
    last = last[["defense", "metric", "value"]].reset_index(drop=True)
    return last.assign(value=last["value"].map(number))


def _column_text(column: pd.Series) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().all():
        return column.map(lambda v: DASH if missing(v) else str(v))
    whole = bool(((values.dropna() % 1) == 0).all())
    return values.map(lambda v: DASH if missing(v) else f"{v:.0f}" if whole else f"{v:.3f}")
