"""What the report shows, before it is rendered: the same content feeds Markdown and HTML.

- the leaderboard's numbers as column groups (clean, one per attack, verified, worst case,
  other), packed greedily into tables that fit the HTML page (``pack_groups``);
- one summary line per defense (``defense_lines``);
- the checks that did not pass, failures first, identical findings merged (``problem_rows``);
- the provenance footer (``provenance``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from robench.checks import COMPLETE as COMPLETE_CHECK
from robench.checks import check_meaning, worst_first
from robench.leaderboard import CHECK_ROLE, COMPLETENESS_COLUMNS, INCOMPLETE, clean_per_seed
from robench.ranking import seeds_and_images_interval
from robench.report.columns import BoardColumns
from robench.report.text import (
    DASH,
    as_float,
    interval_text,
    missing,
    n_note,
    n_note_all,
    number,
    p_text,
    pct,
    rank_text,
)
from robench.results import eps_mask

PAGE_PX = 1400              # the page the HTML must fit without horizontal scrolling
TABLE_BUDGET_PX = 1300      # width one leaderboard table may take (page minus margins)
CellKind = Literal["pct", "interval", "int", "p", "raw"]


# -- the leaderboard as tables --------------------------------------------------------------
@dataclass
class TableColumn:
    """One column of a leaderboard table: its header within its group and what it shows."""
    header: str                     # short header inside its group ("0.05", "mean", "95 % CI")
    key: str                        # the leaderboard column (kind interval: its lower end)
    kind: CellKind = "pct"
    hi: str = ""                    # kind interval: the column of the upper end

    @property
    def width(self) -> int:
        """An estimate in px, for packing tables into the page."""
        return {"interval": 96, "p": 60}.get(self.kind, 48)

    def text(self, row: pd.Series) -> str:
        """The cell of ``row`` (a leaderboard row) as text."""
        value = row.get(self.key)
        if self.kind == "interval":
            return interval_text(value, row.get(self.hi)) or DASH
        if self.kind == "pct":
            return pct(value)
        if self.kind == "int":
            return DASH if missing(value) else str(int(value))
        if self.kind == "p":
            return p_text(value)
        return DASH if missing(value) else number(value)


@dataclass
class ColumnGroup:
    """Columns under one title (an attack with its eps, the worst case, …)."""
    title: str
    note: str = ""
    columns: list[TableColumn] = field(default_factory=list)

    @property
    def width(self) -> int:
        """An estimate in px: a title wraps, but not below ~20 characters a line."""
        return max(sum(c.width for c in self.columns), 8 * min(len(self.title), 18) + 12)


#: the worst case's statistics, shown after it when the leaderboard has them
_WORST_STATISTICS: tuple[tuple[str, str, CellKind], ...] = (
    ("worst_sd", "sd over seeds", "pct"), ("seeds", "seeds", "int"), ("worst_n", "n", "int"),
    ("p_vs_none", "p vs none", "p"), ("p_vs_none_holm", "p vs none (Holm)", "p"))


def _cell_kind(series: pd.Series) -> CellKind:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "raw"
    values = series.dropna()
    return "pct" if len(values) and values.between(0, 1).all() else "raw"


def board_groups(board: pd.DataFrame, results: pd.DataFrame, columns: BoardColumns
                 ) -> list[ColumnGroup]:
    """The leaderboard's numbers as column groups: clean, one per attack, verified, worst
    case, and anything not recognised (so nothing is lost)."""
    groups = [ColumnGroup("clean", n_note_all(results), [TableColumn("", "clean_acc")])]
    # completeness is the summary's (its lead and notes), not a number column
    used = {"rank", "defense", "clean_acc", "status", "reason", *COMPLETENESS_COLUMNS}
    for label, attack in columns.attacks.items():
        shown = [TableColumn(eps, col) for eps, col in attack.eps]
        used.update(col for _, col in attack.eps)
        if attack.mean:
            shown.append(TableColumn("mean", attack.mean))
            used.add(attack.mean)
        note = n_note(results, label)
        if "role" in results and (results.loc[results["attack"] == label, "role"]
                                  == CHECK_ROLE).all():
            note += " · sanity check"
        groups.append(ColumnGroup(label, note, shown))
    if columns.verified:
        groups.append(ColumnGroup("verified", "", [
            TableColumn(c.removeprefix("verified").lstrip("@_") or "acc", c)
            for c in columns.verified]))
        used.update(columns.verified)
    worst = columns.worst
    shown = []
    for eps, _ in worst.eps or [("", 0.0)]:
        if eps not in worst.column:
            continue
        shown.append(TableColumn(eps or "worst", worst.column[eps]))
        used.add(worst.column[eps])
        if eps in worst.lo:
            shown.append(TableColumn("95 % CI", worst.lo[eps], "interval", hi=worst.hi[eps]))
            used.update((worst.lo[eps], worst.hi[eps]))
    for key, header, kind in _WORST_STATISTICS:
        if key in columns:
            shown.append(TableColumn(header, key, kind))
            used.add(key)
    if shown:
        used.add("worst_kind")
        groups.append(ColumnGroup("worst case", columns.worst_kind, shown))
    # per-seed values and upper-bound marks are the summary's notes, not number columns
    used.update(("worst_per_seed", "upper_bound"))
    other = [str(c) for c in board.columns if c not in used and not str(c).startswith("clean_")]
    if other:
        groups.append(ColumnGroup("other", "", [TableColumn(c, c, _cell_kind(board[c]))
                                                for c in other]))
    return groups


def pack_groups(groups: list[ColumnGroup], fixed_px: int, budget_px: int = TABLE_BUDGET_PX
                ) -> list[list[ColumnGroup]]:
    """Groups packed greedily, in order, into tables no wider than ``budget_px`` (a group
    wider than a table on its own is split into parts)."""
    room = max(budget_px - fixed_px, 200)
    parts: list[ColumnGroup] = []
    for group in groups:
        chunks: list[list[TableColumn]] = [[]]
        for column in group.columns:
            if chunks[-1] and sum(c.width for c in chunks[-1]) + column.width > room:
                chunks.append([])
            chunks[-1].append(column)
        parts += [ColumnGroup(group.title if i == 0 else f"{group.title} (cont.)", group.note,
                              chunk) for i, chunk in enumerate(chunks) if chunk]
    tables: list[list[ColumnGroup]] = [[]]
    for part in parts:
        if tables[-1] and sum(g.width for g in tables[-1]) + part.width > room:
            tables.append([])
        tables[-1].append(part)
    return [t for t in tables if t]


# -- the summary ----------------------------------------------------------------------------
@dataclass
class DefenseLine:
    """One defense in the summary, every value already as text (bar geometry as numbers)."""
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
    return list(dict.fromkeys(str(c) for c in rows["check"]))  # once, not once per seed


def worst_interval_from_results(results: pd.DataFrame, defense: str, eps: float,
                                value: float | None
                                ) -> tuple[float | None, float | None, str]:
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


def _note(rank: str, reason: str, failed: list[str], warned: list[str], n_checks: int) -> str:
    if rank == DASH:
        why = "; ".join(failed) or reason
        return f"unranked: failed {why}" if why else "unranked"
    if warned or failed:
        return "warned: " + "; ".join(failed + warned)
    if reason:
        return reason
    return f"all {n_checks} checks passed" if n_checks else "no checks"


def _incomplete_note(row: pd.Series, failed: list[str]) -> str:
    """An incomplete defense's note: what is missing first, then its other failed checks."""
    what = ("unranked: not measured (no rows)" if missing(row.get("clean_acc")) else
            "unranked: incomplete, worst case over the attacks present only; missing "
            f"{row.get('missing_cells')}")
    others = [c for c in failed if c != COMPLETE_CHECK.name]
    return what + ("; failed " + "; ".join(others) if others else "")


