"""``robench run SUITE`` on a results folder that already holds a complete run of this suite
(a fresh clone's committed results): check it, reading only, instead of computing it again.

**A complete run of this suite.** The folder's run.json and results.csv claim it, read as
plain files (whether the manifest vouches for them is the check's business, below, so an edited
file is reported, never recomputed over):

* the same suite: run.json's recorded suite equals this one's in every setting but
  ``data.root`` and ``device`` (where the data and the run were, not what was computed),
  every defense and attack has the same name, params and code hash, every attack the same
  per-seed attack seeds;
* every planned cell present and no other (run.json's plan: ``robench.completeness``), each row
  on this dataset (``data_hash``) with the number of images and role this suite gives it;
* finalized: leaderboard.csv and checks.csv exist (a run removes them before its first write
  and renders them at its end, so an interrupted run lacks them).

Model hashes are not compared: a fresh clone cannot know them without training, and they are
exactly what the check below tests. A folder that is not such a run (another suite, an
interrupted or partial run, another dataset or code) is left to the run as before: it resumes,
keeping only the stored cells that verify (``robench.resume``), and sets the others aside.

**The check (nothing written: no lock, log, cache entry or folder).** With shipped models,
``robench verify``'s logic with its default sample (``robench.verify_run``), and the verdict's
exit code. Without (folders made before runs shipped their models), the table checks of
``robench.verify_tables`` (every results.csv number against the per-image outcomes,
leaderboard.csv and checks.csv against finalize), and a line saying that the images cannot be
re-attacked and how to recompute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robench.completeness import RUN_RECORD, planned_cells, present_cells
from robench.data import resolve_data_root
from robench.eps import canonical_eps
from robench.errors import UserError
from robench.finalize import read_inputs
from robench.outcomes import read_outcomes
from robench.outdir import RunFiles
from robench.plan import Plan
from robench.recorder import plan_cells
from robench.run_files import OUTCOMES_FILE, RESULTS_FILE, is_model_name
from robench.rundata import RunData
from robench.verify_run import DEFAULT_SAMPLE, VerifyOptions, verify
from robench.verify_tables import RECOMPUTED, finalized_problems, outcome_blocks, row_problems

#: settings of a suite that say where it ran, not what it computed
WHERE_KEYS = (("data", "root"), (None, "device"))


@dataclass(frozen=True)
class Checked:
    """What ``robench run`` found in a folder holding a complete run of its suite: the one
    line it prints and its exit code."""

    line: str
    code: int


def _read_claims(folder: Path) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """run.json and results.csv as plain files (None when either is absent or unreadable)."""
    try:
        run = json.loads((folder / RUN_RECORD).read_text("utf-8"))
        results = pd.read_csv(folder / RESULTS_FILE)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return (run, results) if isinstance(run, dict) else None


def _what_it_computes(suite: dict[str, Any]) -> dict[str, Any]:
    """A suite's dump without the settings of ``WHERE_KEYS``."""
    suite = json.loads(json.dumps(suite))
    for section, key in WHERE_KEYS:
        part = suite.get(section) if section else suite
        if isinstance(part, dict):
            part.pop(key, None)
    return suite


