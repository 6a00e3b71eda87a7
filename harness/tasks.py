"""The tasks of a run: train the baseline, apply a defense, inspect a defended model, attack the
cells of one (defense, attack) at some eps. Both executors (``robench.executors``: the serial
one in order, the Ray one as Ray tasks) call these same functions, so they cannot drift apart;
none of them writes a results file: the recorder (``robench.recorder``) alone records what they
return.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robench.attacks.bpda import BPDA, surrogate_of
from robench.cache import ModelCache, provenance_text
from robench.data import Split
from robench.defenses import DefenseContext
from robench.diagnostics import model_diagnostics
from robench.engine import Engine, engine_for
from robench.errors import UserError
from robench.evaluation import AttackOutcome, evaluate_attack
from robench.models import model_hash as fingerprint
from robench.output_guard import guarded
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.progress import Reporter
from robench.shipped import ModelFile, load_shipped, model_file
from robench.training import TrainConfig, accuracy, train

if TYPE_CHECKING:
    from robench.models_from import ModelSource


@dataclass(frozen=True)
class RunContext:
    """What every task of one run shares: where it computes, the model cache, the dataset's
    fingerprint (part of every cache key and row), the number of classes, the suite's training
    settings and where log lines go. The splits are not in it: each executor moves them to its
    device (the Ray executor through the object store) and passes them to the tasks."""

    device: torch.device
    cache: ModelCache
    data_hash: str
    num_classes: int
    train_config: TrainConfig
    reporter: Reporter
    #: what the shipped model files name (``robench.shipped``): the dataset and architecture
    dataset: str = ""
    model_name: str = ""
    #: ``--models-from``: the baseline and cacheable defended models loaded from there
    models_from: ModelSource | None = None
    #: how the models compute (``robench.engine``); None: the device's default engine
    engine: Engine | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on the run's device, prepared by the run's engine (in place; returned)."""
        return (self.engine or engine_for(self.device)).prepare_model(model.to(self.device))


@dataclass
class Defended:
    """A defended model, what it cost and what its defense logged."""

    model: nn.Module
    seconds: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False     # loaded from the model cache, not computed now


@dataclass(frozen=True)
class ModelFacts:
    """What the recorder logs and stores about a defended model before attacking it."""

    model_hash: str
    clean_acc: float
    diagnostics: dict[str, float] | None


@dataclass(frozen=True)
class Target:
    """A defended model of one seed, as the rows of the cells attacked on it name it."""

    seed: int
    defense: DefenseSpec
    model_hash: str
    defense_seconds: float


def seed_tag(seeds: Sequence[int], seed: int) -> str:
    """" seed N" in the log lines of a run with several seeds, "" otherwise."""
    return f" seed {seed}" if len(seeds) > 1 else ""


def transfer_sources(plan: Plan) -> list[DefenseSpec]:
    """The defenses that transfer attacks craft on (``AttackSpec.source``), in the suite's
    order: a serial run defends them first, so a source listed after its targets is ready."""
    wanted = {a.source for a in plan.attacks if a.source is not None}
    return [d for d in plan.defenses if d.label in wanted]


def serial_order(plan: Plan) -> list[DefenseSpec]:
    """The order a serial run defends in: the sources of transfer attacks first
    (``transfer_sources``), then the others, each in the suite's order."""
    first = transfer_sources(plan)
    labels = {d.label for d in first}
    return first + [d for d in plan.defenses if d.label not in labels]


def warn(reporter: Reporter, problem: str | None) -> None:
    if problem:
        reporter.info(f"warning: {problem}")


