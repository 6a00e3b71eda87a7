"""The leaderboard: one row per defense, built from the tidy results table.

Columns: clean accuracy; each attack's accuracy at each eps (``fgsm@0.1``); for sweeps of a
``single_step`` attack (FGSM-like, by the plugin's ``family`` trait) the mean over the sweep's
eps > 0 (``fgsm_mean``); and the worst case at the threat eps (the largest eps of a regular,
non-check attack); ``verified@eps`` for each eps a verifier ran at (its rows have role
``bound``: a lower bound on robust accuracy, shown just before the worst case and never part
of it; see ``add_verified_columns``).

The worst case is per image, as RobustBench and AutoAttack report it: an image counts only if
it is classified correctly and survives every regular attack run at that eps, on the images
that all of those attacks evaluated (``worst_n``), with its 95 % Wilson interval
(``worst@eps_lo``, ``worst@eps_hi``). The worst case is L-inf only: attacks with ``norm: l2``
get their own columns (labelled ``[norm=l2]``, after the L-inf ones) but never set the threat
eps nor enter the worst case, which would otherwise mix two threat models. Without per-image
outcomes (a results.csv alone) it falls back to the minimum of the per-attack accuracies and
says so (``worst_kind``).

Seeds: a run with several seeds shows, per defense, the mean over seeds of every accuracy; the
worst case is computed per seed (on that seed's images) and averaged, with ``worst_sd`` (the
sample standard deviation over seeds) and ``seeds``; its interval is then the hull of the
Student-t 95 % interval over the per-seed values and the Wilson interval of the mean count on
one seed's images (seed-to-seed spread and image sampling both covered; every seed scores the
same images, so they are not pooled as new ones). Comparisons with several seeds use
``robench.stats.paired_over_seeds`` (a difference counts only when both a sign test on the
per-image mean differences and the t-test over seeds find it).

Ranks: defenses are ordered by worst case, then clean accuracy. Each pair of ranked defenses
is tested on the per-image worst-case outcomes (one seed: the exact McNemar test; several:
``paired_over_seeds``), and so is each defense against the undefended baseline (the entry of
the ``none`` plugin, whatever its label: ``p_vs_none``); the p-values of that family are
Holm-adjusted together (``p_vs_none_holm``; ``robench.ranking``). A defense's rank is a range
when an adjusted p >= 0.05 cannot separate it from its neighbours: its best rank is 1 + the
number of defenses significantly better, its worst rank the number of ranked defenses minus
those significantly worse (e.g. ``4–12``). A defense whose sanity checks failed (see
``robench.checks``) is listed last, without a rank, because its numbers cannot be trusted.

Completeness: given the run's planned cells (``robench.completeness``: run.json's suite), a
defense with a planned cell missing (a stopped run, a deleted row) is incomplete: unranked,
listed last, its worst case marked as covering only the attacks present and no ``p_vs_none``;
a planned defense with no row at all is listed as not measured (``COMPLETENESS_COLUMNS``,
``completeness_notes``). Without a plan every defense's completeness is ``unknown``, said once;
when run.json records a plan that cannot be read here, no defense is ranked either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from robench.adaptive import mark_not_run, restricted_attacks, run_notes
from robench.attacks.base import DEFAULT_NORM
from robench.column_names import COMPLETENESS_COLUMNS as _COMPLETENESS
from robench.column_names import VERIFIED, WORST
from robench.completeness import Completeness, cells_text
from robench.eps import canonical_eps, eps_text
from robench.outcomes import Cell, RobustPerImage
from robench.outdir import OutputFolder
from robench.ranking import (
    PER_SEED_CLEAN,
    PER_SEED_WORST,
    holm_family,
    per_seed_text,
    per_seed_values,
    rank_ranges,
    undefended_label,
    worst_columns,
    worst_outcomes,
)
from robench.results import eps_mask, write_csv
from robench.traits import norm_of_params, with_traits

#: attack rows with this role are sanity checks (e.g. PGD at eps 1.0), not the threat model
CHECK_ROLE = "check"
#: a verifier's rows: certified accuracy, a lower bound (``verified@eps``), never an attack
BOUND_ROLE = "bound"


def threat_eps(results: pd.DataFrame) -> float | None:
    """The largest eps evaluated by a regular (non-check) L-inf attack; None when there is
    none (an L2 eps is on another scale: it never sets the threat eps)."""
    rows = results[_is_linf(results)]
    if "role" in rows:
        rows = rows[rows["role"].fillna("") != CHECK_ROLE]
    return float(rows["eps"].max()) if not rows.empty else None


def _is_linf(results: pd.DataFrame) -> pd.Series:
    """Rows of L-inf attacks (the ``norm`` column of ``with_traits``, else the params)."""
    if "norm" in results:
        norms = results["norm"]
    elif "attack_params" in results:
        norms = results["attack_params"].map(norm_of_params)
    else:
        return pd.Series(True, index=results.index)
    return norms == DEFAULT_NORM


#: after the status: ``complete`` (yes: every planned cell has its row; no: some are missing,
#: the defense is unranked; unknown: no plan to compare with), ``missing`` (how many planned
#: cells have no row) and ``missing_cells`` (which: ``pgd@0.1,0.3``; why unknown when unknown)
COMPLETENESS_COLUMNS = list(_COMPLETENESS)
COMPLETE, INCOMPLETE, UNKNOWN = "yes", "no", "unknown"
#: the Holm-adjusted ``p_vs_none`` (``robench.ranking.holm_family``)
P_HOLM = "p_vs_none_holm"
#: the header of a one-seed leaderboard: what its ranks can and cannot say
ONE_SEED = ("One seed: the ranks compare these trained models (one per defense), not training "
            "methods; a claim about a method needs several seeds.")
#: how the ranks and the adjusted p-values are decided, and the wording rule
HOLM_NOTE = ("`p_vs_none_holm`: Holm-adjusted over the family of every pair of ranked defenses "
             "and every p vs none; ranks share a range unless the adjusted p < 0.05 "
             "(\"significant\" only then).")
UPPER_BOUND_MARK = "†"
UPPER_BOUND_NOTE = (f"{UPPER_BOUND_MARK}: the attack did not converge (its `converged` check "
                    "warned): an upper bound on robust accuracy; the worst case, which includes "
                    "every attack (AutoAttack too), is the number.")
#: a ``converged`` check that did not pass, as ``summarise`` names it in ``reason``
#: (the label may hold brackets itself: ``converged[bpda[of=pgd]]@0.3``)
CONVERGED_REASON = r"converged\[(.*?)\]@([0-9.eE+-]+)"
NOT_PLANNED = "not in the run's plan"


def clean_per_seed(rows: pd.DataFrame) -> pd.Series:
    """One defense's clean accuracy per seed: the mean over that seed's rows on its most images
    (a cell on a `limit` subset reports that subset's clean accuracy, which differs; the rows
    of a randomized defense each hold another draw of its prediction, averaged rather than one
    picked by row order). A table without ``n`` or ``seed`` is one size or one seed."""
    seeds = rows["seed"] if "seed" in rows else pd.Series(0, index=rows.index)
    n = rows["n"] if "n" in rows else pd.Series(1, index=rows.index)
    widest = n == n.groupby(seeds).transform("max")
    # equal draws (every deterministic defense) keep their exact value: a float mean of them
    # can land on the other side of a rounding tie
    return rows.loc[widest, "clean_acc"].groupby(seeds[widest]).agg(
        lambda draws: draws.iloc[0] if draws.nunique() == 1 else draws.mean())


def build_leaderboard(results: pd.DataFrame, status: pd.DataFrame | None = None,
                      outcomes: pd.DataFrame | RobustPerImage | None = None,
                      planned: Completeness | Iterable[Cell] | None = None) -> pd.DataFrame:
    """One row per defense (see the module docstring); ``planned``: the run's planned cells
    (``robench.completeness``; None: unknown), against which every defense is complete or
    not (``COMPLETENESS_COLUMNS``); an incomplete one is unranked, a planned one without rows
    listed last."""
    if results.empty:
        raise ValueError("no result rows")
    plan = Completeness.of(planned)
    outcomes = RobustPerImage.of(outcomes)
    # a verifier's rows are lower bounds, not attacks: their own columns, never the worst case
    bounds = bound_rows(results)
    results = with_traits(results if "seed" in results else results.assign(seed=0))
    attack_rows = results.drop(bounds.index)
    eps_star = threat_eps(attack_rows)
    worst_col = WORST if eps_star is None else f"{WORST}@{eps_text(eps_star)}"
    # suite order, grouped by norm: the L-inf columns first, then those of each other norm
    norm_of = dict(zip(attack_rows["attack"], attack_rows["norm"], strict=True))
    attacks = sorted(dict.fromkeys(attack_rows["attack"]),
                     key=lambda a: norm_of[a] != DEFAULT_NORM)
    per_image = worst_outcomes(_regular_at(attack_rows, eps_star), outcomes, eps_star)
    records = []
    several = results["seed"].nunique() > 1
    for defense, rows in results.groupby("defense", sort=False):
        clean = clean_per_seed(rows)
        record: dict[str, object] = {"defense": defense, "clean_acc": clean.mean()}
        if several:  # the seed is the unit of a claim about a method: its spread and values
            record.update({"clean_sd": clean.std(ddof=1), PER_SEED_CLEAN: per_seed_text(
                {int(seed): float(v) for seed, v in clean.items()})})
        worst: dict[int, list[tuple[float, int]]] = {}
        for attack in attacks:
            a_rows = rows[rows["attack"] == attack]
            if a_rows.empty:
                continue
            curve = a_rows.groupby("eps")["robust_acc"].mean().sort_index()  # mean over seeds
            for eps, acc in curve.items():
                record[f"{attack}@{eps_text(eps)}"] = acc
            positive = curve[curve.index > 0]
            if a_rows["family"].iloc[0] == "single_step" and len(positive) > 1:
                record[f"{attack}_mean"] = positive.mean()
            # the worst case is L-inf only: never a minimum over different threat models
            is_check = ("role" in a_rows and (a_rows["role"] == CHECK_ROLE).all()) or \
                norm_of[attack] != DEFAULT_NORM
            at_star = a_rows[eps_mask(a_rows["eps"], eps_star)] if eps_star is not None \
                else a_rows.iloc[:0]
            if not is_check:
                for seed, row in zip(at_star["seed"], at_star.itertuples(), strict=True):
                    worst.setdefault(int(seed), []).append((float(row.robust_acc), int(row.n)))
        record.update(worst_columns(worst_col, per_image.get(str(defense)), worst, several))
        records.append(record)
    board = pd.DataFrame(records)
    board = board.sort_values([worst_col, "clean_acc"], ascending=False, kind="stable")
    extra = [f"{worst_col}_lo", f"{worst_col}_hi",
             *(["worst_sd", PER_SEED_WORST, "seeds"] if several else []), "worst_n", "worst_kind"]
    head = ["defense", "clean_acc", *(["clean_sd", PER_SEED_CLEAN] if several else [])]
    ordered = head + [c for c in board.columns if c not in (*head, worst_col, *extra)] \
        + [worst_col, *extra]
    board = add_verified_columns(board[ordered].reset_index(drop=True), bounds, outcomes,
                                 before=worst_col)
    board = _with_completeness(board, results, plan)
    if status is not None and not status.empty:
        board = board.merge(status[["defense", "status", "reason"]], on="defense", how="left")
        board = board[[c for c in board.columns if c not in COMPLETENESS_COLUMNS]
                      + COMPLETENESS_COLUMNS]
    # a row whose checks failed cannot be trusted, an incomplete one was not fully measured:
    # listed last, without a rank
    unranked = _unranked(board, plan)
    board = pd.concat([board[~unranked], board[unranked]], ignore_index=True)
    unranked = _unranked(board, plan)
    reference = undefended_label(results)
    # a p-value against, or of, a worst case over fewer attacks means nothing
    partial = set(board.loc[(board["complete"] == INCOMPLETE) | (not plan.ranked),
                            "defense"].astype(str))
    vs_none = [] if reference in partial else \
        [str(d) for d in board["defense"] if str(d) not in partial]
    # one family: the pairs that decide the ranks and the p_vs_none column, Holm-adjusted
    raw, adjusted = holm_family(per_image, [str(d) for d in board.loc[~unranked, "defense"]],
                                reference, vs_none)
    board.insert(0, "rank", rank_ranges(board, worst_col, unranked, per_image, adjusted))
    at = board.columns.get_loc("worst_kind") + 1
    for offset, (column, p) in enumerate((("p_vs_none", raw), (P_HOLM, adjusted))):
        board.insert(at + offset, column, [p.get(frozenset((str(d), reference)), float("nan"))
                                           for d in board["defense"]])
    return _with_upper_bounds(board)


def upper_bounds(board: pd.DataFrame) -> dict[str, str]:
    """Per defense with one, its ``upper_bound`` cells (``pgd@0.3;bim@0.3``)."""
    if "upper_bound" not in board:
        return {}
    return {str(d): str(c) for d, c in zip(board["defense"], board["upper_bound"], strict=True)
            if isinstance(c, str) and c}


def _with_upper_bounds(board: pd.DataFrame) -> pd.DataFrame:
    """``upper_bound``: the ``<attack>@<eps>`` cells of each defense whose ``converged`` check
    warned (more steps or restarts still changed accuracy: the number is an upper bound; the
    worst case, over every attack, is the number to read), ``;``-separated."""
    if "reason" not in board:
        return board
    cells = [";".join(c for c in (f"{attack}@{eps_text(float(eps))}" for attack, eps in
                                  re.findall(CONVERGED_REASON, str(reason)))
                      if c in board.columns)
             if isinstance(reason, str) else "" for reason in board["reason"]]
    return board.assign(upper_bound=cells)


def _regular_at(results: pd.DataFrame, eps_star: float | None) -> pd.DataFrame:
    """The rows of the regular L-inf attacks (not checks) at ``eps_star``: the worst case's."""
    if eps_star is None:
        return results.iloc[:0]
    return results[(results["role"] != CHECK_ROLE) & _is_linf(results)
                   & eps_mask(results["eps"], eps_star)]


