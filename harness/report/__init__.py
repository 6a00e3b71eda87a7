"""The report: report.md and a self-contained report.html, plus the figures (PNG + SVG).

Written for a reviewer who wants to see in ten seconds which defenses hold up and which numbers
cannot be trusted, in this order (the markdown follows the same order):

1. **Summary**: first, when the run is incomplete, which defenses were not fully measured (or
   that completeness cannot be checked: no run.json); then one line per defense: rank (or why
   it is unranked), a status badge that reads without colour (PASS / WARN / FAIL), clean
   accuracy and the worst case at the threat eps with their 95 % intervals, the paired p-value
   against ``none`` and verified accuracy when the leaderboard has them.
2. **Checks**: failures and warnings first, each with its detail and a one-line explanation of
   what it means; the passes collapsed.
3. **Leaderboard** by attack: one column group per attack with its eps columns, packed into
   tables that fit a 1400 px page; numbers right-aligned with one decimal, "–" when missing.
4. **Figures**: the worst case per defense with its interval; accuracy vs eps per attack (legend
   outside the axes, interval bands); one small panel per defense when there are more than
   ``SMALL_MULTIPLES_ABOVE`` defenses.
5. **Defense metrics** (when the run logged any) and the **provenance** footer: suite and
   source file, revision and dirty flag, versions, device, wall time, reproduction, images per
   attack.

The leaderboard is consumed generically (``robench.leaderboard``'s contract): its columns are
read once by name (``columns``: ``<attack>@<eps>``, ``<attack>_mean``, ``worst@<eps>`` with
optional ``_lo``/``_hi``, ``worst_n``, ``p_vs_none``, ``verified…``), anything else is shown as
is. Every write goes through the ``OutputFolder``; figures are rendered in memory.

The run's own files (defense_metrics.csv, run.json, run.log) are read as robench wrote them
(``read_report_inputs``, through ``robench.outdir.RunFiles``); a report made from files no
manifest vouches for says "unverified" in its title.

The package, in reading order: ``write_report`` (here) reads the run's files, draws the figures
(``figures``), computes the content once (``content``, from ``columns``, ``layout``, ``text``
and the check registry's meanings) and renders it as Markdown (``markdown``) and HTML
(``html``, a Jinja2 template in ``templates/``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robench.completeness import read_run_record
from robench.errors import UserError
from robench.outdir import OutputFolder, RunFiles, check_whole_csv
from robench.report.columns import AttackColumns, BoardColumn, BoardColumns, WorstCase
from robench.report.content import ReportContent
from robench.report.figures import SMALL_MULTIPLES_ABOVE, Figure, plot_curves
from robench.report.html import render_html
from robench.report.layout import (
    PAGE_PX,
    TABLE_BUDGET_PX,
    ColumnGroup,
    DefenseLine,
    TableColumn,
    board_groups,
    defense_lines,
    pack_groups,
    problem_rows,
    provenance,
)
from robench.report.markdown import render_markdown
from robench.report.text import BADGE, DASH, interval_text, p_text, pct, rank_text

__all__ = [
    "BADGE", "DASH", "PAGE_PX", "SMALL_MULTIPLES_ABOVE", "TABLE_BUDGET_PX", "AttackColumns",
    "BoardColumn", "BoardColumns", "ColumnGroup", "DefenseLine", "Figure", "ReportContent",
    "ReportInputs", "TableColumn", "WorstCase", "board_groups", "defense_lines", "interval_text",
    "p_text", "pack_groups", "pct", "plot_curves", "problem_rows", "provenance", "rank_text",
    "read_report_inputs", "render_html", "render_markdown", "write_report",
]


# -- reading the run's own files ------------------------------------------------------------
@dataclass(frozen=True)
class ReportInputs:
    """What the report reads from the run's folder besides the finalized tables; ``note``: the
    "unverified" mark of a folder no manifest vouches for (None: verified)."""

    metrics: pd.DataFrame | None
    run: dict
    log: list[str]
    note: str | None = None


def read_report_inputs(files: RunFiles) -> ReportInputs:
    """defense_metrics.csv, run.json and run.log of a results folder, each verified before it
    is parsed (one-line ``UserError`` for an edited, damaged or non-regular file)."""
    return ReportInputs(_read_optional(files, "defense_metrics.csv"),
                        read_run_record(files) or {}, _read_log(files, "run.log"),
                        files.note)


def _read_optional(files: RunFiles, name: str) -> pd.DataFrame | None:
    path = files.folder / name
    data = files.read(name)
    if not data:
        return None
    try:
        return pd.read_csv(io.StringIO(check_whole_csv(data, str(path))))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"not a readable CSV ({type(err).__name__})", where=str(path)) from None


def _read_log(files: RunFiles, name: str) -> list[str]:
    data = files.read(name)
    return [] if data is None else data.decode("utf-8", errors="replace").splitlines()


def write_report(out: OutputFolder, results: pd.DataFrame, checks: pd.DataFrame,
                 board: pd.DataFrame, source: Path | ReportInputs) -> tuple[Path, Path]:
    """report.md and a self-contained report.html (images inlined) in the folder ``out``, from
    the finalized tables (see ``robench.finalize``) and the run's files: already read
    (``ReportInputs``), or read here from the folder ``source``."""
    if not isinstance(source, ReportInputs):
        files = RunFiles.of(source)
        source = read_report_inputs(files)
        files.warn()
    inputs = source
    figures = plot_curves(results, out, board)
    report = ReportContent(results, checks, board, inputs.metrics, inputs.run, inputs.log,
                           figures, note=inputs.note)
    out.write_text("report.md", render_markdown(report))
    out.write_text("report.html", render_html(report))
    return out.path / "report.md", out.path / "report.html"