def train_baseline(spec: BaselineSpec, train_split: Split,
                   ctx: RunContext) -> tuple[nn.Module, bool]:
    """The baseline of ``spec``: its checkpoint, the cached weights, or trained now (and cached);
    and whether nothing was trained. Seeds torch's global generator first, so the initial
    weights depend on the seed only."""
    reporter = ctx.reporter
    torch.manual_seed(spec.seed)
    model = ctx.prepare(spec.build(ctx.num_classes))
    if ctx.models_from is not None:
        entry = ctx.models_from.baseline(spec.seed)
        load_shipped(entry, model)
        reporter.info(f"baseline {spec.model}: {ctx.models_from.describe(entry)}")
        return model.to(ctx.device).eval(), True
    if spec.weights is not None:  # model.weights: a user's checkpoint, not trained or cached
        reporter.info(f"baseline {spec.model}: weights {spec.weights.path} "
                      f"(sha256 {spec.weights.sha256[:12]})")
        return model.eval(), True
    key = spec.key.with_data(ctx.data_hash)
    meta = ctx.cache.load(key, model, on_reject=reporter.info)
    if meta is not None:
        reporter.info(f"baseline {spec.model}: loaded from cache ({key.hex[:10]}; "
                      f"{provenance_text(meta)})")
        return model.to(ctx.device).eval(), True
    t0 = time.perf_counter()
    with guarded([model], ctx.num_classes, f"while training {spec.model!r}",
                 f"{spec.source}: model.name"):
        train(model, train_split, spec.train, seed=spec.seed, reporter=reporter,
              desc=f"train {spec.model}")
    seconds = time.perf_counter() - t0
    reporter.info(f"baseline {spec.model}: trained {spec.train.epochs} epochs in {seconds:.1f}s")
    warn(reporter, ctx.cache.save(key, model, {"seconds": seconds}))
    return model.eval(), False