def _unranked(board: pd.DataFrame, plan: Completeness) -> pd.Series:
    failed = board["status"] == "fail" if "status" in board else False
    return (board["complete"] == INCOMPLETE) | failed | (not plan.ranked)


def _with_completeness(board: pd.DataFrame, results: pd.DataFrame,
                       plan: Completeness) -> pd.DataFrame:
    """``board`` with ``COMPLETENESS_COLUMNS`` and a row for every planned defense that has
    no row (not measured: every number missing)."""
    if not plan.known:
        return board.assign(complete=UNKNOWN, missing=float("nan"), missing_cells=plan.reason
                            + ("" if plan.ranked else ": not ranked"))
    missing, planned = plan.missing(results), set(plan.defenses())
    absent = [d for d in plan.defenses() if d not in plan.measured(results)]
    board = pd.concat([board, pd.DataFrame({"defense": absent})], ignore_index=True) \
        if absent else board
    complete, count, text = [], [], []
    for defense in board["defense"].astype(str):
        cells = missing.get(defense, set())
        complete.append(COMPLETE if defense in planned and not cells else INCOMPLETE)
        count.append(len(cells))
        text.append(NOT_PLANNED if defense not in planned else cells_text(cells, plan.seeds()))
    return board.assign(complete=complete, missing=count, missing_cells=text)


