"""Compare two runs, or two defenses of one run: robust accuracy per (defense, attack, eps) in A
and in B, B - A, and a paired test where the same images were evaluated.

A and B are results folders or results.csv files written by ``robench run`` (read with
``robench.results.read_results``, each side's files verified against its folder's manifest
first, ``robench.outdir.verify``: an edited file is refused, a side no manifest vouches for is
marked "unverified" in its label); ``compare_defenses`` makes A and B two defenses of one run.
Cells are matched on (defense, attack, eps); a cell with several rows on one side (several
seeds) is their mean, and the table says so. Cells present on only one side are listed, never
silently dropped. Differences are in percentage points. When both sides have per-image
outcomes (``outcomes.parquet``), each matched cell gets the exact McNemar p-value of the
per-image robust outcomes on the images both evaluated and Newcombe's 95 % interval of the
paired difference (``robench.stats.paired_difference``); with several seeds on both sides,
seed by seed (``robench.stats.paired_over_seeds``: a t interval over the per-seed differences).
The family of those tests is the paired rows the comparison prints; their p-values are
Holm-adjusted over it (``robench.stats.holm_adjust``, column ``p_holm``), and a row is called
significant only where its adjusted p < 0.05.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robench.eps import canonical_eps, eps_text
from robench.errors import UserError
from robench.leaderboard import clean_per_seed, escape_markdown, format_p
from robench.outcomes import OUTCOMES_FILE, RobustPerImage, read_outcomes
from robench.outdir import RunFiles
from robench.ranking import seed_pairs
from robench.results import read_results
from robench.stats import holm_adjust, paired_over_seeds

KEY = ["defense", "attack", "eps"]
#: family-wise level of the word "significant" (on Holm-adjusted p)
ALPHA = 0.05


@dataclass
class Comparison:
    """``cells``: key, robust_a, robust_b, diff_pp, n_a, n_b, rows_a, rows_b (matched cells, in
    A's order). ``only_a`` / ``only_b``: keys present on one side only. ``clean``: clean accuracy
    per defense on both sides (NaN where a side lacks the defense)."""

    cells: pd.DataFrame
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    clean: pd.DataFrame


def _paired(cells: pd.DataFrame, outcomes_a: pd.DataFrame | None,
            outcomes_b: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``n_paired``, ``p_value``, ``p_holm`` (Holm-adjusted over the paired rows),
    ``diff_lo_pp``, ``diff_hi_pp`` to matched cells."""
    cells = cells.assign(n_paired=0, seeds_paired=0, p_value=float("nan"), p_holm=float("nan"),
                         diff_lo_pp=float("nan"), diff_hi_pp=float("nan"))
    if outcomes_a is None or outcomes_b is None:
        return cells
    robust: dict[str, dict[tuple[str, str, float], dict[int, pd.Series]]] = {}
    for side, frame in (("a", outcomes_a), ("b", outcomes_b)):
        robust[side] = {}
        for (d, a, e, s), series in RobustPerImage(frame).cells.items():
            robust[side].setdefault((d, a, e), {})[s] = series
    for i, row in cells.iterrows():
        key = (str(row["defense"]), str(row["attack"]), canonical_eps(row["eps"]))
        if key not in robust["a"] or key not in robust["b"]:
            continue
        pairs = seed_pairs(robust["a"][key], robust["b"][key])
        if not pairs:
            continue
        test = paired_over_seeds(pairs)
        # the difference shown is the paired one (the seeds and images the test used)
        cells.loc[i, ["n_paired", "seeds_paired", "p_value", "diff_lo_pp", "diff_hi_pp",
                      "robust_a", "robust_b", "diff_pp"]] = [
            len(pairs[0][0]), len(pairs), test["p_value"], 100 * test["ci_low"],
            100 * test["ci_high"], test["acc_a"], test["acc_b"], 100 * test["diff"]]
    # the family: every row with a paired test (NaN rows are no test and do not count)
    cells["p_holm"] = holm_adjust(cells["p_value"].to_numpy()) if len(cells) else []
    return cells


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(eps=frame["eps"].map(canonical_eps),
                         n=frame["n"] if "n" in frame else float("nan"))
    grouped = frame.groupby(KEY, sort=False)
    return grouped.agg(robust=("robust_acc", "mean"), n=("n", "first"),
                       rows=("robust_acc", "size")).reset_index()


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, outcomes_a: pd.DataFrame | None = None,
                   outcomes_b: pd.DataFrame | None = None) -> Comparison:
    """Match the cells of two results tables (as read by ``read_results``); with both sides'
    per-image outcomes, test each matched cell's difference on the images both evaluated.
    When both sides share some seeds, only those seeds are compared (means over different
    seed sets would differ by chance)."""
    shared = set(a["seed"]) & set(b["seed"]) if "seed" in a and "seed" in b else set()
    if shared:
        a, b = a[a["seed"].isin(shared)], b[b["seed"].isin(shared)]
    ca, cb = _cells(a), _cells(b)
    # left merges keep each side's own (suite) order; an outer merge would sort the keys
    from_a = ca.merge(cb, on=KEY, how="left", suffixes=("_a", "_b"), indicator=True)
    b_in_a = cb.merge(ca[KEY], on=KEY, how="left", indicator=True)["_merge"] == "both"
    both = from_a[from_a["_merge"] == "both"].copy()
    both["diff_pp"] = 100 * (both["robust_b"] - both["robust_a"])
    cells = both[KEY + ["robust_a", "robust_b", "diff_pp", "n_a", "n_b", "rows_a", "rows_b"]]
    only_a = from_a.loc[from_a["_merge"] == "left_only", KEY]
    only_b = cb.loc[~b_in_a.to_numpy(), KEY]
    # the leaderboard's clean accuracy (on the most images, mean over the compared seeds)
    clean_a, clean_b = (pd.Series({d: clean_per_seed(rows).mean() for d, rows in
                                   side.groupby("defense", sort=False)}, dtype=float)
                        for side in (a, b))
    names = list(dict.fromkeys([*clean_a.index, *clean_b.index]))
    clean = pd.DataFrame({"defense": names, "clean_a": clean_a.reindex(names).to_numpy(),
                          "clean_b": clean_b.reindex(names).to_numpy()})
    clean["diff_pp"] = 100 * (clean["clean_b"] - clean["clean_a"])
    cells = _paired(cells.reset_index(drop=True), outcomes_a, outcomes_b)
    return Comparison(cells, only_a.reset_index(drop=True), only_b.reset_index(drop=True), clean)


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
    if (cells["n_paired"] > 0).any():
        table["95 % CI (pp)"] = [
            f"[{lo:+.1f}, {hi:+.1f}]" if n else "–" for n, lo, hi in
            zip(cells["n_paired"], cells["diff_lo_pp"], cells["diff_hi_pp"], strict=True)]
        table["McNemar p"] = [format_p(p) if n else "–"
                              for n, p in zip(cells["n_paired"], cells["p_value"], strict=True)]
        table["Holm p"] = [format_p(p) if n else "–"
                           for n, p in zip(cells["n_paired"], cells["p_holm"], strict=True)]
        table["paired n"] = [str(int(n)) if n else "–" for n in cells["n_paired"]]
        if (cells["seeds_paired"] > 1).any():
            table["seeds"] = [str(int(s)) if s else "–" for s in cells["seeds_paired"]]
            table = table.rename(columns={"McNemar p": "p"})
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
    if (cells["n_paired"] > 0).any():
        notes.append("- Paired columns: per-image robust outcomes (correct before and after) on "
                     "the images both sides evaluated; exact McNemar test (two-sided) and "
                     "Newcombe's 95 % interval for the paired difference B - A; the accuracies "
                     "and difference shown are then those on these images. `paired n`: images "
                     "per seed.")
        family = int((cells["n_paired"] > 0).sum())
        significant = int((cells["p_holm"] < ALPHA).sum())
        notes.append(f"- `Holm p`: the p-value Holm-adjusted over the family of the {family} "
                     "paired rows of this table (every (defense, attack, eps) row with a test; "
                     "robench.stats.holm_adjust), which holds the family-wise error rate at 5 %. "
                     f"{significant} of {family} rows significant (Holm p < 0.05); a row with a "
                     "raw p below 0.05 but not its Holm p is not significant.")
    if (cells["seeds_paired"] > 1).any():
        notes.append("- With several seeds on both sides (`seeds`): the accuracies and their "
                     "difference are means over the seeds both sides have, on the images all "
                     "of them evaluated; the interval covers both the Student-t interval of the "
                     "per-seed differences and Newcombe's interval of the seed-averaged table, "
                     "and p is the larger of a sign test on the per-image mean differences and "
                     "the t-test over seeds (robench.stats.paired_over_seeds, paired over "
                     "seeds).")
    table["defense"] = table["defense"].map(escape_markdown)
    table["attack"] = table["attack"].map(escape_markdown)
    clean["defense"] = clean["defense"].map(escape_markdown)
    parts = [
        "# robench compare\n\n",
        f"- A: {escape_markdown(label_a)}\n- B: {escape_markdown(label_b)}\n\n",
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


def cell_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Every (defense, attack, eps, seed) both results tables hold, with ``robust_acc_a``,
    ``robust_acc_b`` and B - A in points (``diff_pp``): the unit of a reproduction check,
    where a mean over seeds could hide one seed's difference (a table without a ``seed``
    column is seed 0)."""
    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        seed = frame["seed"].astype(int) if "seed" in frame else 0
        return frame.assign(eps=frame["eps"].map(canonical_eps), seed=seed)[
            [*KEY, "seed", "robust_acc"]]

    both = keyed(a).merge(keyed(b), on=[*KEY, "seed"], suffixes=("_a", "_b"))
    return both.assign(diff_pp=100 * (both["robust_acc_b"] - both["robust_acc_a"]))


def reproduction_line(folder: Path, results: pd.DataFrame) -> str:
    """The reproduction check of ``robench run``: whether ``results`` equal the results.csv
    committed in git for this folder (one log line)."""
    try:
        prefix = subprocess.run(["git", "rev-parse", "--show-prefix"], cwd=folder, timeout=5,
                                capture_output=True, text=True)
        shown = subprocess.run(["git", "show", f"HEAD:{prefix.stdout.strip()}results.csv"],
                               cwd=folder, timeout=10, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return "reproduction: no committed results to compare with (git not available)"
    if prefix.returncode or shown.returncode:
        return "reproduction: no committed results.csv for this folder in git"
    try:
        committed = pd.read_csv(io.StringIO(shown.stdout))
        cells = cell_differences(committed, results)
    except (ValueError, KeyError, TypeError, pd.errors.ParserError):
        return "reproduction: the committed results.csv is not comparable"
    if cells.empty:
        return "reproduction: no cell in common with the committed results.csv"
    worst = cells["diff_pp"].abs()
    differ = int((worst > 1e-9).sum())
    if not differ:
        return f"reproduced: largest difference 0.0 pp over {len(cells)} cells"
    return (f"not reproduced: {differ} of {len(cells)} cells differ from the committed "
            f"results.csv (largest {worst.max():.2f} pp); see robench compare")


def _read_run(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str, RunFiles]:
    """A run's results and outcomes, verified before they are parsed (``robench.outdir.
    verify``), its label (the path, marked when no manifest vouches for the files) and its
    files (whose ``warn`` the caller calls once both runs were read)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise UserError("results file not found", where=str(path))
    files = RunFiles.of(path)
    results = read_results(path, files)
    outcomes = read_outcomes(files.folder, files)
    return results, outcomes, str(path) + (f" ({files.note})" if files.note else ""), files


