"""The one finalize path: results.csv -> checks -> leaderboard -> plots -> report.

``robench run`` ends here, and ``robench report`` and ``robench leaderboard --out/--write``
call the same function, so they can never disagree (``robench leaderboard`` alone prints
``leaderboard_of``, the same table, and writes nothing). The model diagnostics that some
checks need (input gradients, randomness, softmax outputs) are measured during the run, when
the models exist, and stored in ``diagnostics.json`` beside results.csv; a folder without that
file gets only the checks that the table alone supports. The run's plan (run.json,
``robench.completeness``) tells which defenses are complete: the others are unranked and named
first.

Every file is read, and verified, before anything is written (``read_inputs``; see
``robench.outdir.verify``): an edited, damaged or non-regular file stops finalize with one line
and changes nothing; a bare results.csv no manifest vouches for is read with one warning (given
once everything is written), and its leaderboard and report say "unverified" in their titles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robench.checks import complete_checks, run_checks, summarise
from robench.completeness import RUN_RECORD, Completeness, completeness_of
from robench.diagnostics import DIAGNOSTIC_KEYS
from robench.errors import UserError
from robench.json_input import loads
from robench.leaderboard import build_leaderboard, write_leaderboard
from robench.outcomes import RobustPerImage, read_robust_per_image
from robench.outdir import OutputFolder, RunFiles
from robench.outdir.verify import warn_unverified
from robench.progress import Reporter
from robench.report import ReportInputs, read_report_inputs, write_report
from robench.results import read_results, write_csv
from robench.run_files import DIAGNOSTICS_FILE


def read_diagnostics(folder: Path, files: RunFiles | None = None) -> dict[str, dict[str, float]]:
    """Per-defense model diagnostics recorded by the run ({} when the file is absent), read
    through ``files`` (default ``RunFiles.of(folder)``), i.e. verified before it is parsed."""
    path = folder / DIAGNOSTICS_FILE
    if files is None and not os.path.lexists(path):
        return {}
    data = (files or RunFiles.of(folder)).read(DIAGNOSTICS_FILE)
    if data is None:
        return {}
    try:
        parsed = loads(data.decode("utf-8"))
        if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
            raise ValueError("not a mapping of defense -> diagnostics")
        out = {str(k): {str(m): float(x) for m, x in v.items()} for k, v in parsed.items()}
        for values in out.values():
            missing = [m for m in DIAGNOSTIC_KEYS if m not in values]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        return out
    except (UnicodeDecodeError, ValueError, TypeError) as err:
        raise UserError(f"not a robench diagnostics file ({type(err).__name__}: "
                        f"{str(err)[:80]})", where=str(path)) from None


@dataclass(frozen=True)
class RunInputs:
    """Every file finalize reads, read and verified up front (``read_inputs``): nothing is
    written, and no folder is locked, before all of them passed. ``note``: the "unverified"
    mark of a folder no manifest vouches for (None: verified)."""

    source: Path
    results: pd.DataFrame
    outcomes: RobustPerImage | None
    diagnostics: dict[str, dict[str, float]]
    report: ReportInputs
    note: str | None
    files: RunFiles

    def warn(self) -> None:
        """The "unverified" warning line, if any: given once every guard passed."""
        warn_unverified(self.note)

    def check_unchanged(self) -> None:
        """Refuse if a run wrote the folder since it was read (see ``RunFiles``); called
        with the folder's lock held, before anything is written."""
        self.files.check_unchanged()


def read_inputs(results_dir: Path) -> RunInputs:
    """Read a results folder (or its results.csv) as robench wrote it: each file checked
    against the folder's manifest and parsed from the bytes checked (``robench.outdir.verify``);
    one-line ``UserError`` for an edited, damaged, missing, unknown or non-regular file."""
    results_dir = Path(results_dir)
    source = results_dir if results_dir.is_dir() else results_dir.parent
    files = RunFiles.of(results_dir)
    results = read_results(results_dir, files)
    outcomes = read_robust_per_image(source, files)  # indexed once, never held whole
    # no warning here: the caller warns once every guard passed (``RunInputs.warn``), so a
    # refusal (a damaged file, a foreign output) is the only line
    return RunInputs(source, results, outcomes, read_diagnostics(source, files),
                     read_report_inputs(files), files.note, files)


def checked(inputs: RunInputs) -> tuple[pd.DataFrame, Completeness]:
    """The checks of a read results folder (completeness first) and its plan's completeness."""
    results, outcomes = inputs.results, inputs.outcomes
    planned = completeness_of(inputs.report.run or None, inputs.source / RUN_RECORD)
    checks = run_checks(results, inputs.diagnostics, outcomes)
    complete = complete_checks(results, planned)
    if complete:  # first: a defense not fully measured is named before anything else
        checks = pd.concat([pd.DataFrame(complete, columns=checks.columns), checks],
                           ignore_index=True)
    return checks, planned


def leaderboard_of(inputs: RunInputs) -> pd.DataFrame:
    """The leaderboard ``finalize`` writes for these inputs, computed without writing anything
    (``robench leaderboard`` without ``--out`` or ``--write``)."""
    checks, planned = checked(inputs)
    return build_leaderboard(inputs.results, summarise(checks), inputs.outcomes, planned)


def finalize(results_dir: Path | RunInputs, out: OutputFolder, reporter: Reporter | None = None
             ) -> pd.DataFrame:
    """Checks, leaderboard, plots and report of the results in ``results_dir`` (a folder or a
    results.csv, or its ``read_inputs``), written into the open folder ``out``; returns the
    leaderboard."""
    read_here = not isinstance(results_dir, RunInputs)
    inputs = results_dir if isinstance(results_dir, RunInputs) else read_inputs(results_dir)
    results, outcomes = inputs.results, inputs.outcomes
    checks, planned = checked(inputs)
    write_csv(out, "checks.csv", checks)
    title = str(results["suite"].iloc[0]) + (f" ({inputs.note})" if inputs.note else "")
    board = write_leaderboard(results, out, title=title, status=summarise(checks),
                              outcomes=outcomes, planned=planned, run=inputs.report.run)
    write_report(out, results, checks, board, source=inputs.report)
    if reporter is not None:
        for _, check in checks[checks["status"] != "pass"].iterrows():
            reporter.info(f"check {check['status']}: [{check['defense']}] {check['check']}: "
                          f"{check['detail']}")
    if read_here:
        inputs.warn()
    return board
