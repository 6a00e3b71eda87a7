"""The report: report.md and a self-contained report.html, plus the figures (PNG + SVG).

Written for a reviewer who wants to see in ten seconds which defenses hold up and which numbers
cannot be trusted, in this order (the markdown follows the same order):

1. **Summary**: one line per defense: rank (or why it is unranked), a status badge that reads
   without colour (PASS / WARN / FAIL), clean accuracy and the worst case at the threat eps with
   their 95 % intervals, the paired p-value against ``none`` and verified accuracy when the
   leaderboard has them.
2. **Checks**: failures and warnings first, each with its detail and a one-line explanation of
   what it means; the passes collapsed.
3. **Leaderboard** by attack: one column group per attack with its eps columns, packed into
   tables that fit a 1400 px page; numbers right-aligned with one decimal, "–" when missing.
4. **Figures**: the worst case per defense with its interval; accuracy vs eps per attack (legend
   outside the axes, interval bands); one small panel per defense when there are more than
   ``SMALL_MULTIPLES_ABOVE`` defenses.
5. **Defense metrics** (when the run logged any) and the **provenance** footer: suite hash,
   revision and dirty flag, versions, device, wall time, reproduction, images per attack.

The leaderboard is consumed generically (``robench.leaderboard``'s contract): columns are
recognised by name (``<attack>@<eps>``, ``<attack>_mean``, ``worst@<eps>`` with optional
``_lo``/``_hi``, ``worst_n``, ``p_vs_none``, ``verified…``), anything else is shown as is.
Every write goes through the ``OutputFolder``; figures are rendered in memory.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robench.checks import check_meaning, worst_first
from robench.columns import eps_mask
from robench.errors import UserError
from robench.leaderboard import CHECK_ROLE, escape_markdown, subset_notes
from robench.outdir import OutputFolder

DASH = "–"                  # shown for anything missing (never <NA> or nan)
SMALL_MULTIPLES_ABOVE = 8   # more defenses than this: one small panel per defense as well
PAGE_PX = 1400              # the page the HTML must fit without horizontal scrolling
TABLE_BUDGET_PX = 1300      # width one leaderboard table may take (page minus margins)
FIGURE_PREFIXES = ("curve_", "worst_case", "curves_by_defense")
BADGE = {"pass": "PASS ✓", "warn": "WARN !", "fail": "FAIL ✗"}


# -- reading the run's own files ------------------------------------------------------------
def _read_optional(path: Path) -> pd.DataFrame | None:
    if not path.exists() or not path.stat().st_size:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"not a readable CSV ({type(err).__name__})", where=str(path)) from None


def _read_run_record(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"not a robench run record ({type(err).__name__})",
                        where=str(path)) from None
    if not isinstance(record, dict):
        raise UserError("not a robench run record (not a JSON object)", where=str(path))
    return record


def _read_log(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


# -- formatting -----------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; "–" when missing."""
    return DASH if _missing(value) else f"{100 * float(value):.1f}"


def interval_text(lo: Any, hi: Any) -> str:
    return "" if _missing(lo) or _missing(hi) else f"[{pct(lo)}, {pct(hi)}]"


def p_text(value: Any) -> str:
    if _missing(value):
        return DASH
    value = float(value)
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def rank_text(value: Any) -> str:
    """The leaderboard's rank (an integer, a range such as "4–12", or missing) as text."""
    if _missing(value) or str(value).strip() in ("", "nan", "<NA>", "None"):
        return DASH
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> str:
    if _missing(value):
        return DASH
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)


def _h(value: Any) -> str:
    return html.escape(str(value), quote=True)


_BREAK_AFTER = set("_:[]@,.=-/+")


def _hb(value: Any) -> str:
    """A label in HTML: escaped, with break opportunities (``<wbr>``) after ``_ : [ @ , . =``
    and inside long unbroken runs, so long labels wrap instead of widening the page."""
    out, run = [], 0
    for char in str(value):
        out.append(html.escape(char, quote=True))
        run += 1
        if char in _BREAK_AFTER or run >= 18:
            out.append("<wbr>")
            run = 0
    return "".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _md(value: Any) -> str:
    """Text in markdown (``robench.leaderboard.escape_markdown``)."""
    return escape_markdown(value)


# -- the leaderboard's columns ----------------------------------------------------------------
_WORST = re.compile(r"^worst(?:@(?P<eps>.+?))?(?P<side>_lo|_hi)?$")
_FIXED = {"rank", "defense", "clean_acc", "status", "reason", "p_vs_none", "worst_n",
          "worst_kind", "clean_acc_lo", "clean_acc_hi", "worst_sd", "seeds"}


def _worst_kind(board: pd.DataFrame) -> str:
    """How the leaderboard computed its worst case ("per image" or "min over attacks")."""
    kinds = set(board["worst_kind"].dropna()) if "worst_kind" in board else set()
    return "per image" if kinds == {"per image"} else "min over attacks"