def shown_p_column(board: pd.DataFrame) -> str:
    """The summary's p column: the Holm-adjusted p vs none that decides the ranks where the
    board has one, else the raw p."""
    holm = "p_vs_none_holm"
    return holm if holm in board and board[holm].notna().any() else "p_vs_none"


def defense_lines(board: pd.DataFrame, checks: pd.DataFrame, results: pd.DataFrame,
                  columns: BoardColumns) -> tuple[list[DefenseLine], bool]:
    """One summary line per defense in leaderboard order; and whether some interval came from
    the attack attaining the minimum (not from the leaderboard)."""
    lines, derived = [], False
    worst, verified = columns.worst, columns.verified
    shown_p = shown_p_column(board)
    threat = worst.threat
    for _, row in board.iterrows():
        defense = str(row["defense"])
        own = results[results["defense"] == defense]
        clean_ci = ""
        if not own.empty and "seed" in own and own["seed"].nunique() > 1:  # as the worst's
            per_seed, n = clean_per_seed(own), own.groupby("seed")["n"].max()
            _, _, clean_lo, clean_hi = seeds_and_images_interval(
                [(v * n[seed], int(n[seed])) for seed, v in per_seed.items()])
            clean_ci = interval_text(clean_lo, clean_hi)
        elif not own.empty and {"clean_acc_lo", "clean_acc_hi"} <= set(own.columns):
            top = own.loc[own["n"].idxmax()]
            clean_ci = interval_text(top["clean_acc_lo"], top["clean_acc_hi"])
        value = lo = hi = None
        if threat is not None:
            value = as_float(row.get(worst.column[threat]))
            if threat in worst.lo:
                lo, hi = as_float(row.get(worst.lo[threat])), as_float(row.get(worst.hi[threat]))
            elif value is not None and threat:
                lo, hi, _ = worst_interval_from_results(results, defense, float(threat), value)
                derived |= lo is not None
        rank = rank_text(row.get("rank"))
        note = _note(rank, "" if missing(row.get("reason")) else str(row.get("reason")),
                     _failed_checks(checks, defense, "fail"),
                     _failed_checks(checks, defense, "warn"),
                     int((checks["defense"] == defense).sum()))
        if row.get("complete") == INCOMPLETE:
            note = _incomplete_note(row, _failed_checks(checks, defense, "fail"))
        lines.append(DefenseLine(
            rank=rank, defense=defense,
            status="" if missing(row.get("status")) else str(row.get("status")),
            clean=pct(row.get("clean_acc")), clean_ci=clean_ci, worst=pct(value),
            worst_ci=interval_text(lo, hi), worst_value=value, worst_lo=lo, worst_hi=hi,
            # the p that decides (Holm-adjusted where the leaderboard has it)
            p=p_text(row.get(shown_p)) if "p_vs_none" in columns else None,
            verified=pct(row.get(verified[-1])) if verified else None, note=note))
    return lines, derived


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
    items.append(("suite", suite + (f" ({source})" if source else "")))
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
    items.append(("wall time", wall_time(run, log)))
    repro = run.get("reproduction")
    if not isinstance(repro, str) or not repro:  # a folder older than run.json's record
        found = [line for line in log if re.search(r"\b(not )?reproduc", line)]
        repro = _strip_stamp(found[-1]) if found else "not recorded"
    # the run's log line reads "reproduction: ..." where it has no verdict; the label says it
    items.append(("reproduction", repro.removeprefix("reproduction: ")))
    per_attack = []
    for attack, rows in results.groupby("attack", sort=False):
        note = n_note(results, str(attack)).removeprefix("n = ")
        seconds = rows["attack_seconds"].sum() if "attack_seconds" in rows else None
        per_attack.append(f"{attack}: {note} images"
                          + (f", {seconds:.1f} s" if not missing(seconds) else ""))
    items.append(("images per attack", "; ".join(per_attack)))
    seeds = sorted(results["seed"].dropna().unique()) if "seed" in results else []
    if len(seeds):
        items.append(("seeds", ", ".join(str(int(s)) for s in seeds)))
    return items


def wall_time(run: dict, log: list[str]) -> str:
    """The run's wall time as run.json records it (run.log's "done in" lines for a folder
    older than that record)."""
    seconds, runs, total = (run.get(k) for k in ("wall_seconds", "runs_into_folder",
                                                  "wall_seconds_total"))
    if isinstance(seconds, (int, float)):
        last = float(seconds)
        count = runs if isinstance(runs, int) and runs > 0 else 1
        overall = float(total) if isinstance(total, (int, float)) else last
    else:
        times = [float(m.group(1)) for line in log
                 if (m := re.search(r"\bdone in ([0-9.]+)\s*s", line))]
        if not times:
            return "not recorded (no run.log)"
        last, count, overall = times[-1], len(times), sum(times)
    text = f"{last:.1f} s"
    if count > 1:
        text += f" (last of {count} runs into this folder; {overall:.1f} s in all)"
    return text


def _strip_stamp(line: str) -> str:
    return re.sub(r"^\S+T\S+\s+", "", line.strip())
