"""The serial executor, the default and the reference: every task of ``robench.tasks`` in the
suite's order, in this process, each result reported to the recorder as it finishes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robench.data import Split
from robench.executors.base import Cell, Recorder, cells_to_compute
from robench.memory import peak_rss_text, release_freed_memory, trimming_freed_memory
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.rundata import RunData
from robench.tasks import (
    RunContext,
    Target,
    apply_defense,
    baseline_file,
    defense_file,
    inspect_model,
    run_attack_cells,
    seed_tag,
    train_baseline,
    transfer_sources,
)


class SerialExecutor:
    """Runs a plan's tasks one after another on the run's device."""

    def run_record(self) -> dict[str, Any]:
        return {}

    def execute(self, plan: Plan, data: RunData, ctx: RunContext,
                recorder: Recorder) -> set[Cell]:
        train_split, validation, test_split = (s.to(ctx.device) for s in data.splits)
        with trimming_freed_memory():  # transients of training and cells, not left resident
            return self.run_seeds(plan, (train_split, validation, test_split), ctx, recorder)

    def run_seeds(self, plan: Plan, splits: tuple[Split, Split, Split], ctx: RunContext,
                  recorder: Recorder) -> set[Cell]:
        """Every seed's baseline, defenses and cells, in the suite's order."""
        train_split, _, test_split = splits
        planned: set[Cell] = set()
        for seed in plan.seeds:
            seeded = plan.for_seed(seed)
            baseline = self.baseline(seeded.baseline, train_split, ctx, recorder)
            # the defenses transfer attacks craft on, defended first (``serial_order``); reused
            # below (no defense is applied twice) and kept in memory for the whole seed
            sources = {d.label: self.defend(seed, d, baseline, splits, ctx, recorder)
                       for d in transfer_sources(seeded)}
            for defense in seeded.defenses:
                model, seconds = sources.get(defense.label) or self.defend(
                    seed, defense, baseline, splits, ctx, recorder)
                facts = inspect_model(model, test_split, seed == plan.seeds[0],
                                      ctx.num_classes, defense.label)
                recorder.on_defended(seed, defense, facts)
                target = Target(seed, defense, facts.model_hash, seconds)
                for attack in seeded.attacks_on(defense.label):
                    source = sources[attack.source][0] if attack.source is not None else None
                    self.attack(target, attack, model, source, test_split, ctx, recorder)
                    planned.update((defense.label, attack.label, eps, seed)
                                   for eps in attack.eps)
                del model
                release_freed_memory()  # the allocator keeps what a defense freed otherwise
                ctx.reporter.info(f"[{defense.label}]{seed_tag(plan.seeds, seed)} done "
                                  f"({peak_rss_text()})")
        return planned

    def baseline(self, spec: BaselineSpec, train_split: Split, ctx: RunContext,
                 recorder: Recorder) -> nn.Module:
        model, cached = train_baseline(spec, train_split, ctx)
        release_freed_memory()  # what training freed, before the cells add theirs on top
        recorder.on_baseline(spec, len(train_split), cached)
        recorder.on_model(baseline_file(spec, model, ctx))
        return model

    def defend(self, seed: int, spec: DefenseSpec, baseline: nn.Module,
               splits: tuple[Split, Split, Split], ctx: RunContext,
               recorder: Recorder) -> tuple[nn.Module, float]:
        train_split, validation, _ = splits
        done = apply_defense(spec, baseline, train_split, validation, ctx)
        release_freed_memory()  # what training freed, before the cells add theirs on top
        recorder.on_defense(seed, spec, len(train_split), len(validation), done.cached,
                            done.metrics)
        recorder.on_model(defense_file(spec, done, ctx))
        return done.model, done.seconds

    def attack(self, target: Target, attack: AttackSpec, model: nn.Module,
               source: nn.Module | None, test_split: Split, ctx: RunContext,
               recorder: Recorder) -> None:
        """The cells of ``attack`` on ``target`` that the recorder does not have yet."""
        data, image_ids, missing = cells_to_compute(recorder, target, attack, test_split)
        if not missing:
            return
        outcomes = run_attack_cells(attack, model, source, missing, data, ctx.reporter,
                                    desc=f"{target.defense.label} / {attack.label}",
                                    num_classes=ctx.num_classes, defense=target.defense)
        recorder.on_cell_done(target, attack, image_ids, outcomes)


__all__ = ["SerialExecutor"]
