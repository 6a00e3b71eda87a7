"""How good is the ETA: ``robench plan``'s estimate of a cold run against the run's wall time.

Not a test. For a suite, this prices the run as ``robench plan`` does (``robench.preflight``,
the same calibration and cost model; its total: typical, lowest, highest), then runs the suite
in a fresh process into a temporary folder with an empty model cache (everything trained, every
cell computed: the cold run the plan priced) and appends a row to ``benchmarks/eta.csv``:
suite, predicted (typical, low, high), actual wall seconds, actual / predicted, and the load
average before and after (a busy machine makes both numbers worse; say so with the row).

    python benchmarks/eta.py suites/smoke.yaml [--data-dir D] [--keep FOLDER]

``--predict`` prints the estimate only (nothing run, nothing appended), e.g. to price finished
runs again with a changed estimator on an idle machine.

``--keep FOLDER`` runs into ``FOLDER`` (new) instead of a temporary folder and keeps it, e.g.
to compare its cells with the committed run's (``robench compare``).

``--fit RESULTS_DIR SUITE`` prints, instead, the share of its upper bound every attack's cells
took in a finished run (lowest, mean, highest over its defenses, each defense's cells priced
against its own single-step attacks, which save nothing): the numbers behind
``robench.estimate.SAVINGS``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSV = HERE / "eta.csv"
COLUMNS = ["date", "suite", "predicted_s", "low_s", "high_s", "actual_s", "ratio",
           "load_before", "load_after", "cores", "busy"]


def plan_estimate(suite: str, out: Path, data_dir: str | None) -> tuple[float, float, float, bool]:
    """(typical, low, high) seconds of a cold run and whether the machine was busy."""
    from robench.estimate import WorkRange
    from robench.preflight import preflight
    from robench.runner import RunOptions
    from robench.work import NO_WORK

    opts = RunOptions(data_dir=data_dir, out=str(out), quiet=True)
    pre = preflight(suite, opts, calibrated=True)
    assert pre.calibration is not None
    total = sum(pre.stage_range().values(), WorkRange.exact(NO_WORK))
    low, typical, high = pre.calibration.seconds_range(total)
    return typical, low, high, pre.calibration.busy


def measure(suite: str, data_dir: str | None, keep: Path | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="robench-eta-") as tmp:
        out, cache = keep or Path(tmp) / "out", Path(tmp) / "cache"
        if out.exists():
            raise SystemExit(f"{out}: exists; --keep takes a new folder")
        env = dict(os.environ, ROBENCH_CACHE_DIR=str(cache))
        os.environ["ROBENCH_CACHE_DIR"] = str(cache)  # the plan sees the same empty cache
        load_before = os.getloadavg()[0]
        typical, low, high, busy = plan_estimate(suite, out, data_dir)
        cmd = [sys.executable, "-m", "robench.cli", "run", suite, "--out", str(out), "-q",
               *(["--data-dir", data_dir] if data_dir else [])]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        actual = time.perf_counter() - t0
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "suite": suite,
            "predicted_s": round(typical, 1), "low_s": round(low, 1), "high_s": round(high, 1),
            "actual_s": round(actual, 1), "ratio": round(actual / typical, 3) if typical else "",
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "cores": os.cpu_count(), "busy": busy}


def fit(results: Path, suite: str) -> None:
    """Print each attack's share of its upper bound in a finished run (see the docstring)."""
    import pandas as pd

    from robench.estimate import attack_work, images_attacked
    from robench.rundata import RunOptions, prepare

    plan, _, _ = prepare(suite, RunOptions())
    frame = pd.read_csv(results / "results.csv")
    specs = {a.label: a for a in plan.attacks}
    n_eval = int(frame["n"].max())
    shares: dict[str, list[float]] = {}
    for _, rows in frame.groupby("defense"):
        seconds = rows.groupby("attack")["attack_seconds"].sum()
        units = {label: attack_work(spec, images_attacked(spec, n_eval), spec.eps).units
                 for label, spec in specs.items()}
        single = [label for label, spec in specs.items()
                  if spec.plugin.family == "single_step" and label in seconds]
        if not single:
            continue
        price = sum(seconds[label] for label in single) / sum(units[label] for label in single)
        for label in specs:
            if label in seconds and units[label] > 0:
                shares.setdefault(label, []).append(seconds[label] / (units[label] * price))
    print(f"{'attack':16} {'name':11} {'lowest':>7} {'mean':>7} {'median':>7} {'highest':>7}")
    for label, values in shares.items():
        print(f"{label:16} {specs[label].name:11} {min(values):7.3f} "
              f"{statistics.mean(values):7.3f} {statistics.median(values):7.3f} "
              f"{max(values):7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--data-dir")
    parser.add_argument("--fit", type=Path, metavar="RESULTS_DIR")
    parser.add_argument("--keep", type=Path, metavar="FOLDER")
    parser.add_argument("--predict", action="store_true")
    args = parser.parse_args()
    if args.fit is not None:
        fit(args.fit, args.suite)
        return
    if args.predict:
        with tempfile.TemporaryDirectory(prefix="robench-eta-") as tmp:
            os.environ["ROBENCH_CACHE_DIR"] = str(Path(tmp) / "cache")  # priced cold
            typical, low, high, busy = plan_estimate(args.suite, Path(tmp) / "out",
                                                     args.data_dir)
        print({"suite": args.suite, "predicted_s": round(typical, 1), "low_s": round(low, 1),
               "high_s": round(high, 1), "busy": busy, "load": round(os.getloadavg()[0], 2)})
        return
    row = measure(args.suite, args.data_dir, args.keep)
    new = not CSV.exists()
    with CSV.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(row)


if __name__ == "__main__":
    from robench.errors import UserError

    try:
        main()
    except UserError as error:  # bad input: one line, as the CLI
        raise SystemExit(f"error: {error}") from None
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"error: the measured run failed (exit {error.returncode})") from None
