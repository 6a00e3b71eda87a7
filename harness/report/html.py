"""report.html: the report's content rendered through a Jinja2 template into one self-contained
page (style sheet and figures inlined).

The template (``templates/report.html.j2``) and the style sheet (``templates/report.css``) are
package files. Autoescape is on, and every ``{{ value }}`` is escaped with ``html.escape`` (the
``finalize`` hook): markupsafe's own escaping would write quotes as ``&#39;``/``&#34;`` where the
report has always written ``&#x27;``/``&quot;``. Nothing a run provides (labels, check details,
provenance) reaches the page unescaped; only the ``wbr`` filter's output (escaped first), the
template's macros and the style sheet are markup.
"""

from __future__ import annotations

import base64
import html
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from jinja2.ext import Extension
from markupsafe import Markup

from robench.report.content import ReportContent
from robench.report.layout import ColumnGroup, DefenseLine
from robench.report.text import BADGE, DASH, rank_text

_BREAK_AFTER = set("_:[]@,.=-/+")


class OneLine(Extension):
    """Template lines stripped and joined: indentation and line breaks in the template are for
    its reader, not for the page (which writes a line break as ``{{ "\\n" }}``)."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return "".join(line.strip() for line in source.splitlines())


def escaped(value: Any) -> Markup:
    """A value as the page shows it: ``html.escape`` of its text; markup as is."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def breakable(value: Any) -> Markup:
    """A label in HTML: escaped, with break opportunities (``<wbr>``) after ``_ : [ @ , . =``
    and inside long unbroken runs, so long labels wrap instead of widening the page."""
    out, run = [], 0
    for char in str(value):
        out.append(html.escape(char, quote=True))
        run += 1
        if char in _BREAK_AFTER or run >= 18:
            out.append("<wbr>")
            run = 0
    return Markup("".join(out))


@cache
def environment() -> Environment:
    """The Jinja2 environment of the report's templates (package files)."""
    env = Environment(loader=PackageLoader("robench.report", "templates"), autoescape=True,
                      finalize=escaped, undefined=StrictUndefined, extensions=[OneLine])
    env.filters["wbr"] = breakable
    return env


def _bar(line: DefenseLine) -> dict[str, str | None] | None:
    """A small bar of the worst case with its interval as a whisker, in % of the bar
    (decoration: the numbers are in the cell before)."""
    if line.worst_value is None:
        return None
    bar: dict[str, str | None] = {"fill": f"{100 * line.worst_value:.1f}",
                                  "whisker_left": None, "whisker_width": None}
    if line.worst_lo is not None and line.worst_hi is not None:
        bar["whisker_left"] = f"{100 * line.worst_lo:.1f}"
        bar["whisker_width"] = f"{max(100 * (line.worst_hi - line.worst_lo), 0.5):.1f}"
    return bar


def _table(report: ReportContent, groups: list[ColumnGroup]) -> dict[str, Any]:
    """One leaderboard table: its column groups, and per defense its rank, name and cells
    (one list per group)."""
    rows = [{"rank": rank_text(row.get("rank")), "defense": row["defense"],
             "cells": [[c.text(row) for c in g.columns] for g in groups]}
            for _, row in report.board.iterrows()]
    return {"groups": groups, "rows": rows}


def render_html(report: ReportContent) -> str:
    """report.html: summary, checks, leaderboard by attack, figures, metrics, provenance."""
    env = environment()
    css, _, _ = env.loader.get_source(env, "report.css")  # type: ignore[union-attr]
    metrics = None if report.metrics is None else {
        "columns": list(report.metrics.columns),
        "rows": [list(row) for row in report.metrics.itertuples(index=False)]}
    return env.get_template("report.html.j2").render(
        css=Markup(css), dash=DASH, badges=BADGE, title=report.title,
        headline=report.headline(), worst_header=report.worst_header(),
        p_header=report.p_header(),
        ci_note=report.ci_note(), check_counts=report.check_counts(),
        lead=report.completeness_lead(),
        has_p=report.has_p, has_verified=report.has_verified,
        summary=[(line, _bar(line)) for line in report.lines],
        problems=report.problems,
        passes=[(r.defense, r.check, r.detail) for r in report.passes.itertuples(index=False)],
        tables=[_table(report, groups) for groups in report.tables], notes=report.notes,
        adaptive=report.adaptive,
        figures=[{"caption": f.caption, "wide": f.wide,
                  "png_base64": base64.b64encode(f.png).decode()} for f in report.figures],
        metrics=metrics, provenance=report.provenance)
