"""What an executor is: it runs a plan's tasks (``robench.tasks``) and reports each finished
one to a recorder, which records it (``robench.recorder.RunRecorder``). Two protocols, so that
neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from robench.data import Split
from robench.evaluation import AttackOutcome
from robench.outcomes import Cell
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.rundata import RunData
from robench.shipped import ModelFile
from robench.tasks import ModelFacts, RunContext, Target


class Recorder(Protocol):
    """What an executor reports to, and asks which cells to compute."""

    def on_baseline(self, spec: BaselineSpec, n_train: int, cached: bool) -> None: ...

    def on_defense(self, seed: int, spec: DefenseSpec, n_train: int, n_validation: int,
                   cached: bool, metrics: list[dict[str, Any]]) -> None: ...

    def on_defended(self, seed: int, spec: DefenseSpec, facts: ModelFacts) -> None: ...

    def on_model(self, file: ModelFile | None) -> None: ...

    def missing_cells(self, target: Target, attack: AttackSpec,
                      image_ids: list[int]) -> list[float]: ...

    def on_cell_done(self, target: Target, attack: AttackSpec, image_ids: list[int],
                     outcomes: Sequence[AttackOutcome]) -> None: ...


def cells_to_compute(recorder: Recorder, target: Target, attack: AttackSpec,
                     test_split: Split) -> tuple[Split, list[int], list[float]]:
    """The images ``attack`` runs on (the first ``limit`` of the evaluation split), their ids,
    and the eps of its cells on ``target`` that the recorder does not have yet."""
    data = test_split.head(attack.limit)
    image_ids = data.ids.tolist()
    return data, image_ids, recorder.missing_cells(target, attack, image_ids)


class Executor(Protocol):
    """Runs a resolved plan's tasks on ``data`` with ``ctx``, reporting to ``recorder``;
    returns the plan's cells."""

    def execute(self, plan: Plan, data: RunData, ctx: RunContext,
                recorder: Recorder) -> set[Cell]: ...

    def run_record(self) -> dict[str, Any]:
        """What run.json says about the executor (nothing for the serial one)."""
        ...


__all__ = ["Cell", "Executor", "Recorder", "cells_to_compute"]
