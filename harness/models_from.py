"""``robench run SUITE --models-from RESULTS`` (and ``robench plan``): the models of a run
loaded from another results folder's shipped files (``robench.shipped``) instead of trained.

The baseline of each seed is the shipped baseline of that seed; each cacheable defense is the
shipped defended model of the same seed and label (whose defense name and params must be the
suite's: the rows record them). Non-cacheable defenses are applied again to the loaded
baseline, as in any run. Everything is checked before anything is written, in one line each:
a folder without shipped models, models of another dataset, architecture or number of
classes, a seed or label the folder lacks (named), a file whose weights do not hash to its
metadata. The files' bytes are kept in memory, so the folder may be the run's own ``--out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robench.errors import UserError
from robench.outdir import RunFiles
from robench.plan import Plan
from robench.shipped import ShippedModel, load_shipped, shipped_models

#: messages only: which files are loaded is checked by the rows' model hashes
AFFECTS_RESULTS = False

WHERE = "--models-from"


@dataclass(frozen=True)
class ModelSource:
    """The shipped models a run loads, by (seed, label); ``baseline`` is the baseline's
    label."""

    folder: Path
    models: dict[tuple[int, str], ShippedModel]

    def baseline(self, seed: int) -> ShippedModel:
        return self.models[(seed, "baseline")]

    def defense(self, seed: int, label: str) -> ShippedModel:
        return self.models[(seed, label)]

    def describe(self, entry: ShippedModel) -> str:
        """How the log names a model loaded from here."""
        return f"loaded from {entry.path} (weights {entry.weights_hash})"


def open_source(path: str | Path, plan: Plan, num_classes: int) -> ModelSource:
    """The shipped models of the results folder ``path`` that a run of ``plan`` loads, each
    loaded once to check its weights; one-line ``UserError`` otherwise (see the module)."""
    folder = Path(path)
    if not folder.is_dir():
        what = "not found" if not folder.exists() else "not a folder"
        raise UserError(f"{folder}: {what}; give a results folder that ships its models",
                        where=WHERE)
    files = RunFiles.of(folder)
    found = shipped_models(files)
    if not found:
        raise UserError(f"{folder} holds no shipped models (model-<hash>.safetensors): run "
                        "the suite into it with this robench version first", where=WHERE)
    base = plan.baseline
    wanted = (base.dataset, base.model, num_classes)
    for entry in found:
        if (entry.dataset, entry.model, entry.num_classes) != wanted:
            raise UserError(f"{entry.path} is a model of dataset {entry.dataset}, "
                            f"architecture {entry.model}, {entry.num_classes} classes; this "
                            f"suite has {base.dataset}, {base.model}, {num_classes} classes",
                            where=WHERE)
    by_key: dict[tuple[int, str], ShippedModel] = {}
    for entry in (served for file in found for served in file.served()):
        key = (entry.seed, "baseline" if entry.role == "baseline" else entry.label)
        other = by_key.get(key)
        if other is not None and other.model_hash != entry.model_hash:
            raise UserError(f"{folder} ships two models for seed {entry.seed}, "
                            f"{key[1]!r}: {other.name} and {entry.name}", where=WHERE)
        by_key[key] = entry
    needed: dict[tuple[int, str], ShippedModel] = {}
    for seed in plan.seeds:
        needed[(seed, "baseline")] = _find(by_key, folder, seed, "baseline", "the baseline")
        for spec in plan.for_seed(seed).defenses:
            if not spec.plugin.cacheable:
                continue  # applied again to the loaded baseline
            entry = _find(by_key, folder, seed, spec.label, f"defense {spec.label!r}")
            if entry.role != "defense" or entry.defense != spec.name:
                raise UserError(f"{entry.path}: {spec.label!r} of seed {seed} is "
                                f"{entry.defense or 'the baseline'}, the suite's is "
                                f"{spec.name}", where=WHERE)
            if entry.defense_params != spec.params_json:
                raise UserError(f"{entry.path}: defense {spec.label!r} of seed {seed} was "
                                f"computed with params {entry.defense_params}, the suite's "
                                f"are {spec.params_json}", where=WHERE)
            needed[(seed, spec.label)] = entry
    for entry in {e.name: e for e in needed.values()}.values():
        with torch.random.fork_rng(devices=[]):  # building draws initial weights
            skeleton = base.build(num_classes)
        load_shipped(entry, skeleton)
    return ModelSource(folder, needed)


def _find(by_key: dict[tuple[int, str], ShippedModel], folder: Path, seed: int, label: str,
          what: str) -> ShippedModel:
    entry = by_key.get((seed, label))
    if entry is None:
        has = sorted({f"{lab} (seed {s})" for s, lab in by_key})
        raise UserError(f"{folder} ships no model for {what} of seed {seed} (it has: "
                        f"{', '.join(has)})", where=WHERE)
    return entry


__all__ = ["ModelSource", "open_source"]
