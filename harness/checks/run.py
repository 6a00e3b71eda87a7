"""Running every check on a results table, and one status per defense.

``run_checks`` groups the table by seed and defense and calls the checks of ``rows``,
``between_attacks`` (once per threat model), ``bounds`` and ``model``; ``summarise`` reduces
a defense's findings to its worst status and the names of the checks that did not pass.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from robench.attacks.base import DEFAULT_NORM
from robench.checks import between_attacks
from robench.checks import rows as row_checks
from robench.checks.bounds import bounds_hold
from robench.checks.model import DIAGNOSTIC_CHECKS, diagnostics, eot_attacks
from robench.checks.paired import Paired
from robench.checks.registry import PASS, worst
from robench.outcomes import RobustPerImage
from robench.traits import with_traits


def check_defense(defense: str, rows: pd.DataFrame, diag: dict[str, float] | None,
                  paired: Paired) -> list[dict[str, Any]]:
    """Every check of one defense's rows (of one seed); ``diag``: its model diagnostics."""
    out: list[dict[str, Any]] = []
    clean = float(rows.loc[rows["n"].idxmax(), "clean_acc"])  # on the most images
    out += row_checks.reduced_variants(defense, rows)
    out += row_checks.robust_le_clean(defense, rows)
    out += row_checks.rows_match_outcomes(defense, rows, paired)
    params = rows["attack_params"] if "attack_params" in rows else pd.Series("", index=rows.index)
    eot = eot_attacks(params, rows["attack"])
    random_with_eot = bool(diag and diag.get("random_output")) and bool(eot)
    out += row_checks.eps0_equals_clean(defense, rows, random_with_eot)

    # attacks are compared only within one threat model (an L2 eps is not an L-inf eps); the
    # checks of a non-default norm carry it in their name
    norms = rows["norm"] if "norm" in rows else pd.Series(DEFAULT_NORM, index=rows.index)
    for norm, of_norm in rows.groupby(norms, sort=False):
        found = compare_attacks(defense, of_norm, paired, str(norm))
        if norm != DEFAULT_NORM:
            found = [{**r, "check": r["check"] if f"norm={norm}" in r["check"]
                      else f"{r['check']}[norm={norm}]"} for r in found]
        out += found
    out += diagnostics(defense, diag, eot)
    out += row_checks.clean_accuracy(defense, clean)
    return out


def compare_attacks(defense: str, rows: pd.DataFrame, paired: Paired,
                    norm: str) -> list[dict[str, Any]]:
    """The checks that compare attacks (and eps) of one threat model ``norm``."""
    out: list[dict[str, Any]] = []
    native = rows[rows["backend"].fillna("native") == "native"]
    out += between_attacks.single_step_monotone(defense, native)
    regular = native[native["role"] != "check"]
    out += between_attacks.ordering(defense, regular, "single_step", "iterative", paired)
    out += between_attacks.ordering(defense, regular, "iterative", "ensemble", paired)
    out += between_attacks.blackbox(defense, rows, paired)
    out += between_attacks.transfer(defense, rows, paired)
    if norm == DEFAULT_NORM:  # LARGE_EPS is an L-inf budget
        out += between_attacks.large_eps(defense, rows)
    out += between_attacks.stability(defense, native[native["family"] == "iterative"], paired)
    out += between_attacks.backends(defense, rows)
    out += bounds_hold(defense, rows, paired)
    return out


def run_checks(results: pd.DataFrame, diagnostics: dict[str, dict[str, float]] | None = None,
               outcomes: pd.DataFrame | RobustPerImage | None = None) -> pd.DataFrame:
    """All checks for every defense in a results table (attack comparisons on the same images
    when per-image ``outcomes`` are given). With several seeds every check runs per seed (a
    seed's rows against that seed's outcomes) and names the seed in its detail."""
    diagnostics = diagnostics or {}
    rows: list[dict[str, Any]] = []
    defaults = {"backend": "native", "role": "eval"}
    results = with_traits(results.assign(**{c: results[c].fillna(v) if c in results else v
                                            for c, v in defaults.items()}))
    seeds = list(dict.fromkeys(results["seed"].astype(int))) if "seed" in results else [None]
    robust = RobustPerImage.of(outcomes)
    for seed in seeds:
        of_seed = results if seed is None else results[results["seed"] == seed]
        paired = Paired(robust, seed)
        found = []
        for defense, group in of_seed.groupby("defense", sort=False):
            # model diagnostics are measured on the first seed's models only, so their checks
            # run once; what they found about the defense (a random forward pass) holds for
            # every seed's model of it, and the row checks of every seed read it
            diag = diagnostics.get(str(defense))
            found += [r for r in check_defense(str(defense), group, diag, paired)
                      if seed == seeds[0] or r["check"] not in DIAGNOSTIC_CHECKS]
        if len(seeds) > 1:
            found = [{**r, "detail": f"seed {seed}: {r['detail']}"} for r in found]
        rows += found
    return pd.DataFrame(rows, columns=["defense", "check", "status", "detail"])


def summarise(checks: pd.DataFrame) -> pd.DataFrame:
    """One status per defense (the worst of its checks) and the checks that did not pass."""
    records = []
    for defense, group in checks.groupby("defense", sort=False):
        status = worst(group["status"])
        # one name per check (several seeds repeat a check; checks.csv keeps each)
        reasons = list(dict.fromkeys(group[group["status"] != PASS]["check"]))
        records.append({"defense": defense, "status": status, "reason": "; ".join(reasons)})
    return pd.DataFrame(records, columns=["defense", "status", "reason"])
