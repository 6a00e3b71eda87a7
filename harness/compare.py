"""Compare two runs: robust accuracy per (defense, attack, eps) in A and in B, and B - A.

A and B are results folders or results.csv files written by ``robench run`` (read with
``robench.results.read_results``). Cells are matched on (defense, attack, eps); a cell with
several rows on one side (several seeds) is their mean, and the table says so. Cells present
on only one side are listed, never silently dropped. Differences are in percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robench.eps import canonical_eps, eps_text
from robench.results import read_results

KEY = ["defense", "attack", "eps"]


@dataclass
class Comparison:
    """``cells``: key, robust_a, robust_b, diff_pp, n_a, n_b, rows_a, rows_b (matched cells, in
    A's order). ``only_a`` / ``only_b``: keys present on one side only. ``clean``: clean accuracy
    per defense on both sides (NaN where a side lacks the defense)."""

    cells: pd.DataFrame
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    clean: pd.DataFrame


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(eps=frame["eps"].map(canonical_eps),
                         n=frame["n"] if "n" in frame else float("nan"))
    grouped = frame.groupby(KEY, sort=False)
    return grouped.agg(robust=("robust_acc", "mean"), clean=("clean_acc", "mean"),
                       n=("n", "first"), rows=("robust_acc", "size")).reset_index()


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> Comparison:
    """Match the cells of two results tables (as read by ``read_results``)."""
    ca, cb = _cells(a), _cells(b)
    # left merges keep each side's own (suite) order; an outer merge would sort the keys
    from_a = ca.merge(cb, on=KEY, how="left", suffixes=("_a", "_b"), indicator=True)
    b_in_a = cb.merge(ca[KEY], on=KEY, how="left", indicator=True)["_merge"] == "both"
    both = from_a[from_a["_merge"] == "both"].copy()
    both["diff_pp"] = 100 * (both["robust_b"] - both["robust_a"])
    cells = both[KEY + ["robust_a", "robust_b", "diff_pp", "n_a", "n_b", "rows_a", "rows_b"]]
    only_a = from_a.loc[from_a["_merge"] == "left_only", KEY]
    only_b = cb.loc[~b_in_a.to_numpy(), KEY]
    clean_a = ca.groupby("defense", sort=False)["clean"].mean()
    clean_b = cb.groupby("defense", sort=False)["clean"].mean()
    names = list(dict.fromkeys([*clean_a.index, *clean_b.index]))
    clean = pd.DataFrame({"defense": names, "clean_a": clean_a.reindex(names).to_numpy(),
                          "clean_b": clean_b.reindex(names).to_numpy()})
    clean["diff_pp"] = 100 * (clean["clean_b"] - clean["clean_a"])
    return Comparison(cells.reset_index(drop=True), only_a.reset_index(drop=True),
                      only_b.reset_index(drop=True), clean)


def _pct(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def _pp(value: float) -> str:
    return "" if pd.isna(value) else f"{value:+.1f}"


def _key_list(keys: pd.DataFrame) -> str:
    if keys.empty:
        return "none\n"
    return "".join(f"- {r.defense} / {r.attack} @ eps {eps_text(r.eps)}\n"
                   for r in keys.itertuples())


def to_markdown(result: Comparison, label_a: str, label_b: str) -> str:
    cells = result.cells
    table = pd.DataFrame({
        "defense": cells["defense"], "attack": cells["attack"],
        "eps": cells["eps"].map(eps_text),
        "A robust %": cells["robust_a"].map(_pct), "B robust %": cells["robust_b"].map(_pct),
        "B - A (pp)": cells["diff_pp"].map(_pp),
    })
    clean = pd.DataFrame({
        "defense": result.clean["defense"], "A clean %": result.clean["clean_a"].map(_pct),
        "B clean %": result.clean["clean_b"].map(_pct),
        "B - A (pp)": result.clean["diff_pp"].map(_pp),
    })
    notes = []
    n_differs = cells[cells["n_a"].ne(cells["n_b"]) & cells["n_a"].notna()
                      & cells["n_b"].notna()]
    if not n_differs.empty:
        notes.append(f"- {len(n_differs)} matched cell(s) were evaluated on a different number of "
                     "images in A and B (column `n`); their difference mixes in that change.")
    if (cells["rows_a"] > 1).any() or (cells["rows_b"] > 1).any():
        notes.append("- Some cells have several rows (seeds) on one side: those are means.")
    parts = [
        "# robench compare\n\n",
        f"- A: {label_a}\n- B: {label_b}\n\n",
        "Robust accuracy in %; B - A in percentage points (positive: B is more robust).\n\n",
        table.to_markdown(index=False, disable_numparse=True) + "\n\n" if not table.empty
        else "No (defense, attack, eps) cell is present in both A and B.\n\n",
        "## Clean accuracy per defense\n\n",
        clean.to_markdown(index=False, disable_numparse=True) + "\n\n",
        f"## Only in A ({len(result.only_a)})\n\n", _key_list(result.only_a), "\n",
        f"## Only in B ({len(result.only_b)})\n\n", _key_list(result.only_b),
    ]
    if notes:
        parts += ["\n## Notes\n\n", "\n".join(notes) + "\n"]
    return "".join(parts)


def compare_results(path_a: Path, path_b: Path) -> str:
    """Markdown comparison of two results folders or CSVs; bad input raises ``UserError``."""
    return to_markdown(compare_frames(read_results(path_a), read_results(path_b)), str(path_a),
                       str(path_b))
