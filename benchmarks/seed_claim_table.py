"""The answer table of docs/findings/seed_claim.md for suites/seed_claim.yaml: each defense
against `none`, paired over seeds on the same images (``robench.compare``), for clean accuracy
and chosen cells. Per row: the per-seed differences, the t-based interval and p, the exact
Wilcoxon signed-rank p over seeds (no normality assumed), both Holm-adjusted across the table's
rows, and the minimum effect the seeds detect at 80 % power (paired t-test, the row's
between-seed sd). "significant" only where the adjusted p < 0.05.

    python benchmarks/seed_claim_table.py results/seed_claim
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from robench.compare import compare_frames
from robench.outcomes import read_outcomes
from robench.results import read_results
from robench.stats import holm_adjust, min_detectable_effect, paired_over_seeds, wilcoxon_exact

CELLS = [("fgsm", 0.1), ("fgsm", 0.3), ("pgd", 0.1), ("pgd", 0.3), ("autoattack", 0.3)]


def _clean_pairs(outcomes: pd.DataFrame, a: str, b: str) -> dict[str, float]:
    """Clean accuracy paired over seeds, from the FGSM eps-0 cells (all evaluation images)."""
    cell = outcomes[(outcomes["attack"] == "fgsm") & (outcomes["eps"] == 0.0)]
    pairs = []
    for seed in sorted(cell["seed"].unique()):
        x = cell[(cell["defense"] == a) & (cell["seed"] == seed)].set_index("image")
        y = cell[(cell["defense"] == b) & (cell["seed"] == seed)].set_index("image")
        x, y = x["clean_correct"].align(y["clean_correct"], join="inner")
        pairs.append((x.to_numpy(bool), y.to_numpy(bool)))
    return paired_over_seeds(pairs)


def _fmt(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _per_seed(results: pd.DataFrame, outcomes: pd.DataFrame, d: str, attack: str | None,
              eps: float | None) -> list[float]:
    """Per seed: the defense's accuracy minus none's (clean when ``attack`` is None)."""
    out = []
    for seed in sorted(results["seed"].unique()):
        if attack is None:
            cell = outcomes[(outcomes["attack"] == "fgsm") & (outcomes["eps"] == 0.0)
                            & (outcomes["seed"] == seed)]
            value = {x: cell[cell["defense"] == x]["clean_correct"].mean() for x in ("none", d)}
        else:
            cell = results[(results["attack"] == attack) & (results["eps"] == eps)
                           & (results["seed"] == seed)].set_index("defense")["robust_acc"]
            value = {x: cell.get(x, float("nan")) for x in ("none", d)}
        out.append(float(value[d] - value["none"]))
    return out


def main(folder: str) -> None:
    results, outcomes = read_results(Path(folder)), read_outcomes(Path(folder))
    seeds = sorted(results["seed"].unique())
    defenses = [d for d in dict.fromkeys(results["defense"]) if d != "none"]
    rows = []
    for d in defenses:
        c = _clean_pairs(outcomes, "none", d)
        rows.append((d, "clean", c["n"], c["acc_a"], c["acc_b"], c["diff"], c["ci_low"],
                     c["ci_high"], c["p_value"], _per_seed(results, outcomes, d, None, None)))
        a = results[results["defense"] == "none"].assign(defense="vs")
        b = results[results["defense"] == d].assign(defense="vs")
        oa = outcomes[outcomes["defense"] == "none"].assign(defense="vs")
        ob = outcomes[outcomes["defense"] == d].assign(defense="vs")
        cells = compare_frames(a, b, oa, ob).cells
        for attack, eps in CELLS:
            row = cells[(cells["attack"] == attack) & (cells["eps"] == eps)]
            if row.empty:
                continue
            r = row.iloc[0]
            rows.append((d, f"{attack}@{eps:g}", int(r["n_paired"]), r["robust_a"], r["robust_b"],
                         r["diff_pp"] / 100, r["diff_lo_pp"] / 100, r["diff_hi_pp"] / 100,
                         r["p_value"], _per_seed(results, outcomes, d, attack, eps)))
    p_holm = holm_adjust([r[8] for r in rows])
    w_raw = [wilcoxon_exact(r[9]) for r in rows]
    w_holm = holm_adjust(w_raw)
    print(f"seeds {', '.join(map(str, seeds))}; B − A with A = none; mean over seeds "
          "[95 % interval: hull of the t interval over seeds and Newcombe's]; p = the larger of "
          "a sign test on per-image mean differences and the t-test over seeds; Wilcoxon: exact "
          "signed-rank test over the per-seed differences; both Holm-adjusted across the "
          f"{len(rows)} rows; MDE: the smallest difference {len(seeds)} seeds detect at 80 % "
          "power (paired t-test, this row's between-seed sd)\n")
    print("| defense | cell | n per seed | none | defense | B − A (pp) | per seed (pp) | p | "
          "p Holm | Wilcoxon p | Wilcoxon Holm | MDE (pp) |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r, ph, wr, wh in zip(rows, p_holm, w_raw, w_holm, strict=True):
        d, cell, n, acc_a, acc_b, diff, lo, hi, p, per_seed = r
        sd = pd.Series(per_seed).std(ddof=1)
        mde = (f"{100 * min_detectable_effect(sd, len(per_seed)):.1f}"
               if len(per_seed) > 1 and sd > 0 else "–")
        print(f"| {d} | {cell} | {n} | {100 * acc_a:.1f} | {100 * acc_b:.1f} | "
              f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
              f"{' / '.join(f'{100 * v:+.1f}' for v in per_seed)} | {_fmt(p)} | {_fmt(ph)} | "
              f"{_fmt(wr)} | {_fmt(wh)} | {mde} |")


if __name__ == "__main__":
    main(sys.argv[1])
