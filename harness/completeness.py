"""What a run planned against what results.csv holds: a defense is complete only when every
planned cell (defense x attack x eps x seed) has its row.

A run is stopped (Ctrl-C, a crash) or a row is deleted: the leaderboard would otherwise rank a
defense on fewer attacks, its worst case an upper bound over the attacks present only. The plan
is run.json's ``planned`` record (defense labels, attack labels with their eps, seeds: written
out by the recorder, so it is read without any plugin); a run.json written before that record
existed has its recorded ``suite`` (the suite as run, command-line overrides included) resolved
to labels with ``robench.plan.entry_labels``, the labelling ``robench run`` used, which needs
its plugins installed. When run.json's plan can be neither read nor resolved, completeness is
unknown and no defense is ranked (the cells it planned may be missing). Without run.json (a
bare results.csv, which claims no plan), completeness is unknown and said to be; its defenses
are ranked as the table stands.

``read_run_record`` is the one reader of run.json, ``planned_cells`` the cells of a recorded
plan (built by ``robench.outcomes.cell_grid``, as a run's own plan's cells are:
``robench.recorder.plan_cells``); ``Completeness`` compares them with a results table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robench.config import recorded_suite
from robench.eps import canonical_eps, eps_text
from robench.errors import UserError
from robench.json_input import UnreadableJSON, loads
from robench.outcomes import Cell, cell_grid
from robench.outdir import RunFiles
from robench.plan import Plan, entry_labels, restrictions

RUN_RECORD = "run.json"
#: how many missing cells ``cells_text`` names before it counts the rest
SHOWN_CELLS = 12


def read_run_record(files: RunFiles) -> dict[str, Any] | None:
    """run.json of a results folder as a mapping, verified against the folder's manifest before
    it is parsed (``robench.outdir.RunFiles``); None when there is none; a ``UserError`` when
    it is edited, damaged, not a regular file or not a JSON object."""
    path = files.folder / RUN_RECORD
    data = files.read(RUN_RECORD)
    if data is None:
        return None
    try:
        record = loads(data.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError, JSONDecodeError, UnreadableJSON
        why = str(err) if isinstance(err, UnreadableJSON) else type(err).__name__
        raise UserError(f"not a robench run record ({why})", where=str(path)) from None
    if not isinstance(record, dict):
        raise UserError("not a robench run record (not a JSON object)", where=str(path))
    return record


def planned_record(plan: Plan) -> dict[str, Any]:
    """What run.json records as ``planned`` (``robench.recorder``): every defense label x
    every attack label x that attack's eps x every seed, written out so the plan can be
    checked where the plugins that labelled it are not installed (``recorded_cells``)."""
    record: dict[str, Any] = {"defenses": [d.label for d in plan.defenses],
                              "attacks": {a.label: list(a.eps) for a in plan.attacks},
                              "seeds": list(plan.seeds)}
    # written only when used, so the record of a plan without them stays as it was
    if restrictions(plan):
        record["only"] = {a: list(d) for a, d in restrictions(plan).items()}
    if any(a.adaptive for a in plan.attacks) or plan.adaptive_notes:
        record["adaptive"] = {a.label: a.adaptive for a in plan.attacks if a.adaptive}
        record["adaptive_notes"] = list(plan.adaptive_notes)
    return record


def recorded_cells(planned: Any, where: str) -> set[Cell]:
    """The cells of run.json's ``planned`` record (``robench.recorder.planned_record``): its
    defenses x its attacks x each attack's eps x its seeds; a ``UserError`` naming ``where``
    when it is not such a record."""
    defenses, attacks, seeds, only = (planned.get(k) if isinstance(planned, dict) else None
                                      for k in ("defenses", "attacks", "seeds", "only"))
    if not (isinstance(defenses, list) and all(isinstance(d, str) for d in defenses)
            and isinstance(attacks, dict)
            and all(isinstance(eps, list) and all(_is_number(e) for e in eps)
                    for eps in attacks.values())
            and isinstance(seeds, list)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and (only is None or isinstance(only, dict) and all(
                isinstance(on, list) and all(isinstance(d, str) for d in on)
                for on in only.values()))):
        raise UserError("not the planned defenses, attacks with their eps, and seeds",
                        where=f"{where}: planned")
    return cell_grid(defenses, attacks.items(), seeds, only)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def planned_cells(run: dict[str, Any], where: str) -> set[Cell]:
    """Every cell the run recorded in ``run`` planned: its ``planned`` record when it has one
    (``recorded_cells``: no plugin needed), else its suite's defense labels x attack labels x
    that attack's eps x the suite's seeds (a run.json written before ``planned`` was); a
    ``UserError`` naming ``where`` when the record is damaged, or the suite cannot be resolved
    here or resolves to other labels than the run recorded."""
    if "planned" in run:
        return recorded_cells(run["planned"], where)
    if "suite" not in run:
        raise UserError("no recorded suite", where=f"{where}: suite")
    suite = recorded_suite(run["suite"], f"{where}: suite")
    defenses, attacks = entry_labels(suite, f"{where}: suite")
    for key, labels in (("defenses", defenses), ("attacks", attacks)):
        recorded = run.get(key)
        if isinstance(recorded, dict) and set(recorded) != set(labels):
            raise UserError(f"its suite resolves to other {key} than the run recorded "
                            f"({', '.join(sorted(set(recorded) ^ set(labels))[:4])})",
                            where=f"{where}: {key}")
    # written before ``planned`` existed, so before ``defenses:`` and adaptive variants
    return cell_grid(defenses, [(a, entry.eps) for a, entry in
                                zip(attacks, suite.attacks, strict=True)], suite.seed_list)


def present_cells(results: pd.DataFrame) -> set[Cell]:
    """The cells a results table holds (seed 0 when it has no seed column)."""
    seeds = results["seed"] if "seed" in results else pd.Series(0, index=results.index)
    return {(str(d), str(a), canonical_eps(e), int(s)) for d, a, e, s in
            zip(results["defense"], results["attack"], results["eps"], seeds, strict=True)}


def cells_text(cells: Iterable[Cell], seeds: Iterable[int]) -> str:
    """Cells of one defense, compact: ``pgd@0.1,0.3``; a seed named only when not every planned
    seed of ``seeds`` lacks the cell (``fgsm@0.1 (seed 1)``); the first ``SHOWN_CELLS``
    groups, then how many more."""
    every = set(seeds)
    by_attack_eps: dict[tuple[str, float], set[int]] = {}
    for _, attack, eps, seed in sorted(cells, key=lambda c: (c[3], c[1], c[2])):
        by_attack_eps.setdefault((attack, eps), set()).add(seed)
    groups: dict[tuple[str, str], list[str]] = {}
    for (attack, eps), of_seeds in by_attack_eps.items():
        which = "" if of_seeds == every else \
            " (seed " + ", ".join(map(str, sorted(of_seeds))) + ")"
        groups.setdefault((attack, which), []).append(eps_text(eps))
    parts = [f"{attack}@{','.join(eps)}{which}" for (attack, which), eps in groups.items()]
    more = len(parts) - SHOWN_CELLS
    return "; ".join(parts[:SHOWN_CELLS]) + (f"; and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Completeness:
    """The planned cells of a run (None: unknown, with the ``reason``). ``ranked``: whether
    the defenses may be ranked when the plan is unknown: yes without run.json (a bare
    results.csv claims no plan), no when run.json records a plan that cannot be read here
    (its cells may well be missing)."""

    planned: frozenset[Cell] | None
    reason: str = ""
    ranked: bool = True

    @classmethod
    def of(cls, planned: Completeness | Iterable[Cell] | None) -> Completeness:
        """A ``Completeness`` from itself, planned cells, or None (unknown: no plan given)."""
        if isinstance(planned, Completeness):
            return planned
        if planned is None:
            return cls(None, "no run.json beside results.csv, so the planned cells are unknown")
        return cls(frozenset((str(d), str(a), canonical_eps(e), int(s))
                             for d, a, e, s in planned))

    @property
    def known(self) -> bool:
        return self.planned is not None

    def defenses(self) -> list[str]:
        """The planned defenses (sorted: the plan's cells are a set)."""
        return sorted({c[0] for c in self.planned or ()})

    def seeds(self) -> list[int]:
        return sorted({c[3] for c in self.planned or ()})

    def planned_of(self, defense: str) -> set[Cell]:
        return {c for c in self.planned or () if c[0] == defense}

    def missing(self, results: pd.DataFrame) -> dict[str, set[Cell]]:
        """Per planned defense with a planned cell absent from ``results``: those cells ({}
        when every defense is complete or the plan is unknown)."""
        if self.planned is None:
            return {}
        absent = self.planned - present_cells(results)
        out: dict[str, set[Cell]] = {}
        for cell in absent:
            out.setdefault(cell[0], set()).add(cell)
        return out

    def measured(self, results: pd.DataFrame) -> set[str]:
        """Planned defenses with at least one row."""
        return {str(d) for d in results["defense"]} & set(self.defenses())


def completeness_of(run: dict[str, Any] | None, where: str | Path) -> Completeness:
    """The planned cells of the run recorded in ``run`` (``read_run_record`` of the file
    ``where``), or unknown with the reason: no run.json (ranked all the same: there is no plan
    to miss cells of), or a plan that cannot be read or resolved here (nothing ranked)."""
    if run is None:
        return Completeness.of(None)
    try:
        return Completeness(frozenset(planned_cells(run, str(where))))
    except UserError as err:
        return Completeness(None, f"run.json's plan cannot be resolved here ({err})"[:300],
                            ranked=False)


__all__ = ["RUN_RECORD", "SHOWN_CELLS", "Completeness", "cells_text", "completeness_of",
           "planned_cells", "planned_record", "present_cells", "read_run_record",
           "recorded_cells"]
