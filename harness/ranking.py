"""The per-image worst case of each defense and the ranks decided from it: which images survive
every regular attack at the threat eps (per defense and seed), the worst-case columns of the
leaderboard, the pairwise tests between defenses and the rank ranges they give. Read by
``robench.leaderboard`` (whose docstring describes the columns and the rank rule) and
``robench.compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import pandas as pd

from robench.eps import same_eps
from robench.outcomes import RobustPerImage
from robench.stats import holm_adjust, paired_over_seeds, seed_interval, wilson_interval

ALPHA = 0.05  # significance level of the pairwise tests behind shared ranks
NONE_LABEL = "none"

#: with several seeds: the worst case and the clean accuracy of every seed (``per_seed_text``)
PER_SEED_WORST, PER_SEED_CLEAN = "worst_per_seed", "clean_per_seed"


def per_seed_text(values: dict[int, float]) -> str:
    """Per-seed values as one cell, in seed order: ``0:0.221;1:0.553;2:0.587``."""
    return ";".join(f"{seed}:{value:.6g}" for seed, value in sorted(values.items()))


def per_seed_values(text: str) -> dict[int, float]:
    """The values of a ``per_seed_text`` cell ({} for an empty one)."""
    pairs = (item.split(":") for item in str(text).split(";") if item)
    return {int(seed): float(value) for seed, value in pairs}


#: per defense, per seed: robust (correct and unbroken by every regular attack) per image
PerImage = dict[str, dict[int, pd.Series]]


def worst_outcomes(regular: pd.DataFrame, outcomes: RobustPerImage | None,
                   eps_star: float | None) -> PerImage:
    """Per defense and seed: robust (correct and unbroken by every regular attack at
    ``eps_star``) per image, on the images all those attacks evaluated. ``regular``: the result
    rows of those attacks (regular L-inf attacks at ``eps_star``). {} without outcomes; a
    defense lacking outcomes for one of its seeds' cells is left out (table fallback)."""
    if outcomes is None or eps_star is None:
        return {}
    wanted = set(zip(regular["defense"].astype(str), regular["seed"].astype(int),
                     regular["attack"].astype(str), strict=True))
    at_star: dict[tuple[str, int], dict[str, pd.Series]] = {}  # (defense, seed) -> attack -> robust
    for (defense, attack, eps, seed), robust in outcomes.cells.items():
        if same_eps(eps, eps_star):
            at_star.setdefault((defense, seed), {})[attack] = robust
    out: PerImage = {}
    incomplete: set[str] = set()
    for (defense, seed), cells in at_star.items():
        robust = {a: s for a, s in cells.items() if (defense, seed, a) in wanted}
        expected = {a for d, s, a in wanted if (d, s) == (defense, seed)}
        if not robust or set(robust) != expected:
            incomplete.add(defense)  # outcomes incomplete: fall back to the table
            continue
        common = sorted(set.intersection(*(set(s.index) for s in robust.values())))
        out.setdefault(defense, {})[seed] = pd.concat(
            [s.reindex(common) for s in robust.values()], axis=1).all(axis=1)
    seeds = {d: {s for dd, s, _ in wanted if dd == d} for d in out}
    return {d: v for d, v in out.items() if d not in incomplete and set(v) == seeds[d]}


def seeds_and_images_interval(counts: Sequence[tuple[float, int]]
                              ) -> tuple[float, float, float, float]:
    """Mean, sd over seeds and the 95 % interval of an accuracy given per seed as (correct, n):
    the hull of the Student-t interval over the per-seed values and the Wilson interval of the
    mean count on one seed's images (the seeds score the same images, so pooling them would
    not add information about images); one seed: Wilson's alone."""
    lo, hi = wilson_interval(sum(c[0] for c in counts) / len(counts), counts[0][1])
    mean, sd, t_lo, t_hi = seed_interval([k / n for k, n in counts])
    if len(counts) > 1:
        lo, hi = min(lo, max(t_lo, 0.0)), max(hi, min(t_hi, 1.0))
    return mean, sd, lo, hi


