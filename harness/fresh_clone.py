"""``robench run SUITE`` on a results folder that already holds a complete run of this suite
(a fresh clone's committed results): check it, reading only, instead of computing it again.

**A complete run of this suite.** The folder's run.json and results.csv claim it, read as
plain files (whether the manifest vouches for them is the check's business, below, so an edited
file is reported, never recomputed over):

* the same suite: run.json's recorded suite equals this one's in every setting but
  ``data.root``, ``device`` and ``model.weights`` (where the data, the run and the checkpoint
  were, not what was computed; the checkpoint is compared by its sha256, and run.json records
  its path relative to the results folder, ``robench.weights.suite_record``),
  every defense and attack has the same name and params, every attack the same per-seed
  attack seeds;
* every planned cell present and no other (run.json's plan: ``robench.completeness``), each row
  on this dataset (``data_hash``) with the number of images and role this suite gives it;
* finalized: leaderboard.csv and checks.csv exist (a run removes them before its first write
  and renders them at its end, so an interrupted run lacks them).

Model hashes are not compared: a fresh clone cannot know them without training, and they are
exactly what the check below tests. Code hashes are not compared either: a run of this suite
made by other code (an earlier commit's committed results) is still this suite's run, and
recomputing over it in place would change the files it is the evidence of. Its cells whose
baseline, defense or attack code hash differs from this checkout's are *stale*
(``stale_cells``): the check says how many, names them, and says how to recompute them
(``--recompute`` into a new folder; ``--update``, the developer's workflow, resumes in this
folder: ``robench.runner.run_or_check``). A folder that is not such a run (another suite, an
interrupted or partial run, another dataset) is left to the run as before: it resumes,
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
from robench.config import recorded_suite
from robench.data import resolve_data_root
from robench.eps import canonical_eps
from robench.errors import UserError
from robench.finalize import read_inputs
from robench.outcomes import read_cell_outcomes
from robench.outdir import RunFiles
from robench.plan import Plan
from robench.recorder import plan_cells
from robench.run_files import OUTCOMES_FILE, RESULTS_FILE, is_model_name
from robench.rundata import RunData
from robench.verify_run import DEFAULT_SAMPLE, VerifyOptions, verify
from robench.verify_tables import RECOMPUTED, finalized_problems, row_problems

#: settings of a suite that say where it ran, not what it computed
WHERE_KEYS = (("data", "root"), (None, "device"), ("model", "weights"))
#: settings whose whole effect is which cells a run has (the escalation's adaptive cells):
#: compared through the planned cells instead, so a run recorded before they existed matches
#: a suite that adds no cell through them
CELL_KEYS = ((None, "adaptive"), (None, "adaptive_eot_samples"))


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
    """A suite's dump, read as a recorded suite (keys added since it was recorded take their
    recorded meaning), without the settings of ``WHERE_KEYS`` and of ``CELL_KEYS``."""
    dumped = recorded_suite(json.loads(json.dumps(suite)), RUN_RECORD).model_dump(mode="json")
    for section, key in WHERE_KEYS + CELL_KEYS:
        part = dumped.get(section) if section else dumped
        if isinstance(part, dict):
            part.pop(key, None)
    return dumped


def difference(run: dict[str, Any], results: pd.DataFrame, plan: Plan,
               data: RunData) -> str | None:
    """Why the run recorded in ``run`` and ``results`` is not a complete run of ``plan`` on
    ``data`` (see the module), in a few words; None when it is."""
    if not isinstance(run.get("suite"), dict):
        return "run.json records no suite"
    try:
        recorded_suite_dump = _what_it_computes(run["suite"])
    except UserError:
        return "run.json's suite cannot be read"
    if recorded_suite_dump != _what_it_computes(plan.suite.model_dump(mode="json")):
        return "another suite"
    if checkpoint_sha(run.get("baseline")) != checkpoint_sha(
            {"weights": plan.baseline.weights and plan.baseline.weights.record()}):
        return "its model.weights checkpoint is another file (sha256 differs)"
    for key, specs in (("defenses", plan.defenses), ("attacks", plan.attacks)):
        recorded = run.get(key)
        if not isinstance(recorded, dict):
            return f"run.json records no {key}"
        for spec in specs:
            entry = recorded.get(spec.label)
            if not isinstance(entry, dict) or entry.get("name") != spec.name:
                return f"{spec.label!r} is another {key[:-1]}"
            if entry.get("params") != spec.params_json:
                return f"{spec.label!r} has other params ({_params_differ(entry, spec)})"
    per_seed = [plan.for_seed(s) for s in plan.seeds]  # each resolves the whole plan again
    for i, attack in enumerate(plan.attacks):
        seeds = [p.attacks[i].seed for p in per_seed]
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


def checkpoint_sha(baseline: Any) -> str | None:
    """The sha256 of the ``model.weights`` checkpoint a run.json baseline record names (None:
    trained, no checkpoint); its path may differ (a clone elsewhere), its content may not."""
    weights = baseline.get("weights") if isinstance(baseline, dict) else None
    return str(weights.get("sha256")) if isinstance(weights, dict) else None


def _params_differ(entry: dict[str, Any], spec: Any) -> str:
    """The params whose recorded value is not this suite's, by name."""
    try:
        recorded = json.loads(entry["params"])
        now = json.loads(spec.params_json)
        return ", ".join(sorted(k for k in set(recorded) | set(now)
                                if recorded.get(k, ...) != now.get(k, ...)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return "unreadable"


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
    return not_complete(plan, data, folder) is None


def not_complete(plan: Plan, data: RunData, folder: Path) -> str | None:
    """Why ``folder`` does not hold a complete run of ``plan`` on ``data``, in a few words;
    None when it does."""
    if not folder.is_dir() or not (folder / RUN_RECORD).is_file():
        return "it holds no run"
    missing = [name for name in RECOMPUTED if not os.path.isfile(folder / name)]
    if missing:
        return f"{missing[0]} is missing (the run did not finish)"
    claims = _read_claims(folder)
    if claims is None:
        return f"its {RUN_RECORD} or {RESULTS_FILE} cannot be read"
    return difference(*claims, plan, data)


def ships_models(folder: Path) -> bool:
    """Whether the folder holds (or its manifest lists) a shipped model file."""
    if any(is_model_name(p.name) for p in folder.iterdir()):
        return True
    return any(is_model_name(n) for n in RunFiles.of(folder).listed())


@dataclass(frozen=True)
class Stale:
    """The cells of a complete run that other code computed (``stale_cells``)."""

    cells: int
    total: int
    #: what differs: "the baseline" (every cell), then defense and attack labels
    labels: tuple[str, ...]

    def text(self, suite: str) -> str:
        """The part of the one line that says so and how to recompute them."""
        shown = ", ".join(self.labels[:4])
        if len(self.labels) > 4:
            shown += f" and {len(self.labels) - 4} more"
        return (f"{self.cells} of its {self.total} cells were computed by other code than "
                f"this checkout's ({shown}), so they are stale: robench run {suite} "
                "--recompute recomputes the run into a new folder, --update recomputes the "
                "stale cells in this folder (its earlier outputs set aside in "
                "previous-<time>/)")


def stale_cells(run: dict[str, Any], results: pd.DataFrame, plan: Plan) -> Stale:
    """The cells of a complete run of ``plan`` (``difference`` is None) whose baseline,
    defense or attack code hash (run.json's, or the row's own for its attack) is not this
    checkout's."""
    baseline = run.get("baseline")
    old_base = (not isinstance(baseline, dict)
                or baseline.get("code_hash") != plan.baseline.code_hash)
    defenses = {d.label for d in plan.defenses
                if run["defenses"][d.label].get("code_hash") != d.code_hash}
    # a row's code hash is its own seed's (a transfer cell's includes its source model's key)
    codes = {(a.label, seed): a.code_hash for seed in plan.seeds
             for a in plan.for_seed(seed).attacks}
    attacks = {a.label for a in plan.attacks
               if run["attacks"][a.label].get("code_hash") != a.code_hash}
    rows = results.to_dict("records")
    for row in rows:
        if str(row.get("code_hash")) != codes.get((str(row["attack"]), int(row["seed"]))):
            attacks.add(str(row["attack"]))
    cells = sum(1 for row in rows if old_base or str(row["defense"]) in defenses
                or str(row["attack"]) in attacks)
    labels = ((("the baseline",) if old_base else ())
              + tuple(d.label for d in plan.defenses if d.label in defenses)
              + tuple(a.label for a in plan.attacks if a.label in attacks))
    return Stale(cells, len(rows), labels)


def check_complete(plan: Plan, folder: Path, shown: str, suite: str,
                   echo: Callable[[str], None]) -> Checked:
    """Check the complete run in ``folder`` (named ``shown``) reading only; ``echo`` gets one
    line per problem. ``suite``: the suite file, for the line saying how to recompute."""
    head = f"{shown} holds a complete run of this suite"
    claims = _read_claims(folder)
    stale = stale_cells(*claims, plan) if claims is not None else Stale(0, 0, ())
    again = f" (robench run {suite} --recompute recomputes it into a new folder)"
    tail = ""
    if stale.cells:
        again, tail = "", f"; {stale.text(suite)}"
    if ships_models(folder):
        root = str(resolve_data_root(plan.suite.data.root))
        verdict = verify(folder, VerifyOptions(sample=DEFAULT_SAMPLE, data_dir=root), echo)
        return Checked(f"{head}: {verdict.summary()}{tail}", verdict.code)
    files = RunFiles.of(folder)
    inputs = read_inputs(folder)
    outcomes = read_cell_outcomes(folder, files)
    if outcomes is None:
        problems = [f"{OUTCOMES_FILE} is missing: its numbers cannot be checked"]
    else:
        problems = row_problems(inputs.results, outcomes)
    problems += finalized_problems(inputs, files)
    for line in problems:
        echo(line)
    cells = len(inputs.results)
    cannot = f"its images cannot be re-attacked because its models are not shipped{again}"
    if problems:
        return Checked(f"{head}: NOT verified: {len(problems)} problem(s) in its tables; "
                       f"{cannot}{tail}", 1)
    return Checked(f"{head}: tables checked: {cells} cells agree with their per-image "
                   f"outcomes, leaderboard.csv and checks.csv with them; {cannot}{tail}", 0)


__all__ = ["Checked", "check_complete", "checkpoint_sha", "complete_run", "difference",
           "not_complete", "ships_models", "Stale", "stale_cells"]
