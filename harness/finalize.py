"""The one finalize path: results.csv -> checks -> leaderboard -> plots -> report.

``robench run`` ends here, and ``robench leaderboard`` and ``robench report`` call the same
function, so the three can never disagree. The model diagnostics that some checks need (input
gradients, randomness, softmax outputs) are measured during the run, when the models exist,
and stored in ``diagnostics.json`` beside results.csv; a folder without that file gets only the
checks that the table alone supports. The run's plan (run.json, ``robench.completeness``) tells
which defenses are complete: the others are unranked and named first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from robench.checks import complete_checks, run_checks, summarise
from robench.completeness import RUN_RECORD, completeness_of, read_run_record
from robench.diagnostics import DIAGNOSTIC_KEYS
from robench.errors import UserError
from robench.leaderboard import write_leaderboard
from robench.outcomes import read_robust_per_image
from robench.outdir import OutputFolder
from robench.progress import Reporter
from robench.report import write_report
from robench.results import read_results, write_csv
from robench.run_files import DIAGNOSTICS_FILE


def read_diagnostics(folder: Path) -> dict[str, dict[str, float]]:
    """Per-defense model diagnostics recorded by the run ({} when the file is absent)."""
    path = folder / DIAGNOSTICS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("not a mapping of defense -> diagnostics")
        out = {str(k): {str(m): float(x) for m, x in v.items()} for k, v in data.items()}
        for values in out.values():
            missing = [m for m in DIAGNOSTIC_KEYS if m not in values]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        return out
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise UserError(f"not a robench diagnostics file ({type(err).__name__}: "
                        f"{str(err)[:80]})", where=str(path)) from None


def finalize(results_dir: Path, out: OutputFolder, reporter: Reporter | None = None
             ) -> pd.DataFrame:
    """Checks, leaderboard, plots and report of the results in ``results_dir`` (a folder or a
    results.csv), written into the open folder ``out``; returns the leaderboard."""
    results_dir = Path(results_dir)
    source = results_dir if results_dir.is_dir() else results_dir.parent
    results = read_results(results_dir)
    outcomes = read_robust_per_image(source)  # indexed once, never held whole
    run = read_run_record(source)
    planned = completeness_of(run, source / RUN_RECORD)
    checks = run_checks(results, read_diagnostics(source), outcomes)
    complete = complete_checks(results, planned)
    if complete:  # first: a defense not fully measured is named before anything else
        checks = pd.concat([pd.DataFrame(complete, columns=checks.columns), checks],
                           ignore_index=True)
    write_csv(out, "checks.csv", checks)
    board = write_leaderboard(results, out, title=str(results["suite"].iloc[0]),
                              status=summarise(checks), outcomes=outcomes, planned=planned)
    write_report(out, results, checks, board, source=source, run=run)
    if reporter is not None:
        for _, check in checks[checks["status"] != "pass"].iterrows():
            reporter.info(f"check {check['status']}: [{check['defense']}] {check['check']}: "
                          f"{check['detail']}")
    return board