def recorded_metrics(logged: list[dict[str, Any]],
                     returned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metric rows recorded for a defense: those its result returns, exactly as returned;
    when it returns none, those it logged with ``ctx.log_metric``. So a plugin need not pass
    ``metrics=ctx.metrics`` (every built-in does: the same rows either way), and one that
    returns rows of its own (a summary, tagged or filtered copies) decides them itself; rows are
    never merged, so none is doubled or dropped by comparing them."""
    return list(returned) if returned else list(logged)


def apply_defense(spec: DefenseSpec, baseline: nn.Module, train_split: Split,
                  validation: Split, ctx: RunContext) -> Defended:
    """The defended model of ``spec`` (from the cache when it is cacheable and stored there);
    the baseline itself is never changed (the defense gets a private copy)."""
    reporter = ctx.reporter
    fresh = copy.deepcopy(baseline)
    # a defense that wraps its weights (``Defense.wrap``) is loaded into its wrapper, whose
    # state dict is that of the weights
    model = spec.plugin.wrap(fresh, spec.params)
    if spec.plugin.cacheable and ctx.models_from is not None:
        entry = ctx.models_from.defense(spec.seed, spec.label)
        load_shipped(entry, model)
        reporter.info(f"[{spec.label}] defended model {ctx.models_from.describe(entry)}")
        return Defended(model.to(ctx.device).eval(), entry.seconds, entry.metrics, cached=True)
    key = spec.key.with_data(ctx.data_hash)
    meta = (ctx.cache.load(key, model, on_reject=reporter.info) if spec.plugin.cacheable
            else None)
    if meta is not None:
        reporter.info(f"[{spec.label}] defended model loaded from cache ({key.hex[:10]}; "
                      f"{provenance_text(meta)})")
        return Defended(model.to(ctx.device).eval(), float(meta["seconds"]),
                        list(meta.get("metrics", [])), cached=True)
    defense_ctx = DefenseContext(model=fresh, train=train_split, validation=validation,
                                 params=spec.params, seed=spec.seed, device=ctx.device,
                                 train_config=ctx.train_config, reporter=reporter,
                                 num_classes=ctx.num_classes)
    t0 = time.perf_counter()
    result = spec.build().apply(defense_ctx)
    seconds = time.perf_counter() - t0
    metrics = recorded_metrics(defense_ctx.metrics, result.metrics)
    defended = ctx.prepare(result.model).eval()
    for p in defended.parameters():
        p.grad = None
    reporter.info(f"[{spec.label}] defense {spec.name} took {seconds:.1f}s")
    if spec.plugin.cacheable:
        warn(reporter, ctx.cache.save(key, defended, {"seconds": seconds, "metrics": metrics}))
    return Defended(defended, seconds, metrics)


def baseline_file(spec: BaselineSpec, model: nn.Module, ctx: RunContext) -> ModelFile:
    """The shipped file of a seed's baseline (``robench.shipped``)."""
    return model_file(model, dataset=spec.dataset, model_name=spec.model,
                      num_classes=ctx.num_classes, seed=spec.seed, role="baseline",
                      label="baseline", data_hash=ctx.data_hash, cache_key=spec.cache_key)


def defense_file(spec: DefenseSpec, done: Defended, ctx: RunContext) -> ModelFile | None:
    """The shipped file of a defended model; None for a defense that is not cacheable (a
    cheap function of the baseline, applied again to the shipped baseline)."""
    if not spec.plugin.cacheable:
        return None
    return model_file(done.model, dataset=ctx.dataset, model_name=ctx.model_name,
                      num_classes=ctx.num_classes, seed=spec.seed, role="defense",
                      label=spec.label, defense=spec.name, defense_params=spec.params_json,
                      data_hash=ctx.data_hash, cache_key=spec.cache_key, seconds=done.seconds,
                      metrics=done.metrics)


def inspect_model(model: nn.Module, test_split: Split, diagnostics: bool,
                  num_classes: int | None = None, label: str = "") -> ModelFacts:
    """Fingerprint, clean accuracy and (when asked: the first seed's models) the gradient
    diagnostics of a defended model (its outputs checked when ``num_classes`` is given:
    ``robench.output_guard``; ``label``: the defense's, for that message)."""
    with guarded([model], num_classes, "measuring its clean accuracy", f"[{label}]"):
        return ModelFacts(model_hash=fingerprint(model), clean_acc=accuracy(model, test_split),
                          diagnostics=(model_diagnostics(model, test_split) if diagnostics
                                       else None))


def check_surrogate(spec: AttackSpec, defense: DefenseSpec | None, model: nn.Module) -> None:
    """A ``UserError`` naming the defense when it declares a differentiable surrogate
    (``has_surrogate``) but its defended ``model`` offers none to ``spec``, an attack that
    follows one (``bpda``): BPDA would otherwise run as plain PGD under its BPDA label."""
    if defense is None or not defense.has_surrogate or not issubclass(spec.plugin, BPDA):
        return
    if surrogate_of(model) is None:
        raise UserError(f"defense {defense.name!r} declares a differentiable surrogate "
                        f"(has_surrogate) but its defended model ({type(model).__name__}) has "
                        f"no surrogate() method, so {spec.label} would silently be plain PGD; "
                        "give the model a surrogate() or drop has_surrogate (docs/adaptive.md)",
                        where=f"{defense.label} / {spec.label}")


def run_attack_cells(spec: AttackSpec, model: nn.Module, source: nn.Module | None,
                     eps: Sequence[float], data: Split, reporter: Reporter,
                     desc: str, num_classes: int | None = None,
                     defense: DefenseSpec | None = None) -> list[AttackOutcome]:
    """The outcomes of attack ``spec`` on ``data`` at each eps (in order): one cell per eps.
    ``source`` is the model a transfer attack crafts on (``AttackSpec.source``), None for every
    other attack. Given ``num_classes``, every output of both models is checked
    (``robench.output_guard``), except under a verifier, which may trace the model. Given the
    ``defense`` that produced ``model``, what it declares is checked (``check_surrogate``)."""
    check_surrogate(spec, defense, model)
    attack = spec.build(model)
    if spec.source is not None:
        if source is None:
            raise ValueError(f"attack {spec.label!r} crafts on {spec.source!r}: give its model")
        attack.set_source(source)
    check = None if spec.plugin.family == "verifier" else num_classes
    with guarded([model, source], check, f"under attack {spec.label!r}", desc):
        return evaluate_attack(model, attack, list(eps), data, reporter=reporter, desc=desc)


def merge_outcomes(parts: Sequence[Sequence[AttackOutcome]]) -> list[AttackOutcome]:
    """One outcome per eps from the outcomes of consecutive image chunks at the same eps list:
    per-image results concatenated in chunk order, seconds added up."""
    merged = []
    for per_eps in zip(*parts, strict=True):
        eps = {o.eps for o in per_eps}
        if len(eps) != 1:
            raise ValueError(f"chunks of one cell at different eps: {sorted(eps)}")
        merged.append(AttackOutcome(per_eps[0].eps,
                                    torch.cat([o.clean_ok for o in per_eps]),
                                    torch.cat([o.adv_ok for o in per_eps]),
                                    sum(o.seconds for o in per_eps)))
    return merged


__all__ = ["Defended", "ModelFacts", "RunContext", "Target", "apply_defense", "baseline_file",
           "check_surrogate",
           "defense_file", "inspect_model",
           "recorded_metrics", "merge_outcomes", "run_attack_cells", "seed_tag", "serial_order",
           "train_baseline", "transfer_sources"]
