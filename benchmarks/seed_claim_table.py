"""The answer table of docs/findings/seed_claim.md for suites/seed_claim.yaml: each defense
against `none`, paired over seeds on the same images (``robench.compare``), for clean accuracy
and chosen cells.

    python benchmarks/seed_claim_table.py results/seed_claim
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from robench.compare import compare_frames
from robench.outcomes import read_outcomes
from robench.results import read_results
from robench.stats import paired_over_seeds

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


def main(folder: str) -> None:
    results, outcomes = read_results(Path(folder)), read_outcomes(Path(folder))
    seeds = sorted(results["seed"].unique())
    defenses = [d for d in dict.fromkeys(results["defense"]) if d != "none"]
    print(f"seeds {', '.join(map(str, seeds))}; B − A with A = none; mean over seeds "
          "[95 % interval: hull of the t interval over seeds and Newcombe's]; p = the larger of "
          "a sign test on per-image mean differences and the t-test over seeds\n")
    print("| defense | cell | n per seed | none | defense | B − A (pp) | p |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for d in defenses:
        c = _clean_pairs(outcomes, "none", d)
        n = c["n"]  # images per seed
        print(f"| {d} | clean | {n} | {100 * c['acc_a']:.1f} | {100 * c['acc_b']:.1f} | "
              f"{100 * c['diff']:+.1f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] | "
              f"{_fmt(c['p_value'])} |")
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
            print(f"| {d} | {attack}@{eps:g} | {int(r['n_paired'])} | {100 * r['robust_a']:.1f} "
                  f"| {100 * r['robust_b']:.1f} | {r['diff_pp']:+.1f} [{r['diff_lo_pp']:+.1f}, "
                  f"{r['diff_hi_pp']:+.1f}] | {_fmt(r['p_value'])} |")


if __name__ == "__main__":
    main(sys.argv[1])
