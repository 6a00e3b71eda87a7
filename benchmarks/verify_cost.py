"""What ``robench verify`` costs, per attack: re-attacks a results folder's sample (as verify
does), timing each attack, and extrapolates to a larger folder from its recorded per-image
attack seconds.

    python benchmarks/verify_cost.py SMALL_RUN [--sample N] [--target results/fgsm_lenet]

For each attack of SMALL_RUN: verify's seconds per re-attacked (image, cell), the run's own
seconds per (image, cell) (results.csv ``attack_seconds / n``) and their ratio (small
batches cost more per image). The target's verify time is then, per attack, its recorded
seconds per (image, cell) x ratio x cells x min(N, n) (attacks absent from SMALL_RUN use the
ratio of PGD). Also times verify's table checks on a copy of the target (read-only).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

import robench.verify_attack as va
from robench.verify_run import DEFAULT_SAMPLE, VerifyOptions, verify


def measure(folder: Path, sample: int) -> tuple[dict[str, float], float]:
    """Seconds per re-attacked (image, cell) per attack label, and verify's total seconds."""
    spent: dict[str, float] = defaultdict(float)
    work: dict[str, int] = defaultdict(int)
    original = va.run_attack_cells

    def timed(spec, model, source, eps, data, reporter, desc):
        t0 = time.perf_counter()
        out = original(spec, model, source, eps, data, reporter, desc)
        spent[spec.label] += time.perf_counter() - t0
        work[spec.label] += len(data) * len(eps)
        return out

    va.run_attack_cells = timed
    t0 = time.perf_counter()
    verdict = verify(folder, VerifyOptions(sample=sample), echo=print)
    total = time.perf_counter() - t0
    va.run_attack_cells = original
    print(verdict.summary())
    return {a: spent[a] / work[a] for a in spent}, total


def per_image(results: pd.DataFrame) -> dict[str, float]:
    """A run's own seconds per (image, cell), per attack."""
    g = results.groupby("attack")
    return (g["attack_seconds"].sum() / g["n"].sum()).to_dict()


def table_seconds(target: Path) -> float:
    """Seconds of verify's table checks on a copy of ``target``."""
    from robench.finalize import read_inputs
    from robench.outcomes import read_cell_outcomes
    from robench.outdir import RunFiles
    from robench.verify_tables import finalized_problems, row_problems

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy"
        shutil.copytree(target, copy)
        t0 = time.perf_counter()
        files = RunFiles.of(copy)
        inputs = read_inputs(copy)
        blocks = read_cell_outcomes(copy, files) or {}
        problems = row_problems(inputs.results, blocks) + finalized_problems(inputs, files)
        seconds = time.perf_counter() - t0
    print(f"table checks of {target}: {seconds:.1f}s, {len(problems)} problems")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("small", type=Path)
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE)
    parser.add_argument("--target", type=Path, default=Path("results/fgsm_lenet"))
    args = parser.parse_args()
    verify_cost, total = measure(args.small, args.sample)
    own = per_image(pd.read_csv(args.small / "results.csv"))
    target = pd.read_csv(args.target / "results.csv")
    recorded = per_image(target)
    print(f"verify of {args.small}: {total:.1f}s in all")
    print("| attack | verify s/(image, cell) | run s/(image, cell) | ratio |")
    ratio = {}
    for attack, cost in sorted(verify_cost.items()):
        ratio[attack] = cost / own[attack] if own.get(attack) else float("nan")
        print(f"| {attack} | {cost:.2e} | {own.get(attack, float('nan')):.2e} | "
              f"{ratio[attack]:.2f} |")
    print(f"\nextrapolated to {args.target} (sample {args.sample}):")
    print("| attack | cells | images/cell | recorded s/(image, cell) | verify s |")
    estimate = 0.0
    for attack, rows in target.groupby("attack"):
        k = min(args.sample, int(rows["n"].max()))
        r = ratio.get(attack, ratio.get("pgd", 1.0))
        seconds = recorded[attack] * r * len(rows) * k
        estimate += seconds
        print(f"| {attack} | {len(rows)} | {k} | {recorded[attack]:.2e} | {seconds:.0f} |")
    tables = table_seconds(args.target)
    print(f"re-attack {estimate:.0f}s + table checks {tables:.0f}s")


if __name__ == "__main__":
    main()