def completeness_notes(board: pd.DataFrame) -> list[str]:
    """What the leaderboard's completeness columns say, one sentence per incomplete or
    unmeasured defense, or one line when completeness could not be checked ([] when every
    defense is complete)."""
    if "complete" not in board:
        return []
    unknown = board[board["complete"] == UNKNOWN]
    if not unknown.empty:
        return [f"completeness cannot be checked: {unknown['missing_cells'].iloc[0]}"]
    notes = []
    for _, row in board[board["complete"] == INCOMPLETE].iterrows():
        cells = str(row["missing_cells"])
        if cells == NOT_PLANNED:
            notes.append(f"incomplete: {row['defense']} is not in the run's plan (run.json): "
                         "unranked")
        elif pd.isna(row["clean_acc"]):
            notes.append(f"not measured: {row['defense']} (none of its {int(row['missing'])} "
                         "planned cells has a row)")
        else:
            notes.append(f"incomplete: {row['defense']} is unranked, its worst case covers only "
                         f"the attacks present; missing {int(row['missing'])} planned "
                         f"cell{'' if int(row['missing']) == 1 else 's'}: {cells}")
    return notes


def bound_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of verifiers (role ``bound``, see ``robench.plan``)."""
    if "role" not in results:
        return results.iloc[:0]
    return results[results["role"].fillna("") == BOUND_ROLE]


def add_verified_columns(board: pd.DataFrame, bounds: pd.DataFrame,
                         outcomes: RobustPerImage | None, before: str) -> pd.DataFrame:
    """``verified@eps`` for every eps a verifier ran at, placed just before column ``before``
    (the worst case): the share of images certified, a lower bound on robust accuracy where the
    worst case is an upper bound. With several verifiers an image counts when any of them
    certified it (on the images all of them evaluated); without per-image outcomes, the best
    verifier's accuracy. NaN for a defense no verifier ran on."""
    if bounds.empty:
        return board
    at = board.columns.get_loc(before) if before in board else len(board.columns)
    board = board.copy()
    for eps in sorted({canonical_eps(e) for e in bounds["eps"]}, reverse=True):
        cells = bounds[eps_mask(bounds["eps"], eps)]
        values = {str(d): _verified(rows, outcomes) for d, rows in
                  cells.groupby(cells["defense"].astype(str), sort=False)}
        board.insert(at, f"{VERIFIED}@{eps_text(eps)}",
                     [values.get(str(d), float("nan")) for d in board["defense"]])
    return board