def compare_results(path_a: Path, path_b: Path) -> str:
    """Markdown comparison of two results folders or CSVs; bad input raises ``UserError``."""
    (a, outcomes_a, label_a, files_a), (b, outcomes_b, label_b, files_b) = \
        _read_run(path_a), _read_run(path_b)
    text = to_markdown(compare_frames(a, b, outcomes_a, outcomes_b), label_a, label_b)
    files_a.warn()  # once both runs were read: a refusal of either is the only line
    files_b.warn()
    return text


def compare_defenses(path: Path, defense_a: str, defense_b: str) -> str:
    """Markdown comparison of two defenses of one run, cell by cell on the same images."""
    if defense_a == defense_b:
        raise UserError(f"compare two different defenses (got {defense_a!r} twice)",
                        where="--defenses")
    results, outcomes, label, files = _read_run(path)
    if outcomes is None:  # two defenses of one run are compared image by image
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        raise UserError("missing; comparing two defenses needs the run's per-image outcomes "
                        "(run the suite again to write them)", where=str(folder / OUTCOMES_FILE))
    sides = []
    for name in (defense_a, defense_b):
        if name not in set(results["defense"]):
            known = ", ".join(dict.fromkeys(results["defense"]))
            raise UserError(f"no defense {name!r} in these results (defenses: "
                            f"{known if len(known) <= 400 else known[:400] + ' ...'})",
                            where=str(path))
        both = f"{defense_a} vs {defense_b}"  # one key so the two sides' cells match
        rows = results[results["defense"] == name].assign(defense=both)
        outs = None if outcomes is None else outcomes[
            outcomes["defense"].astype(str) == name].assign(defense=both)
        sides.append((rows, outs))
    (a, oa), (b, ob) = sides
    text = to_markdown(compare_frames(a, b, oa, ob), f"{label}: {defense_a}",
                       f"{label}: {defense_b}")
    files.warn()  # once every guard passed: a refusal is the only line
    return text
