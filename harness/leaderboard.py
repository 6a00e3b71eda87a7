"""The leaderboard: one row per defense, built from the tidy results table.

Columns: clean accuracy; each attack's accuracy at each eps (``fgsm@0.1``); for sweeps of a
``single_step`` attack (FGSM-like, by the plugin's ``family`` trait) the mean over the sweep's
eps > 0 (``fgsm_mean``); and the worst case at the largest evaluated eps (minimum over all
attacks run there). Ranked by worst case, then clean
accuracy; a defense whose sanity checks failed (see ``robench.checks``) is listed last,
without a rank, because its numbers cannot be trusted.
"""

from __future__ import annotations

import pandas as pd

from robench.checks import with_traits
from robench.eps import eps_text, same_eps
from robench.outdir import OutputFolder
from robench.results import write_csv

#: attack rows with this role are sanity checks (e.g. PGD at eps 1.0), not the threat model
CHECK_ROLE = "check"


def threat_eps(results: pd.DataFrame) -> float | None:
    """The largest eps evaluated by a regular (non-check) attack; None when there is none."""
    rows = results
    if "role" in rows:
        rows = rows[rows["role"].fillna("") != CHECK_ROLE]
    return float(rows["eps"].max()) if not rows.empty else None


def build_leaderboard(results: pd.DataFrame, status: pd.DataFrame | None = None
                      ) -> pd.DataFrame:
    if results.empty:
        raise ValueError("no result rows")
    eps_star = threat_eps(results)
    worst_col = "worst" if eps_star is None else f"worst@{eps_text(eps_star)}"
    results = with_traits(results)
    attacks = list(dict.fromkeys(results["attack"]))  # suite order
    records = []
    for defense, rows in results.groupby("defense", sort=False):
        # clean accuracy on the most images (a `limit` subset's clean accuracy differs)
        record: dict[str, object] = {"defense": defense,
                                     "clean_acc": rows.loc[rows["n"].idxmax(), "clean_acc"]}
        worst = []
        for attack in attacks:
            a_rows = rows[rows["attack"] == attack].sort_values("eps")
            if a_rows.empty:
                continue
            for eps, acc in zip(a_rows["eps"], a_rows["robust_acc"], strict=True):
                record[f"{attack}@{eps_text(eps)}"] = acc
            positive = a_rows[a_rows["eps"] > 0]
            if a_rows["family"].iloc[0] == "single_step" and len(positive) > 1:
                record[f"{attack}_mean"] = positive["robust_acc"].mean()
            is_check = "role" in a_rows and (a_rows["role"] == CHECK_ROLE).all()
            at_star = a_rows[a_rows["eps"].map(
                lambda e: eps_star is not None and same_eps(e, eps_star))]
            if not is_check and not at_star.empty:
                worst.append(float(at_star["robust_acc"].min()))
        record[worst_col] = min(worst) if worst else float("nan")
        records.append(record)
    board = pd.DataFrame(records)
    board = board.sort_values([worst_col, "clean_acc"], ascending=False, kind="stable")
    board.insert(0, "rank", range(1, len(board) + 1))
    ordered = ["rank", "defense", "clean_acc"] + [c for c in board.columns
                                                  if c not in ("rank", "defense", "clean_acc",
                                                               worst_col)] + [worst_col]
    board = board[ordered].reset_index(drop=True)
    if status is not None and not status.empty:
        board = board.merge(status[["defense", "status", "reason"]], on="defense", how="left")
        # a row whose checks failed cannot be trusted: listed last, without a rank
        failed = board["status"] == "fail"
        board = pd.concat([board[~failed], board[failed]], ignore_index=True)
        board["rank"] = pd.array(list(range(1, int((~failed).sum()) + 1))
                                 + [pd.NA] * int(failed.sum()), dtype="Int64")
    return board


def subset_notes(results: pd.DataFrame) -> list[str]:
    """Which attacks were run on fewer images than the rest (their ``limit``)."""
    n_all = int(results["n"].max())
    notes = []
    for attack, rows in results.groupby("attack", sort=False):
        n = int(rows["n"].min())
        if n < n_all:
            notes.append(f"{attack}: first {n} of the {n_all} evaluation images")
    return notes


def escape_markdown(text: object) -> str:
    """A cell of a markdown table: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(text).split()).replace("|", "\\|")


def to_markdown(board: pd.DataFrame, title: str | None = None,
                notes: list[str] | None = None) -> str:
    """Accuracies as percentages with one decimal; labels escaped for markdown."""
    shown = board.copy()
    shown.columns = [escape_markdown(c) for c in shown.columns]
    for column in ("defense", "reason"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else escape_markdown(v))
    shown["rank"] = shown["rank"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    for column in shown.columns:
        numeric = pd.api.types.is_numeric_dtype(shown[column])
        if numeric and column not in ("rank", "defense", "status"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}")
    head = (f"# Leaderboard: {escape_markdown(title)}\n\nAccuracy in % (robust accuracy under "
            "each attack@eps).\n\n") if title else ""
    table = shown.to_markdown(index=False, disable_numparse=True) + "\n"
    tail = "".join(f"\n- {escape_markdown(note)}" for note in notes or [])
    return head + table + (f"\nSubsets:{tail}\n" if tail else "")


def write_leaderboard(results: pd.DataFrame, out: OutputFolder, title: str | None = None,
                      status: pd.DataFrame | None = None) -> pd.DataFrame:
    board = build_leaderboard(results, status)
    write_csv(out, "leaderboard.csv", board)
    out.write_text("leaderboard.md", to_markdown(board, title, subset_notes(results)))
    return board
