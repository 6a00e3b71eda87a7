"""The names of the files a run writes in its results folder, in one place.

The recorder writes them (the shipped models too: ``model-<model_hash>.safetensors``),
``robench run`` and ``robench plan`` refuse a folder where another program's files sit at
these names, and a run that replaces earlier outputs sets these aside
as a whole. A leaf module (it imports nothing of robench), so that every stage can name the
files without importing the stage that writes them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS_FILE = "results.csv"
OUTCOMES_FILE = "outcomes.parquet"
DIAGNOSTICS_FILE = "diagnostics.json"
METRICS_FILE = "defense_metrics.csv"
OUTPUT_NAMES = (RESULTS_FILE, OUTCOMES_FILE, "run.json", "run.log", DIAGNOSTICS_FILE,
                METRICS_FILE, "checks.csv", "leaderboard.csv", "leaderboard.md",
                "report.md", "report.html")
#: what the finalize step renders from the files above (``robench.finalize``): stale as soon as
#: a run changes them, so a run removes them before its first write and renders them at its end
DERIVED_NAMES = ("checks.csv", "leaderboard.csv", "leaderboard.md", "report.md", "report.html")
#: the report's figures (robench.report.figures): curve_<attack>, worst_case, curves_by_defense,
#: each as .png and .svg
FIGURE_PREFIXES = ("curve_", "worst_case.", "curves_by_defense.")
FIGURE_SUFFIXES = (".png", ".svg")


#: the models a run ships (robench.shipped): ``model-<model_hash>.safetensors``, where
#: model_hash is the ``model_hash`` column of the rows computed on that model
MODEL_NAME = re.compile(r"model-([0-9a-f]{16})\.safetensors")


def model_file_name(model_hash: str) -> str:
    """The file name a model with this ``model_hash`` is shipped under."""
    name = f"model-{model_hash}.safetensors"
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"not a model hash: {model_hash!r}")
    return name


def is_model_name(name: str) -> bool:
    """Whether ``name`` is one of the shipped model files."""
    return MODEL_NAME.fullmatch(name) is not None


def is_figure_name(name: str) -> bool:
    """Whether ``name`` is one of the report's figure files."""
    return name.startswith(FIGURE_PREFIXES) and name.endswith(FIGURE_SUFFIXES)


def output_names(folder: Path) -> list[str]:
    """The names robench writes in a results folder that exist there now."""
    names = [n for n in OUTPUT_NAMES if os.path.lexists(folder / n)]
    if folder.is_dir():
        names += sorted(p.name for p in folder.iterdir()
                        if is_figure_name(p.name) or is_model_name(p.name))
    return names


def derived_names(folder: Path) -> list[str]:
    """The finalize step's outputs (``DERIVED_NAMES`` and the figures) that exist in ``folder``."""
    return [n for n in output_names(folder) if n in DERIVED_NAMES or is_figure_name(n)]