def worst_columns(worst_col: str, per_image: dict[int, pd.Series] | None,
                   per_attack: dict[int, list[tuple[float, int]]],
                   several: bool) -> dict[str, object]:
    """The worst case (mean over seeds), its interval, spread, n and how it was computed."""
    if per_image and all(len(s) for s in per_image.values()):
        by_seed = {seed: (int(s.sum()), len(s)) for seed, s in per_image.items()}
        kind = "per image"
    elif per_attack:
        by_seed = {seed: (round(v * n), n) for seed, (v, n) in
                   ((seed, min(p)) for seed, p in per_attack.items())}
        kind = "min of attacks"
    else:
        nan = float("nan")
        return {worst_col: nan, f"{worst_col}_lo": nan, f"{worst_col}_hi": nan,
                **({"worst_sd": nan, "seeds": 0, PER_SEED_WORST: ""} if several else {}),
                "worst_n": 0, "worst_kind": ""}
    counts = list(by_seed.values())
    mean, sd, lo, hi = seeds_and_images_interval(counts)
    out: dict[str, object] = {worst_col: mean, f"{worst_col}_lo": lo, f"{worst_col}_hi": hi}
    if several:
        out.update({"worst_sd": sd, "seeds": len(counts), PER_SEED_WORST: per_seed_text(
            {seed: k / n for seed, (k, n) in by_seed.items()})})
    # images per seed (the same subset for every seed; the first seed's when they differ)
    return {**out, "worst_n": counts[0][1], "worst_kind": kind}


def undefended_label(results: pd.DataFrame) -> str:
    """The label of the undefended baseline: the entry of the ``none`` plugin (by plugin, not
    by label: another plugin may be labelled "none")."""
    if "defense_name" in results:
        labels = results.loc[results["defense_name"] == NONE_LABEL, "defense"]
        if not labels.empty:
            return str(labels.iloc[0])
        return "\0no undefended baseline"
    return NONE_LABEL


def pair_p_value(per_image: PerImage, a: str, b: str) -> float:
    """p-value of two defenses' worst-case outcomes on their common images: exact McNemar
    with one seed, ``paired_over_seeds`` over the seeds both have."""
    if a == b or a not in per_image or b not in per_image:
        return float("nan")
    pairs = seed_pairs(per_image[a], per_image[b])
    return float(paired_over_seeds(pairs)["p_value"]) if pairs else float("nan")


def seed_pairs(a: dict[int, pd.Series], b: dict[int, pd.Series]
               ) -> list[tuple[pd.Series, pd.Series]]:
    """Per seed both sides have, the two sides' per-image outcomes on the images that every one
    of those seeds evaluated on both sides, in one image order (``paired_over_seeds``)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return []
    common = sorted(set.intersection(*(set(a[s].index) & set(b[s].index) for s in seeds)))
    if not common:
        return []
    return [(a[s].reindex(common).to_numpy(dtype=bool), b[s].reindex(common).to_numpy(dtype=bool))
            for s in seeds]


#: one p-value per unordered pair of defenses, keyed by the pair
PairP = dict[frozenset[str], float]


def holm_family(per_image: PerImage, ranked: list[str], reference: str,
                vs_reference: list[str]) -> tuple[PairP, PairP]:
    """Raw and Holm-adjusted p-values (``robench.stats.holm_adjust``) of one leaderboard's
    family: every pair of the ``ranked`` defenses (the comparisons that decide the ranks) and
    each of ``vs_reference`` against ``reference`` (the ``p_vs_none`` column). Pairs without a
    test (no per-image outcomes) are no part of it."""
    wanted = [frozenset(pair) for pair in combinations(dict.fromkeys(ranked), 2)]
    wanted += [frozenset((d, reference)) for d in vs_reference if d != reference]
    raw = {pair: pair_p_value(per_image, *sorted(pair)) for pair in dict.fromkeys(wanted)}
    raw = {pair: p for pair, p in raw.items() if p == p}
    return raw, dict(zip(raw, holm_adjust(list(raw.values())), strict=True))


def rank_ranges(board: pd.DataFrame, worst_col: str, failed: pd.Series,
                per_image: PerImage, adjusted: PairP) -> list[str]:
    """Rank ranges from the Holm-adjusted pairwise tests ``adjusted`` (``holm_family``; a plain
    position when outcomes are missing)."""
    # a defense without a worst case (no regular attack reached it at this eps) has nothing to
    # rank, and must not push the others back to plain positions
    ranked = [i for i in board.index if not failed[i] and pd.notna(board.at[i, worst_col])]
    names = [str(board.at[i, "defense"]) for i in ranked]
    if not all(name in per_image for name in names):
        out = {i: str(pos + 1) for pos, i in enumerate(ranked)}
        return [out.get(i, "") for i in board.index]
    worst = {name: float(board.at[i, worst_col]) for i, name in zip(ranked, names, strict=True)}

    def separated(a: str, b: str) -> bool:
        return adjusted.get(frozenset((a, b)), 1.0) < ALPHA

    out = {}
    for i, name in zip(ranked, names, strict=True):
        better = sum(1 for other in names if worst[other] > worst[name]
                     and separated(name, other))
        worse = sum(1 for other in names if worst[other] < worst[name]
                    and separated(name, other))
        lo, hi = 1 + better, len(names) - worse
        out[i] = str(lo) if lo == hi else f"{lo}–{hi}"
    return [out.get(i, "") for i in board.index]