def difference(run: dict[str, Any], results: pd.DataFrame, plan: Plan,
               data: RunData) -> str | None:
    """Why the run recorded in ``run`` and ``results`` is not a complete run of ``plan`` on
    ``data`` (see the module), in a few words; None when it is."""
    if not isinstance(run.get("suite"), dict):
        return "run.json records no suite"
    if _what_it_computes(run["suite"]) != _what_it_computes(plan.suite.model_dump(mode="json")):
        return "another suite"
    for key, specs in (("defenses", plan.defenses), ("attacks", plan.attacks)):
        recorded = run.get(key)
        if not isinstance(recorded, dict):
            return f"run.json records no {key}"
        for spec in specs:
            entry = recorded.get(spec.label)
            if not isinstance(entry, dict) or (entry.get("name"), entry.get("params"),
                                               entry.get("code_hash")) != (
                    spec.name, spec.params_json, spec.code_hash):
                return f"{spec.label!r} differs"
    for i, attack in enumerate(plan.attacks):
        seeds = [plan.for_seed(s).attacks[i].seed for s in plan.seeds]
        if run["attacks"][attack.label].get("seeds") != seeds:
            return f"the attack seeds of {attack.label!r} differ"
    try:
        planned = planned_cells(run, RUN_RECORD)
        present = present_cells(results)
    except (UserError, KeyError, ValueError, TypeError):
        return "its plan or rows cannot be read"
    if planned != plan_cells(plan) or present != planned or len(results) != len(planned):
        return "not every planned cell is there"
    return _rows_difference(results, plan, data)


def _rows_difference(results: pd.DataFrame, plan: Plan, data: RunData) -> str | None:
    """Why a row is not what this suite computes on ``data`` (images, role, dataset)."""
    n_eval = len(data.splits[2])
    attacks = {a.label: a for a in plan.attacks}
    try:
        for row in results.to_dict("records"):
            attack = attacks[str(row["attack"])]
            n = min(n_eval, attack.limit) if attack.limit else n_eval
            if (int(row["n"]), str(row["role"]), str(row["data_hash"])) != (
                    n, attack.role, data.fingerprint):
                return (f"[{row['defense']}] {row['attack']}@{canonical_eps(row['eps'])} was "
                        "computed on other images or data")
    except (KeyError, ValueError, TypeError):
        return "its rows cannot be read"
    return None


def complete_run(plan: Plan, data: RunData, folder: Path) -> bool:
    """Whether ``folder`` holds a complete run of ``plan`` on ``data`` (see the module)."""
    if not folder.is_dir() or not all(os.path.isfile(folder / name) for name in RECOMPUTED):
        return False
    claims = _read_claims(folder)
    return claims is not None and difference(*claims, plan, data) is None


def ships_models(folder: Path) -> bool:
    """Whether the folder holds (or its manifest lists) a shipped model file."""
    if any(is_model_name(p.name) for p in folder.iterdir()):
        return True
    return any(is_model_name(n) for n in RunFiles.of(folder).listed())


def check_complete(plan: Plan, folder: Path, shown: str, suite: str,
                   echo: Callable[[str], None]) -> Checked:
    """Check the complete run in ``folder`` (named ``shown``) reading only; ``echo`` gets one
    line per problem. ``suite``: the suite file, for the line saying how to recompute."""
    head = f"{shown} holds a complete run of this suite"
    again = f"robench run {suite} --recompute recomputes it into a new folder"
    if ships_models(folder):
        root = str(resolve_data_root(plan.suite.data.root))
        verdict = verify(folder, VerifyOptions(sample=DEFAULT_SAMPLE, data_dir=root), echo)
        return Checked(f"{head}: {verdict.summary()}", verdict.code)
    files = RunFiles.of(folder)
    inputs = read_inputs(folder)
    outcomes = read_outcomes(folder, files)
    if outcomes is None:
        problems = [f"{OUTCOMES_FILE} is missing: its numbers cannot be checked"]
    else:
        problems = row_problems(inputs.results, outcome_blocks(outcomes))
    problems += finalized_problems(inputs, files)
    for line in problems:
        echo(line)
    cells = len(inputs.results)
    cannot = ("its images cannot be re-attacked because its models are not shipped "
              f"({again})")
    if problems:
        return Checked(f"{head}: NOT verified: {len(problems)} problem(s) in its tables; "
                       f"{cannot}", 1)
    return Checked(f"{head}: tables checked: {cells} cells agree with their per-image "
                   f"outcomes, leaderboard.csv and checks.csv with them; {cannot}", 0)


__all__ = ["Checked", "check_complete", "complete_run", "difference", "ships_models"]
