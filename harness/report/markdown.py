"""report.md: the report's content as GitHub-flavoured Markdown.

Same order as report.html; markdown has no page width, so the one-column groups share one table
and each attack sweep gets its own. Every label goes through
``robench.leaderboard.escape_markdown`` (no raw HTML, no table break, no link).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from robench.leaderboard import escape_markdown
from robench.report.content import ReportContent
from robench.report.text import BADGE, DASH, rank_text


def _md(value: Any) -> str:
    """Text in markdown (``robench.leaderboard.escape_markdown``)."""
    return escape_markdown(value)


def render_markdown(report: ReportContent) -> str:
    """report.md: summary, checks, leaderboard by attack, figures, metrics, provenance."""
    md = [f"# robench report: {_md(report.title)}", "", f"**{_md(report.headline())}**", ""]
    md += _summary(report) + _checks(report) + _leaderboard(report)
    if report.figures:
        md += ["## Figures", ""]
        md += [f"![{_md(f.caption)}]({f.name}.png)" for f in report.figures] + [""]
    if report.metrics is not None:
        md += ["## Defense metrics (last step of each)", "",
               _md_table([_md(c) for c in report.metrics.columns],
                         [[_md(v) for v in row]
                          for row in report.metrics.itertuples(index=False)], numeric_from=1),
               ""]
    md += ["## Provenance", ""] + [f"- **{k}**: {_md(v)}" for k, v in report.provenance]
    return "\n".join(md) + "\n"


def _summary(report: ReportContent) -> list[str]:
    has_p, has_v = report.has_p, report.has_verified
    head = ["rank", "defense", "status", "clean %", f"{report.worst_header()} %"]
    head += [report.p_header()] * has_p + ["verified %"] * has_v + ["note"]
    rows = []
    for line in report.lines:
        row = [line.rank, _md(line.defense), BADGE.get(line.status, line.status or DASH),
               f"{line.clean} {line.clean_ci}".strip(), f"{line.worst} {line.worst_ci}"
               .strip()]
        row += [line.p or DASH] * has_p + [line.verified or DASH] * has_v
        rows.append(row + [_md(line.note)])
    numbers = [0, 3, 4] + [5] * has_p + [5 + has_p] * has_v
    strong, rest = report.completeness_lead()
    lead = " ".join([f"**{_md(strong)}**"] * bool(strong) + [_md(rest)] * bool(rest))
    return ["## Summary", ""] + [lead, ""] * bool(lead) + [
        report.ci_note(), "", _md_table(head, rows, right=numbers), ""]


def _checks(report: ReportContent) -> list[str]:
    md = ["## Checks", "", report.check_counts() + ".", ""]
    if report.problems:
        md += ["### Failures and warnings", "",
               _md_table(["status", "defense", "check", "detail", "what it means"],
                         [[BADGE.get(p["status"], p["status"]), _md(p["defense"]),
                           _md(p["check"]), _md(p["detail"]), _md(p["meaning"])]
                          for p in report.problems]), ""]
    else:
        md += ["No check failed or warned.", ""]
    if not report.passes.empty:
        md += ["<details><summary>" f"{len(report.passes)} passed checks</summary>", "",
               _md_table(["defense", "check", "detail"],
                         [[_md(r.defense), _md(r.check), _md(r.detail)]
                          for r in report.passes.itertuples(index=False)]),
               "", "</details>", ""]
    return md


def _leaderboard(report: ReportContent) -> list[str]:
    md = ["## Leaderboard by attack", "",
          "Accuracy in % under each attack at each eps; `mean`: mean over the sweep's "
          "eps > 0; – : not evaluated.", ""]
    # markdown has no page width: the one-column groups (clean, attacks at one eps) in
    # one table, then one table per attack sweep
    single = [g for g in report.groups if len(g.columns) == 1]
    blocks = [("", single)] * bool(single) + [
        (f"{g.title}" + (f" ({g.note})" if g.note else ""), [g])
        for g in report.groups if len(g.columns) > 1]
    for title, groups in blocks:
        head = ["rank", "defense"] + [
            " @".join(t for t in (g.title, c.header) if t) if len(groups) > 1 else
            c.header for g in groups for c in g.columns]
        rows = [[rank_text(r.get("rank")), _md(r["defense"])]
                + [c.text(r) for g in groups for c in g.columns]
                for _, r in report.board.iterrows()]
        md += [f"### {_md(title)}", ""] * bool(title)
        md += [_md_table([_md(h) for h in head], rows, numeric_from=2), ""]
    if report.notes:
        md += ["Subsets: " + "; ".join(_md(n) for n in report.notes) + ".", ""]
    md += [f"- {_md(n)}" for n in report.adaptive] + [""] * bool(report.adaptive)
    return md


def _md_table(head: list[str], rows: Iterable[list[str]], numeric_from: int | None = None,
              right: Iterable[int] = ()) -> str:
    """A pipe table; the columns in ``right`` and from ``numeric_from`` on are right-aligned."""
    right = set(right)
    align = ["---:" if i in right or (numeric_from is not None and i >= numeric_from)
             else ":---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
