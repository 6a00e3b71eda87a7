"""The names of the files a run writes in its results folder, in one place.

The recorder writes them, ``robench run`` and ``robench plan`` refuse a folder where another
program's files sit at these names, and a run that replaces earlier outputs sets these aside
as a whole. A leaf module (it imports nothing of robench), so that every stage can name the
files without importing the stage that writes them.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_FILE = "results.csv"
OUTCOMES_FILE = "outcomes.parquet"
DIAGNOSTICS_FILE = "diagnostics.json"
METRICS_FILE = "defense_metrics.csv"
OUTPUT_NAMES = (RESULTS_FILE, OUTCOMES_FILE, "run.json", "run.log", DIAGNOSTICS_FILE,
                METRICS_FILE, "checks.csv", "leaderboard.csv", "leaderboard.md",
                "report.md", "report.html")
#: the report's figures (robench.report.figures): curve_<attack>, worst_case, curves_by_defense,
#: each as .png and .svg
FIGURE_PREFIXES = ("curve_", "worst_case.", "curves_by_defense.")
FIGURE_SUFFIXES = (".png", ".svg")


def is_figure_name(name: str) -> bool:
    """Whether ``name`` is one of the report's figure files."""
    return name.startswith(FIGURE_PREFIXES) and name.endswith(FIGURE_SUFFIXES)


def output_names(folder: Path) -> list[str]:
    """The names robench writes in a results folder that exist there now."""
    names = [n for n in OUTPUT_NAMES if os.path.lexists(folder / n)]
    if folder.is_dir():
        names += sorted(p.name for p in folder.iterdir() if is_figure_name(p.name))
    return names