def _verified(cells: pd.DataFrame, outcomes: RobustPerImage | None) -> float:
    """Verified accuracy of one defense at one eps from its verifier rows ``cells`` (the mean
    over seeds when there are several, as every accuracy of the leaderboard)."""
    seeds = cells["seed"].astype(int) if "seed" in cells else pd.Series(0, index=cells.index)
    return float(pd.Series([_verified_one_seed(rows, outcomes, int(seed))
                            for seed, rows in cells.groupby(seeds)]).mean())


def _verified_one_seed(cells: pd.DataFrame, outcomes: RobustPerImage | None, seed: int) -> float:
    if outcomes is not None:
        defense, eps = str(cells["defense"].iloc[0]), float(cells["eps"].iloc[0])
        got = [outcomes.get(defense, a, eps, seed)
               for a in dict.fromkeys(cells["attack"].astype(str))]
        per_verifier = [s for s in got if s is not None]
        if per_verifier and len(per_verifier) == len(got):
            common = sorted(set.intersection(*(set(s.index) for s in per_verifier)))
            if common:
                return float(pd.concat([s.reindex(common) for s in per_verifier], axis=1)
                             .any(axis=1).mean())
    return float(cells["robust_acc"].max())


def subset_notes(results: pd.DataFrame) -> list[str]:
    """Which attacks were run on fewer images than the rest (their ``limit``: a seeded random
    sample, nested in every larger one, the same for every defense and seed)."""
    n_all = int(results["n"].max())
    notes = []
    for attack, rows in results.groupby("attack", sort=False):
        n = int(rows["n"].min())
        if n < n_all:
            notes.append(f"{attack}: {n} random of the {n_all} evaluation images (the same "
                         "for every defense and seed; smaller subsets nested in larger ones)")
    return notes