def _eps_of(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class Column:
    header: str                     # short header inside its group ("0.05", "mean", "95 % CI")
    key: str                        # the leaderboard column (or a derived one)
    kind: str = "pct"               # pct | interval | int | p | raw
    render: Callable[[pd.Series], str] | None = None

    @property
    def width(self) -> int:         # an estimate in px, for packing tables into the page
        return {"interval": 96, "p": 60}.get(self.kind, 48)

    def text(self, row: pd.Series) -> str:
        if self.render is not None:
            return self.render(row)
        value = row.get(self.key)
        if self.kind == "pct":
            return pct(value)
        if self.kind == "int":
            return DASH if _missing(value) else str(int(value))
        if self.kind == "p":
            return p_text(value)
        return DASH if _missing(value) else _number(value)


@dataclass
class Group:
    title: str
    note: str = ""
    columns: list[Column] = field(default_factory=list)

    @property
    def width(self) -> int:  # a title wraps, but not below ~20 characters a line
        return max(sum(c.width for c in self.columns), 8 * min(len(self.title), 18) + 12)


@dataclass
class WorstCase:
    """The leaderboard's worst case at each eps it reports, with intervals where known."""
    eps: list[tuple[str, float]]                      # (eps text, eps) ascending
    column: dict[str, str]                            # eps text -> column
    lo: dict[str, str] = field(default_factory=dict)  # eps text -> column (when present)
    hi: dict[str, str] = field(default_factory=dict)

    @property
    def threat(self) -> str | None:
        return self.eps[-1][0] if self.eps else (None if not self.column else "")


def worst_columns(board: pd.DataFrame) -> WorstCase:
    found: dict[str, dict[str, str]] = {}
    for column in board.columns:
        m = _WORST.match(str(column))
        if m is None:
            continue
        eps = m.group("eps") or ""
        found.setdefault(eps, {})[m.group("side") or ""] = str(column)
    eps = sorted(((e, _eps_of(e)) for e in found if "" in found[e] and _eps_of(e) is not None),
                 key=lambda t: t[1])
    worst = WorstCase(eps=[(e, float(v)) for e, v in eps],
                      column={e: cols[""] for e, cols in found.items() if "" in cols})
    for e, cols in found.items():
        if "_lo" in cols and "_hi" in cols:
            worst.lo[e], worst.hi[e] = cols["_lo"], cols["_hi"]
    return worst


def attack_columns(board: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """attack label -> {"eps": [(eps text, column)...] ascending, "mean": column or None}."""
    attacks: dict[str, dict[str, Any]] = {}
    for column in board.columns:
        name = str(column)
        if name in _FIXED or _WORST.match(name) or name.startswith("verified") or "@" not in name:
            continue
        label, eps = name.rsplit("@", 1)
        if _eps_of(eps) is None:
            continue
        attacks.setdefault(label, {"eps": [], "mean": None})["eps"].append((eps, name))
    for label, entry in attacks.items():
        entry["eps"].sort(key=lambda t: _eps_of(t[0]))
        if f"{label}_mean" in board.columns:
            entry["mean"] = f"{label}_mean"
    return attacks


def _n_note(results: pd.DataFrame, attack: str) -> str:
    n = results.loc[results["attack"] == attack, "n"]
    if n.empty:
        return ""
    lo, hi = int(n.min()), int(n.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def board_groups(board: pd.DataFrame, results: pd.DataFrame, worst: WorstCase
                 ) -> list[Group]:
    """The leaderboard's numbers as column groups: clean, one per attack, verified, worst
    case, and anything not recognised (so nothing is lost)."""
    groups = [Group("clean", _n_note_all(results), [Column("", "clean_acc")])]
    attacks = attack_columns(board)
    used = {"rank", "defense", "clean_acc", "status", "reason"}
    for label, entry in attacks.items():
        columns = [Column(eps, col) for eps, col in entry["eps"]]
        used.update(col for _, col in entry["eps"])
        if entry["mean"]:
            columns.append(Column("mean", entry["mean"]))
            used.add(entry["mean"])
        note = _n_note(results, label)
        if "role" in results and (results.loc[results["attack"] == label, "role"]
                                  == CHECK_ROLE).all():
            note += " · sanity check"
        groups.append(Group(label, note, columns))
    verified = [c for c in board.columns if str(c).startswith("verified")]
    if verified:
        groups.append(Group("verified", "", [Column(str(c).removeprefix("verified")
                                                    .lstrip("@_") or "acc", str(c))
                                             for c in verified]))
        used.update(verified)
    columns = []
    for eps, _ in worst.eps or [("", 0.0)]:
        if eps not in worst.column:
            continue
        columns.append(Column(eps or "worst", worst.column[eps]))
        used.add(worst.column[eps])
        if eps in worst.lo:
            lo, hi = worst.lo[eps], worst.hi[eps]
            columns.append(Column("95 % CI", lo, "interval",
                                  lambda r, lo=lo, hi=hi: interval_text(r.get(lo), r.get(hi))
                                  or DASH))
            used.update((lo, hi))
    for key, header, kind in (("worst_sd", "sd over seeds", "pct"), ("seeds", "seeds", "int"),
                              ("worst_n", "n", "int"), ("p_vs_none", "p vs none", "p")):
        if key in board.columns:
            columns.append(Column(header, key, kind))
            used.add(key)
    if columns:
        used.add("worst_kind")
        groups.append(Group("worst case", _worst_kind(board), columns))
    other = [str(c) for c in board.columns if c not in used and not str(c).startswith("clean_")]
    if other:
        groups.append(Group("other", "", [Column(c, c, _kind_of(board[c])) for c in other]))
    return groups


def _n_note_all(results: pd.DataFrame) -> str:
    return f"n = {int(results['n'].max())}" if not results.empty else ""


def _kind_of(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "raw"
    values = series.dropna()
    return "pct" if len(values) and values.between(0, 1).all() else "raw"


def pack_groups(groups: list[Group], fixed_px: int, budget_px: int = TABLE_BUDGET_PX
                ) -> list[list[Group]]:
    """Groups packed greedily, in order, into tables no wider than ``budget_px`` (a group
    wider than a table on its own is split into parts)."""
    room = max(budget_px - fixed_px, 200)
    parts: list[Group] = []
    for group in groups:
        chunks: list[list[Column]] = [[]]
        for column in group.columns:
            if chunks[-1] and sum(c.width for c in chunks[-1]) + column.width > room:
                chunks.append([])
            chunks[-1].append(column)
        parts += [Group(group.title if i == 0 else f"{group.title} (cont.)", group.note, chunk)
                  for i, chunk in enumerate(chunks) if chunk]
    tables: list[list[Group]] = [[]]
    for part in parts:
        if tables[-1] and sum(g.width for g in tables[-1]) + part.width > room:
            tables.append([])
        tables[-1].append(part)
    return [t for t in tables if t]


# -- the summary ----------------------------------------------------------------------------
@dataclass
class DefenseLine:
    rank: str
    defense: str
    status: str                         # pass | warn | fail | "" (no checks)
    clean: str
    clean_ci: str
    worst: str
    worst_ci: str
    worst_value: float | None
    worst_lo: float | None
    worst_hi: float | None
    p: str | None
    verified: str | None
    note: str


def _failed_checks(checks: pd.DataFrame, defense: str, status: str) -> list[str]:
    rows = checks[(checks["defense"] == defense) & (checks["status"] == status)]
    return [str(c) for c in rows["check"]]


def _worst_interval_from_results(results: pd.DataFrame, defense: str, eps: float,
                                 value: float | None) -> tuple[float | None, float | None, str]:
    """When the leaderboard has no interval: the 95 % Wilson interval of the attack that
    attains the minimum (``robust_acc_lo``/``_hi`` of its results row), only if the worst case
    ``value`` is that attack's accuracy (a per-image worst case is not)."""
    if not {"robust_acc_lo", "robust_acc_hi"} <= set(results.columns):
        return None, None, ""
    rows = results[results["defense"] == defense]
    if "role" in rows:
        rows = rows[rows["role"].fillna("") != CHECK_ROLE]
    rows = rows[eps_mask(rows["eps"], eps)]
    if rows.empty:
        return None, None, ""
    best = rows.loc[rows["robust_acc"].idxmin()]
    if value is None or abs(float(best["robust_acc"]) - value) > 1e-9:
        return None, None, ""
    return float(best["robust_acc_lo"]), float(best["robust_acc_hi"]), str(best["attack"])


def _float(value: Any) -> float | None:
    return None if _missing(value) else float(value)


def defense_lines(board: pd.DataFrame, checks: pd.DataFrame, results: pd.DataFrame,
                  worst: WorstCase) -> tuple[list[DefenseLine], bool]:
    """One summary line per defense in leaderboard order; and whether some interval came from
    the attack attaining the minimum (not from the leaderboard)."""
    lines, derived = [], False
    threat = worst.threat
    for _, row in board.iterrows():
        defense = str(row["defense"])
        status = "" if _missing(row.get("status")) else str(row.get("status"))
        own = results[results["defense"] == defense]
        clean_ci = ""
        if not own.empty and {"clean_acc_lo", "clean_acc_hi"} <= set(own.columns):
            top = own.loc[own["n"].idxmax()]
            clean_ci = interval_text(top["clean_acc_lo"], top["clean_acc_hi"])
        value = lo = hi = None
        if threat is not None:
            value = _float(row.get(worst.column[threat]))
            if threat in worst.lo:
                lo, hi = _float(row.get(worst.lo[threat])), _float(row.get(worst.hi[threat]))
            elif value is not None and threat:
                lo, hi, _ = _worst_interval_from_results(results, defense, float(threat),
                                                         value)
                derived |= lo is not None
        rank = rank_text(row.get("rank"))
        failed = _failed_checks(checks, defense, "fail")
        warned = _failed_checks(checks, defense, "warn")
        reason = "" if _missing(row.get("reason")) else str(row.get("reason"))
        if rank == DASH:
            why = "; ".join(failed) or reason
            note = f"unranked: failed {why}" if why else "unranked"
        elif warned or failed:
            note = "warned: " + "; ".join(failed + warned)
        elif reason:
            note = reason
        else:
            n = int((checks["defense"] == defense).sum())
            note = f"all {n} checks passed" if n else "no checks"
        verified = [c for c in board.columns if str(c).startswith("verified")]
        lines.append(DefenseLine(
            rank=rank, defense=defense, status=status, clean=pct(row.get("clean_acc")),
            clean_ci=clean_ci, worst=pct(value), worst_ci=interval_text(lo, hi),
            worst_value=value, worst_lo=lo, worst_hi=hi,
            p=p_text(row.get("p_vs_none")) if "p_vs_none" in board.columns else None,
            verified=pct(row.get(verified[-1])) if verified else None, note=note))
    return lines, derived


# -- figures --------------------------------------------------------------------------------
@dataclass
class Figure:
    name: str       # file stem
    caption: str
    png: bytes
    wide: bool = False


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31",
           "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")


def _style(i: int) -> dict[str, Any]:
    return {"color": _COLORS[i % len(_COLORS)], "marker": "os^Dv<>p"[i % 8],
            "linestyle": ("-", "--", ":", "-.")[(i // len(_COLORS)) % 4], "ms": 3.5, "lw": 1.4}


def _curve(rows: pd.DataFrame) -> pd.DataFrame:
    """One point per eps (the mean over seeds), with the interval columns when present: with
    several seeds the band is the envelope of the per-seed Wilson intervals."""
    cols = [c for c in ("robust_acc", "robust_acc_lo", "robust_acc_hi") if c in rows]
    how = {"robust_acc": "mean", "robust_acc_lo": "min", "robust_acc_hi": "max"}
    return rows.groupby("eps", sort=True)[cols].agg({c: how[c] for c in cols}).reset_index()


def _save(fig: Any, out: OutputFolder, name: str, written: list[str]) -> bytes:
    import matplotlib

    pngs = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "robench", "svg.fonttype": "none"}):
        fig.savefig(pngs, format="png", bbox_inches="tight", metadata={"Software": None})
        svg = io.BytesIO()
        fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    out.write_bytes(f"{name}.png", pngs.getvalue())
    out.write_bytes(f"{name}.svg", svg.getvalue())
    written += [f"{name}.png", f"{name}.svg"]
    return pngs.getvalue()


def _tex(label: Any) -> str:
    """A label for matplotlib: ``$`` escaped, so a label is never read as mathtext."""
    return str(label).replace("$", r"\$")


def _legend_outside(ax: Any, entries: int) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              frameon=False, ncol=1 if entries <= 22 else 2)


def plot_curves(results: pd.DataFrame, out: OutputFolder, board: pd.DataFrame | None = None
                ) -> list[Figure]:
    """The report's figures, each written as PNG and SVG: the worst case per defense (from the
    leaderboard), accuracy vs eps per attack with eps sweeps, and one panel per defense when
    there are more than ``SMALL_MULTIPLES_ABOVE``. Earlier figure files that are no longer
    produced (robench's own only) are removed."""
    from matplotlib.figure import Figure as MplFigure

    figures: list[Figure] = []
    written: list[str] = []
    defenses = list(dict.fromkeys(board["defense"] if board is not None else results["defense"]))
    order = {d: i for i, d in enumerate(defenses)}
    if board is not None:
        figure = _worst_case_figure(board, results, out, written)
        if figure is not None:
            figures.append(figure)

    sweeps = [a for a, rows in results.groupby("attack", sort=False) if rows["eps"].nunique() > 1]
    # one defense: its panel (every attack in one figure) says all the per-attack figures would
    for attack in sweeps if len(defenses) > 1 else []:
        rows = results[results["attack"] == attack]
        fig = MplFigure(figsize=(6.4, 3.6), dpi=100)
        ax = fig.subplots()
        present = sorted(rows["defense"].unique(), key=lambda d: order.get(d, len(order)))
        for defense in present:
            curve = _curve(rows[rows["defense"] == defense])
            style = _style(order.get(defense, 0))
            ax.plot(curve["eps"], 100 * curve["robust_acc"], label=_tex(defense), **style)
            if "robust_acc_lo" in curve:
                ax.fill_between(curve["eps"], 100 * curve["robust_acc_lo"],
                                100 * curve["robust_acc_hi"], color=style["color"], alpha=0.15,
                                lw=0)
        ax.set_xlabel("eps (L∞, input scale [0, 1])")
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_title(f"{_tex(attack)} ({_n_note(results, attack)})", fontsize=10)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        _legend_outside(ax, len(present))
        png = _save(fig, out, f"curve_{_safe(str(attack))}", written)
        figures.append(Figure(f"curve_{_safe(str(attack))}",
                              f"{attack}: accuracy vs eps; bands: 95 % Wilson intervals", png))

    if sweeps and (len(defenses) > SMALL_MULTIPLES_ABOVE or len(defenses) == 1):
        figures.append(_small_multiples(results, sweeps, defenses, board, out, written))

    keep = set(written)
    for path in sorted(out.path.iterdir()):
        name = path.name
        if (name.startswith(FIGURE_PREFIXES) and path.suffix in (".png", ".svg")
                and name not in keep and out.owns(name)):
            out.remove(name)
    return figures


def _worst_case_figure(board: pd.DataFrame, results: pd.DataFrame, out: OutputFolder,
                       written: list[str]) -> Figure | None:
    from matplotlib.figure import Figure as MplFigure

    worst = worst_columns(board)
    if not worst.eps:
        return None
    status = board["status"] if "status" in board else pd.Series([""] * len(board))
    ranks = board["rank"] if "rank" in board else pd.Series([pd.NA] * len(board))
    labels = [_tex(d) + ("  (unranked)" if rank_text(r) == DASH else "")
              for d, r in zip(board["defense"], ranks, strict=True)]
    if len(worst.eps) == 1:
        eps, _ = worst.eps[0]
        values, los, his = [], [], []
        for _, row in board.iterrows():
            v = _float(row.get(worst.column[eps]))
            if eps in worst.lo:
                lo, hi = _float(row.get(worst.lo[eps])), _float(row.get(worst.hi[eps]))
            else:
                lo, hi, _ = _worst_interval_from_results(results, str(row["defense"]),
                                                         float(eps), v)
            values.append(v)
            los.append(lo)
            his.append(hi)
        n = len(board)
        fig = MplFigure(figsize=(8.0, 0.9 + 0.28 * n), dpi=100)
        ax = fig.subplots()
        y = list(range(n))[::-1]
        ax.scatter(100 * board["clean_acc"].astype(float), y, marker="|", s=120,
                   color="#555", label="clean accuracy", zorder=2)
        for yi, v, lo, hi, st in zip(y, values, los, his, status, strict=True):
            if v is None:
                continue
            color = {"fail": "#cf222e", "warn": "#9a6700"}.get(str(st), "#1f77b4")
            err = None if lo is None else [[100 * max(v - lo, 0)], [100 * max(hi - v, 0)]]
            ax.errorbar([100 * v], [yi], xerr=err, fmt="o", color=color, ms=5, capsize=3,
                        zorder=3, mfc=color if st != "fail" else "white")
        present = set(map(str, status))
        for st, color, text in (("pass", "#1f77b4", "worst case, checks passed"),
                                ("warn", "#9a6700", "worst case, a check warned"),
                                ("fail", "#cf222e", "worst case, a check failed: unranked")):
            if st in present or (st == "pass" and not present & {"warn", "fail"}):
                ax.errorbar([], [], xerr=[], fmt="o", color=color, capsize=3,
                            mfc=color if st != "fail" else "white", label=text)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_xlabel(f"accuracy (%) at eps {eps}")
        ax.set_title(f"worst case over attacks at eps {eps}, per defense", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        _legend_outside(ax, 4)
        png = _save(fig, out, "worst_case", written)
        return Figure("worst_case", f"worst case at eps {eps} (points) with 95 % intervals "
                                    "(bars); ticks: clean accuracy", png, wide=True)
    fig = MplFigure(figsize=(6.8, 3.8), dpi=100)
    ax = fig.subplots()
    xs = [e for _, e in worst.eps]
    for i, (_, row) in enumerate(board.iterrows()):
        style = _style(i)
        ys = [_float(row.get(worst.column[t])) for t, _ in worst.eps]
        ax.plot(xs, [math.nan if v is None else 100 * v for v in ys],
                label=labels[i], **style)
        if all(t in worst.lo for t, _ in worst.eps):
            lo = [_float(row.get(worst.lo[t])) for t, _ in worst.eps]
            hi = [_float(row.get(worst.hi[t])) for t, _ in worst.eps]
            ax.fill_between(xs, [math.nan if v is None else 100 * v for v in lo],
                            [math.nan if v is None else 100 * v for v in hi],
                            color=style["color"], alpha=0.15, lw=0)
    ax.set_xlabel("eps (L∞, input scale [0, 1])")
    ax.set_ylabel("worst-case accuracy (%)")
    ax.set_title("worst case over attacks vs eps", fontsize=10)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(board))
    png = _save(fig, out, "worst_case", written)
    return Figure("worst_case", "worst case over attacks vs eps; bands: 95 % intervals", png)


def _small_multiples(results: pd.DataFrame, sweeps: list[str], defenses: list[str],
                     board: pd.DataFrame | None, out: OutputFolder, written: list[str]
                     ) -> Figure:
    from matplotlib.figure import Figure as MplFigure

    single = len(defenses) == 1
    # attacks at one eps (not sanity checks): points, so each panel shows every attack
    regular = results if "role" not in results else results[
        results["role"].fillna("") != CHECK_ROLE]
    points = [a for a in dict.fromkeys(regular["attack"]) if a not in sweeps]
    ncols = min(5, math.ceil(math.sqrt(len(defenses))))
    nrows = math.ceil(len(defenses) / ncols)
    fig = MplFigure(figsize=(6.4, 3.6) if single else (2.6 * ncols, 2.1 * nrows + 0.6), dpi=100)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    status = {} if board is None or "status" not in board else dict(
        zip(board["defense"], board["status"], strict=True))
    reference = "none" if "none" in defenses and not single else None
    for ax, defense in zip(axes, defenses, strict=False):
        for i, attack in enumerate(sweeps):
            style = _style(i)
            if reference and defense != reference:
                ref = results[(results["defense"] == reference) & (results["attack"] == attack)]
                if not ref.empty:
                    c = _curve(ref)
                    ax.plot(c["eps"], 100 * c["robust_acc"], color=style["color"], lw=0.8,
                            alpha=0.35, linestyle=":")
            rows = results[(results["defense"] == defense) & (results["attack"] == attack)]
            if rows.empty:
                continue
            c = _curve(rows)
            if single and len(sweeps) > 1:  # earlier lines wider: agreeing attacks that
                # coincide (e.g. one attack in several backends) stay visible under later ones
                style = {**style, "lw": 1.2 + min(1.4, 7.0 / len(sweeps)) * (len(sweeps) - 1 - i),
                         "alpha": 0.9}
            ax.plot(c["eps"], 100 * c["robust_acc"], label=_tex(attack), **style)
            if "robust_acc_lo" in c:
                ax.fill_between(c["eps"], 100 * c["robust_acc_lo"], 100 * c["robust_acc_hi"],
                                color=style["color"], alpha=0.15, lw=0)
        for j, attack in enumerate(points, start=len(sweeps)):
            rows = results[(results["defense"] == defense) & (results["attack"] == attack)]
            if rows.empty:
                continue
            c = _curve(rows)
            style = _style(j)
            err = None
            if "robust_acc_lo" in c:
                err = [100 * (c["robust_acc"] - c["robust_acc_lo"]).clip(lower=0),
                       100 * (c["robust_acc_hi"] - c["robust_acc"]).clip(lower=0)]
            ax.errorbar(c["eps"], 100 * c["robust_acc"], yerr=err, fmt=style["marker"],
                        color=style["color"], ms=4, capsize=2, label=_tex(attack))
        st = status.get(defense)
        tag = f" [{str(st).upper()}]" if isinstance(st, str) and st != "pass" else ""
        ax.set_title(f"{_tex(defense)}{tag}", fontsize=8,
                     color={"fail": "#cf222e", "warn": "#9a6700"}.get(str(st), "black"))
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9 if single else 7)
    for i, ax in enumerate(axes):
        ax.set_visible(i < len(defenses))
        if i + ncols >= len(defenses):  # nothing drawn below: this panel shows its eps axis
            ax.xaxis.set_tick_params(labelbottom=True)
    legend: dict[str, Any] = {}
    for ax in axes[:len(defenses)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if reference:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="grey", linestyle=":", alpha=0.6))
        labels.append(f"{_tex(reference)} (reference)")
    if single:
        ax = axes[0]
        ax.set_title(f"{_tex(defenses[0])}: accuracy vs eps, every attack", fontsize=10)
        ax.set_xlabel("eps (L∞, input scale [0, 1])")
        ax.set_ylabel("accuracy under attack (%)")
        _legend_outside(ax, len(labels))
        png = _save(fig, out, "curves_by_defense", written)
        return Figure("curves_by_defense", f"{defenses[0]}: accuracy vs eps under every attack "
                      "with an eps sweep; bands: 95 % Wilson intervals", png)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.supxlabel("eps (L∞, input scale [0, 1])", fontsize=8)
    fig.supylabel("accuracy under attack (%)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    png = _save(fig, out, "curves_by_defense", written)
    what = f"dotted: {reference}, for reference; " if reference else ""
    return Figure("curves_by_defense", f"accuracy vs eps, one panel per defense ({what}"
                  "bands: 95 % Wilson intervals)", png, wide=True)


def _safe(name: str) -> str:
    """A file-name form of a label: readable, and distinct for distinct labels (a short hash
    is added whenever characters had to be replaced)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


# -- checks ---------------------------------------------------------------------------------
def problem_rows(checks: pd.DataFrame, defenses: list[str]) -> list[dict[str, str]]:
    """Checks that did not pass, failures first, then warnings; defenses in leaderboard order.
    Identical findings (same status, check and detail) are merged into one row."""
    bad = checks[checks["status"] != "pass"]
    order = {d: i for i, d in enumerate(defenses)}
    merged: dict[tuple[str, str, str], list[str]] = {}
    keyed = sorted(bad.itertuples(index=False), key=lambda r: (
        worst_first(str(r.status)), order.get(str(r.defense), len(order))))
    for r in keyed:
        merged.setdefault((str(r.status), str(r.check), str(r.detail)), []).append(
            str(r.defense))
    everyone = set(defenses)
    return [{"status": s, "defense": f"all {len(d)} defenses" if len(d) > 2 and set(d) ==
             everyone else ", ".join(d), "check": c, "detail": detail,
             "meaning": check_meaning(c)} for (s, c, detail), d in merged.items()]


# -- provenance -----------------------------------------------------------------------------
def provenance(run: dict, log: list[str], results: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, text) pairs for the footer."""
    items: list[tuple[str, str]] = []
    suite = str(results["suite"].iloc[0])
    source = run.get("source")
    suite_hash = run.get("suite_hash") or run.get("hash")
    items.append(("suite", suite + (f" ({source})" if source else "")
                  + (f", hash {suite_hash}" if suite_hash else "")))
    data = [f"{c} {', '.join(map(str, results[c].dropna().unique()))}"
            for c in ("dataset", "data_hash", "model") if c in results]
    items.append(("data and model", "; ".join(data)))
    revision = run.get("git_revision")
    dirty = run.get("git_dirty")
    if revision:
        items.append(("code revision", f"{str(revision)[:12]}" + (
            " (dirty: uncommitted changes)" if dirty else " (clean)" if dirty is False else "")))
    else:
        items.append(("code revision", "not recorded"))
    versions = run.get("versions")
    if isinstance(versions, dict) and versions:
        items.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    device = run.get("device")
    threads = run.get("threads")
    items.append(("device", (str(device) if device else "not recorded")
                  + (f", {threads} threads" if threads else "")))
    if run.get("started_at"):
        items.append(("started", str(run["started_at"])))
    times = [float(m.group(1)) for line in log
             if (m := re.search(r"\bdone in ([0-9.]+)\s*s", line))]
    if times:
        text = f"{times[-1]:.1f} s"
        if len(times) > 1:
            text += f" (last of {len(times)} runs into this folder; {sum(times):.1f} s in all)"
        items.append(("wall time", text))
    else:
        items.append(("wall time", "not recorded (no run.log)"))
    repro = [line for line in log if re.search(r"\b(not )?reproduc", line)]
    items.append(("reproduction", _strip_stamp(repro[-1]) if repro else "not recorded"))
    per_attack = []
    for attack, rows in results.groupby("attack", sort=False):
        note = _n_note(results, str(attack)).removeprefix("n = ")
        seconds = rows["attack_seconds"].sum() if "attack_seconds" in rows else None
        per_attack.append(f"{attack}: {note} images"
                          + (f", {seconds:.1f} s" if not _missing(seconds) else ""))
    items.append(("images per attack", "; ".join(per_attack)))
    seeds = sorted(results["seed"].dropna().unique()) if "seed" in results else []
    if len(seeds):
        items.append(("seeds", ", ".join(str(int(s)) for s in seeds)))
    return items


def _strip_stamp(line: str) -> str:
    return re.sub(r"^\S+T\S+\s+", "", line.strip())


# -- the report -----------------------------------------------------------------------------
def write_report(out: OutputFolder, results: pd.DataFrame, checks: pd.DataFrame,
                 board: pd.DataFrame, source: Path) -> tuple[Path, Path]:
    """report.md and a self-contained report.html (images inlined) in the folder ``out``, from
    the finalized tables (see ``robench.finalize``) and the run's files in ``source``."""
    metrics = _read_optional(source / "defense_metrics.csv")
    run = _read_run_record(source / "run.json")
    log = _read_log(source / "run.log")
    figures = plot_curves(results, out, board)
    report = _Report(results, checks, board, metrics, run, log, figures)
    out.write_text("report.md", report.markdown())
    out.write_text("report.html", report.html())
    return out.path / "report.md", out.path / "report.html"


class _Report:
    """The report's content, computed once and rendered as markdown and as HTML."""

    def __init__(self, results: pd.DataFrame, checks: pd.DataFrame, board: pd.DataFrame,
                 metrics: pd.DataFrame | None, run: dict, log: list[str],
                 figures: list[Figure]) -> None:
        self.title = str(results["suite"].iloc[0])
        self.results, self.checks, self.board = results, checks, board
        self.worst = worst_columns(board)
        self.lines, self.derived_ci = defense_lines(board, checks, results, self.worst)
        self.problems = problem_rows(checks, [str(d) for d in board["defense"]])
        self.passes = checks[checks["status"] == "pass"]
        self.groups = board_groups(board, results, self.worst)
        longest = max((len(str(d)) for d in board["defense"]), default=8)
        self.tables = pack_groups(self.groups, fixed_px=40 + min(260, 8 * longest + 12))
        self.metrics = _last_metrics(metrics, [str(d) for d in board["defense"]])
        self.provenance = provenance(run, log, results)
        self.figures = figures
        self.notes = subset_notes(results)

    # -- shared text ----------------------------------------------------------------------
    def headline(self) -> str:
        counts = {s: sum(line.status == s for line in self.lines) for s in ("pass", "warn",
                                                                              "fail")}
        parts = [_plural(len(self.lines), "defense")] + [f"{n} {s}" for s, n in counts.items()
                                                          if n]
        eps = self.worst.threat
        if eps:
            parts.append(f"threat model L∞ eps {eps}")
        data = self.results["dataset"].iloc[0] if "dataset" in self.results else ""
        model = self.results["model"].iloc[0] if "model" in self.results else ""
        if data or model:
            parts.append(f"{data} / {model}".strip(" /"))
        return " · ".join(parts)

    def worst_header(self) -> str:
        eps = self.worst.threat
        return f"worst case @ {eps}" if eps else "worst case"

    def ci_note(self) -> str:
        how = ("per image: an image counts only if it is correct and survives every regular "
               "attack at the threat eps, on the images all of them evaluated"
               if _worst_kind(self.board) == "per image" else
               "the minimum over the attacks run at the threat eps")
        text = (f"Accuracy in % with 95 % Wilson score intervals in brackets; the worst case is "
                f"{how}. A defense with a failed check is unranked (–): its numbers cannot be "
                "trusted.")
        if "seeds" in self.board:
            text += (" Several seeds: accuracies are means over seeds; the worst case's "
                     "interval covers both the Student-t interval over seeds and the Wilson "
                     "interval of the mean count, and p vs none is paired over seeds; curve "
                     "bands are the envelope of the per-seed Wilson intervals.")
        if self.derived_ci:
            text += (" The worst case's interval is that of the attack that attains the "
                     "minimum (the leaderboard has no per-image worst-case interval).")
        return text

    def check_counts(self) -> str:
        n = {s: int((self.checks["status"] == s).sum()) for s in ("fail", "warn", "pass")}
        return (f"{n['fail']} failed, {n['warn']} warned, {n['pass']} passed "
                f"({_plural(len(self.checks), 'check')} over "
                f"{_plural(self.checks['defense'].nunique(), 'defense')})")

    # -- markdown ---------------------------------------------------------------------------
    def markdown(self) -> str:
        md = [f"# robench report: {_md(self.title)}", "", f"**{_md(self.headline())}**", "",
              "## Summary", "", self.ci_note(), ""]
        head = ["rank", "defense", "status", "clean %", f"{self.worst_header()} %"]
        has_p = any(line.p is not None for line in self.lines)
        has_v = any(line.verified is not None for line in self.lines)
        head += ["p vs none"] * has_p + ["verified %"] * has_v + ["note"]
        rows = []
        for line in self.lines:
            row = [line.rank, _md(line.defense), BADGE.get(line.status, line.status or DASH),
                   f"{line.clean} {line.clean_ci}".strip(), f"{line.worst} {line.worst_ci}"
                   .strip()]
            row += [line.p or DASH] * has_p + [line.verified or DASH] * has_v
            rows.append(row + [_md(line.note)])
        numbers = [0, 3, 4] + [5] * has_p + [5 + has_p] * has_v
        md += [_md_table(head, rows, right=numbers), "", "## Checks", "",
               self.check_counts() + ".", ""]
        if self.problems:
            md += ["### Failures and warnings", "",
                   _md_table(["status", "defense", "check", "detail", "what it means"],
                             [[BADGE.get(p["status"], p["status"]), _md(p["defense"]),
                               _md(p["check"]), _md(p["detail"]), _md(p["meaning"])]
                              for p in self.problems]), ""]
        else:
            md += ["No check failed or warned.", ""]
        if not self.passes.empty:
            md += ["<details><summary>" f"{len(self.passes)} passed checks</summary>", "",
                   _md_table(["defense", "check", "detail"],
                             [[_md(r.defense), _md(r.check), _md(r.detail)]
                              for r in self.passes.itertuples(index=False)]),
                   "", "</details>", ""]
        md += ["## Leaderboard by attack", "",
               "Accuracy in % under each attack at each eps; `mean`: mean over the sweep's "
               "eps > 0; – : not evaluated.", ""]
        # markdown has no page width: the one-column groups (clean, attacks at one eps) in
        # one table, then one table per attack sweep
        single = [g for g in self.groups if len(g.columns) == 1]
        blocks = [("", single)] * bool(single) + [
            (f"{g.title}" + (f" ({g.note})" if g.note else ""), [g])
            for g in self.groups if len(g.columns) > 1]
        for title, groups in blocks:
            head = ["rank", "defense"] + [
                " @".join(t for t in (g.title, c.header) if t) if len(groups) > 1 else
                c.header for g in groups for c in g.columns]
            rows = [[rank_text(r.get("rank")), _md(r["defense"])]
                    + [c.text(r) for g in groups for c in g.columns]
                    for _, r in self.board.iterrows()]
            md += [f"### {_md(title)}", ""] * bool(title)
            md += [_md_table([_md(h) for h in head], rows, numeric_from=2), ""]
        if self.notes:
            md += ["Subsets: " + "; ".join(_md(n) for n in self.notes) + ".", ""]
        if self.figures:
            md += ["## Figures", ""]
            md += [f"![{_md(f.caption)}]({f.name}.png)" for f in self.figures] + [""]
        if self.metrics is not None:
            md += ["## Defense metrics (last step of each)", "",
                   _md_table([_md(c) for c in self.metrics.columns],
                             [[_md(v) for v in row]
                              for row in self.metrics.itertuples(index=False)], numeric_from=1),
                   ""]
        md += ["## Provenance", ""] + [f"- **{k}**: {_md(v)}" for k, v in self.provenance]
        return "\n".join(md) + "\n"

    # -- HTML -------------------------------------------------------------------------------
    def html(self) -> str:
        parts = [f"<header><h1>robench report: {_h(self.title)}</h1>"
                 f"<p class='headline'>{_h(self.headline())}</p></header>",
                 "<section id='summary'><h2>Summary</h2>", self._summary_html(),
                 f"<p class='note'>{_h(self.ci_note())}</p></section>",
                 "<section id='checks'><h2>Checks</h2>", self._checks_html(), "</section>",
                 "<section id='leaderboard'><h2>Leaderboard by attack</h2>",
                 "<p class='note'>Accuracy in % under each attack at each eps (column: eps); "
                 "<i>mean</i>: mean over the sweep's eps &gt; 0; – : not evaluated; "
                 "unranked defenses in grey.</p>",
                 "".join(self._board_html(groups) for groups in self.tables)]
        if self.notes:
            parts.append("<p class='note'>Subsets: " + "; ".join(_h(n) for n in self.notes)
                         + ".</p>")
        parts.append("</section>")
        if self.figures:
            parts.append("<section id='figures'><h2>Figures</h2><div class='figs'>")
            for f in self.figures:
                data = base64.b64encode(f.png).decode()
                parts.append(f"<figure class='{'wide' if f.wide else ''}'>"
                             f"<img alt='{_h(f.caption)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{_h(f.caption)}</figcaption></figure>")
            parts.append("</div></section>")
        if self.metrics is not None:
            parts += ["<section id='metrics'><h2>Defense metrics (last step of each)</h2>",
                      self._metrics_html(), "</section>"]
        parts.append("<footer id='provenance'><h2>Provenance</h2><dl>"
                     + "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in self.provenance)
                     + "</dl></footer>")
        return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>robench report: {_h(self.title)}</title><style>{_CSS}</style></head>"
                f"<body>{''.join(parts)}</body></html>\n")

    def _summary_html(self) -> str:
        has_p = any(line.p is not None for line in self.lines)
        has_v = any(line.verified is not None for line in self.lines)
        head = ("<tr><th class='num'>rank</th><th>defense</th><th>status</th>"
                "<th class='num'>clean %</th><th class='num' colspan='2'>"
                f"{_h(self.worst_header())} %</th>"
                + ("<th class='num'>p vs none</th>" if has_p else "")
                + ("<th class='num'>verified %</th>" if has_v else "") + "<th>note</th></tr>")
        body = []
        for line in self.lines:
            unranked = " class='unranked'" if line.rank == DASH else ""
            body.append(
                f"<tr{unranked}><td class='num'>{_h(line.rank)}</td>"
                f"<td class='name'>{_hb(line.defense)}</td><td>{_badge(line.status)}</td>"
                f"<td class='num'>{_h(line.clean)} <span class='ci'>{_h(line.clean_ci)}</span>"
                f"</td><td class='num'>{_h(line.worst)} <span class='ci'>{_h(line.worst_ci)}"
                f"</span></td><td>{_bar(line)}</td>"
                + (f"<td class='num'>{_h(line.p)}</td>" if has_p else "")
                + (f"<td class='num'>{_h(line.verified)}</td>" if has_v else "")
                + f"<td class='why'>{_hb(line.note)}</td></tr>")
        return f"<table class='summary'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"

    def _checks_html(self) -> str:
        parts = [f"<p>{_h(self.check_counts())}.</p>"]
        if self.problems:
            rows = "".join(
                f"<tr class='{_h(p['status'])}'><td>{_badge(p['status'])}</td>"
                f"<td class='name'>{_hb(p['defense'])}</td><td class='check'>{_hb(p['check'])}"
                f"</td><td>{_h(p['detail'])}</td><td class='meaning'>{_h(p['meaning'])}</td>"
                "</tr>" for p in self.problems)
            parts.append("<h3>Failures and warnings</h3><table class='problems'><thead><tr>"
                         "<th>status</th><th>defense</th><th>check</th><th>detail</th>"
                         f"<th>what it means</th></tr></thead><tbody>{rows}</tbody></table>")
        else:
            parts.append("<p>No check failed or warned.</p>")
        if not self.passes.empty:
            rows = "".join(f"<tr><td class='name'>{_hb(r.defense)}</td><td class='check'>"
                           f"{_hb(r.check)}</td><td>{_h(r.detail)}</td></tr>"
                           for r in self.passes.itertuples(index=False))
            parts.append(f"<details><summary>{len(self.passes)} passed checks (show)"
                         "</summary><table class='passes'><thead><tr><th>defense</th>"
                         f"<th>check</th><th>detail</th></tr></thead><tbody>{rows}</tbody>"
                         "</table></details>")
        return "".join(parts)

    def _board_html(self, groups: list[Group]) -> str:
        top = ("<tr><th rowspan='2' class='num'>rank</th><th rowspan='2'>defense</th>"
               + "".join(f"<th class='group' colspan='{len(g.columns)}'>{_hb(g.title)}"
                         + (f"<br><span class='n'>{_h(g.note)}</span>" if g.note else "")
                         + "</th>" for g in groups) + "</tr>")
        sub = "<tr>" + "".join(
            f"<th class='num{' first' if i == 0 else ''}'>{_h(c.header)}</th>"
            for g in groups for i, c in enumerate(g.columns)) + "</tr>"
        body = []
        for _, row in self.board.iterrows():
            rank = rank_text(row.get("rank"))
            cls = " class='unranked'" if rank == DASH else ""
            cells = "".join(f"<td class='num{' first' if i == 0 else ''}'>{_h(c.text(row))}</td>"
                            for g in groups for i, c in enumerate(g.columns))
            body.append(f"<tr{cls}><td class='num'>{_h(rank)}</td>"
                        f"<td class='name'>{_hb(row['defense'])}</td>{cells}</tr>")
        return (f"<table class='board'><thead>{top}{sub}</thead><tbody>{''.join(body)}"
                "</tbody></table>")

    def _metrics_html(self) -> str:
        frame = self.metrics
        head = "".join(f"<th class='{'num' if i else ''}'>{_hb(c)}</th>"
                       for i, c in enumerate(frame.columns))
        rows = "".join("<tr>" + "".join(
            f"<td class='{'num' if i else 'name'}'>{_h(v) if i else _hb(v)}</td>"
            for i, v in enumerate(row)) + "</tr>" for row in frame.itertuples(index=False))
        return f"<table class='metrics'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _last_metrics(metrics: pd.DataFrame | None, defenses: list[str]) -> pd.DataFrame | None:
    """The last logged value of each (defense, metric), one row per defense (wide) when the
    metrics are few, else long."""
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
    return last.assign(value=last["value"].map(_number))


def _column_text(column: pd.Series) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().all():
        return column.map(lambda v: DASH if _missing(v) else str(v))
    whole = bool(((values.dropna() % 1) == 0).all())
    return values.map(lambda v: DASH if _missing(v) else f"{v:.0f}" if whole else f"{v:.3f}")


def _badge(status: str) -> str:
    if not status:
        return f"<span class='badge none'>{DASH}</span>"
    return f"<span class='badge {_h(status)}'>{_h(BADGE.get(status, status.upper()))}</span>"


def _bar(line: DefenseLine) -> str:
    """A small bar of the worst case with its interval as a whisker (decoration: the numbers
    are in the cell before)."""
    if line.worst_value is None:
        return ""
    parts = [f"<span class='fill' style='width:{100 * line.worst_value:.1f}%'></span>"]
    if line.worst_lo is not None and line.worst_hi is not None:
        parts.append(f"<span class='whisker' style='left:{100 * line.worst_lo:.1f}%;"
                     f"width:{max(100 * (line.worst_hi - line.worst_lo), 0.5):.1f}%'></span>")
    return f"<span class='bar' aria-hidden='true'>{''.join(parts)}</span>"


def _md_table(head: list[str], rows: Iterable[list[str]], numeric_from: int | None = None,
              right: Iterable[int] = ()) -> str:
    """A pipe table; the columns in ``right`` and from ``numeric_from`` on are right-aligned."""
    right = set(right)
    align = ["---:" if i in right or (numeric_from is not None and i >= numeric_from)
             else ":---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:#1f2328;max-width:1360px;margin:0 auto;padding:12px 24px 40px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:26px 0 6px;
border-bottom:1px solid #d0d7de;padding-bottom:3px}h3{font-size:15px;margin:14px 0 4px}
.headline{font-size:15px;font-weight:600;margin:0 0 8px}.note{color:#57606a;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 16px;max-width:100%}
th,td{padding:3px 7px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
td.name,td.check,th.group{overflow-wrap:normal}
table.board th,table.board td{padding:3px 5px}
th{background:#f6f8fa;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.group{text-align:center;border-left:2px solid #d0d7de}
.first{border-left:2px solid #d0d7de}
.n{font-weight:400;color:#57606a;font-size:11px}
td.name{font-weight:600;max-width:260px}
.ci{color:#57606a;font-size:12px}
tr.unranked td{color:#6e7781;font-style:italic}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:700;
border:1px solid;white-space:nowrap;font-style:normal}
.badge.pass{color:#116329;background:#dafbe1;border-color:#4ac26b}
.badge.warn{color:#7d4e00;background:#fff8c5;border-color:#d4a72c}
.badge.fail{color:#a40e26;background:#ffebe9;border-color:#ff8182}
.badge.none{color:#57606a;border-color:#d0d7de}
.bar{display:inline-block;position:relative;width:120px;height:10px;background:#eaeef2;
margin-top:4px}
.bar .fill{position:absolute;left:0;top:0;bottom:0;background:#54aeff}
.bar .whisker{position:absolute;top:4px;height:2px;background:#1f2328}
td.why{color:#57606a;max-width:420px}
table.problems tr.fail td{background:#fff5f5}table.problems tr.warn td{background:#fffdf0}
td.check{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
td.meaning{color:#57606a;max-width:380px}
table.problems td.name{min-width:170px}table.problems td.check{min-width:210px}
details{margin:8px 0 16px}summary{cursor:pointer;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;flex:0 1 calc(50% - 5px);min-width:0}figure.wide{flex-basis:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#57606a}
footer{margin-top:30px;font-size:13px}footer dl{display:grid;grid-template-columns:max-content
1fr;gap:2px 14px;margin:0}footer dt{font-weight:600;color:#57606a}
footer dd{margin:0;overflow-wrap:anywhere}
"""