def escape_markdown(text: object) -> str:
    """Text for a markdown table cell: line breaks as spaces, ``|``, ``[`` and ``]`` escaped (no
    table breaks, no links), and no raw HTML (a ``<`` that could open a tag and a ``&`` that
    could start an entity become entities)."""
    text = " ".join(str(text).split())
    text = re.sub(r"&(?=#?\w+;)", "&amp;", text)
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def format_p(p: float) -> str:
    """A p-value for a table ("–" when there is none)."""
    if pd.isna(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def shown_table(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as text cells: accuracies in % with one decimal, the worst case with its
    95 % interval in one cell, p-values, "-" for no rank; labels not yet escaped."""
    shown = board.copy()
    worst_cols = [c for c in shown.columns if c.startswith("worst")
                  and not c.endswith(("_lo", "_hi")) and c not in ("worst_n", "worst_kind")]
    partial = shown["complete"] == INCOMPLETE if "complete" in shown else \
        pd.Series(False, index=shown.index)
    for col in worst_cols:
        if f"{col}_lo" in shown:
            # an incomplete defense's worst case covers only the attacks present
            shown[col] = [_with_interval(v, lo, hi) + (" (incomplete)" if p and v == v else "")
                          for v, lo, hi, p in zip(shown[col], shown[f"{col}_lo"],
                                                  shown[f"{col}_hi"], partial, strict=True)]
            shown = shown.drop(columns=[f"{col}_lo", f"{col}_hi"])
    shown["rank"] = shown["rank"].map(lambda v: "-" if pd.isna(v) or v == "" else str(v))
    for column in ("p_vs_none", P_HOLM):
        if column in shown:
            shown[column] = shown[column].map(format_p)
    for column in (PER_SEED_CLEAN, PER_SEED_WORST):
        if column in shown:
            shown[column] = shown[column].map(lambda v: " / ".join(
                f"{100 * x:.1f}" for x in per_seed_values(v).values()) if isinstance(v, str)
                else "")
    bounds = shown.pop("upper_bound") if "upper_bound" in shown else None
    for column in ("worst_n", "seeds", "missing"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for column in shown.columns:
        if pd.api.types.is_numeric_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}")
    for row, cells in ([] if bounds is None else bounds.items()):
        for cell in str(cells).split(";") if isinstance(cells, str) and cells else []:
            shown.at[row, cell] = f"{shown.at[row, cell]} {UPPER_BOUND_MARK}"
    return shown.fillna("")


def _with_interval(value: float, lo: float, hi: float) -> str:
    if pd.isna(value):
        return ""
    return f"{100 * value:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def to_markdown(board: pd.DataFrame, title: str | None = None,
                notes: list[str] | None = None, only: dict[str, list[str]] | None = None
                ) -> str:
    """Accuracies as percentages with one decimal; labels escaped for markdown; the cells of
    an attack that ``only`` runs on other defenses read "not run"."""
    kinds = sorted(set(board["worst_kind"].dropna()) - {""}) if "worst_kind" in board else []
    shown = mark_not_run(shown_table(board.drop(columns=["worst_kind"], errors="ignore")),
                         only or {})
    shown.columns = [escape_markdown(c) for c in shown.columns]
    # completeness first: a defense not fully measured is named before anything else
    notes = [*completeness_notes(board), *(notes or []),
             *(f"worst case: {k}" + (" (an image counts only if it survives every regular "
                                     "attack at that eps)" if k == "per image" else
                                     " (no per-image outcomes)") for k in kinds)]
    for column in ("defense", "reason", "missing_cells"):
        if column in shown:
            shown[column] = shown[column].map(escape_markdown)
    if "seeds" in board:
        how = ("mean over seeds (`seeds`) of the accuracy in % (robust accuracy under each "
               "attack@eps); `clean_sd`, `worst_sd`: sd over seeds, `clean_per_seed`, "
               "`worst_per_seed`: each seed's value in seed order; the worst case with a 95 % "
               "interval covering both the Student-t interval over seeds and the Wilson interval "
               "of the mean count; `p_vs_none`: the worst case against `none` on the same "
               "images, paired over seeds (t-test over the per-seed differences, the seed being "
               "the unit, and a sign test on per-image mean differences; the larger p).")
    else:
        how = ("Accuracy in % (robust accuracy under each attack@eps); the worst case with its "
               "95 % Wilson interval; `p_vs_none`: exact McNemar test of the worst case against "
               f"`none` on the same images. {ONE_SEED}")
    how += f" {HOLM_NOTE}"
    if upper_bounds(board):
        notes.append(UPPER_BOUND_NOTE)
    # what the numbers are (means over seeds or one seed's) goes wherever the table goes
    head = (f"# Leaderboard: {escape_markdown(title)}\n\n" if title else "") + f"{how}\n\n"
    table = shown.to_markdown(index=False, disable_numparse=True) + "\n"
    tail = "".join(f"\n- {escape_markdown(note)}" for note in notes)
    return head + table + (f"\nNotes:{tail}\n" if tail else "")


def board_markdown(board: pd.DataFrame, results: pd.DataFrame, run: dict[str, Any] | None,
                   title: str | None = None) -> str:
    """``to_markdown`` with the notes a run's leaderboard carries (image subsets, adaptive
    attacks) and its restricted cells marked "not run": what leaderboard.md holds and what the
    commands print."""
    return to_markdown(board, title, subset_notes(results) + run_notes(run),
                       restricted_attacks(run))


def write_leaderboard(results: pd.DataFrame, out: OutputFolder, title: str | None = None,
                      status: pd.DataFrame | None = None,
                      outcomes: pd.DataFrame | RobustPerImage | None = None,
                      planned: Completeness | Iterable[Cell] | None = None,
                      run: dict[str, Any] | None = None) -> pd.DataFrame:
    """The leaderboard's csv and markdown (``run``: run.json, for its adaptive attacks and
    restricted cells)."""
    board = build_leaderboard(results, status, outcomes, planned)
    write_csv(out, "leaderboard.csv", board)
    out.write_text("leaderboard.md", board_markdown(board, results, run, title))
    return board
