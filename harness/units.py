"""The units of work of a run: train the baseline, apply a defense, inspect a defended model,
attack a cell. Every executor calls these same functions (``robench.runner`` in order, the Ray
executor of ``robench.executors`` as tasks), so the two cannot drift apart; none of them writes
a results file: the runner alone records what they return.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robench.cache import ModelCache, data_key, provenance_text
from robench.data import Split
from robench.defenses import DefenseContext
from robench.diagnostics import model_diagnostics
from robench.evaluation import AttackOutcome, evaluate_attack
from robench.models import model_hash as fingerprint
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec
from robench.progress import Reporter
from robench.training import TrainConfig, accuracy, train


@dataclass
class Defended:
    """A defended model, what it cost and what its defense logged."""

    model: nn.Module
    seconds: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False     # loaded from the model cache, not computed now


@dataclass(frozen=True)
class ModelFacts:
    """What the runner logs and stores about a defended model before attacking it."""

    model_hash: str
    clean_acc: float
    diagnostics: dict[str, float] | None


def warn(reporter: Reporter, problem: str | None) -> None:
    if problem:
        reporter.info(f"warning: {problem}")


def train_baseline(spec: BaselineSpec, num_classes: int, train_split: Split,
                   device: torch.device, cache: ModelCache, data_hash: str,
                   reporter: Reporter) -> tuple[nn.Module, bool]:
    """The baseline of ``spec``: its checkpoint, the cached weights, or trained now (and cached);
    and whether nothing was trained. Seeds torch's global generator first, so the initial
    weights depend on the seed only."""
    torch.manual_seed(spec.seed)
    model = spec.build(num_classes).to(device)
    if spec.weights is not None:  # model.weights: a user's checkpoint, not trained or cached
        reporter.info(f"baseline {spec.model}: weights {spec.weights.path} "
                      f"(sha256 {spec.weights.sha256[:12]})")
        return model.eval(), True
    key = data_key(spec.cache_key, data_hash)
    meta = cache.load(key, model)
    if meta is not None:
        reporter.info(f"baseline {spec.model}: loaded from cache ({key[:10]}; "
                      f"{provenance_text(meta)})")
        return model.to(device).eval(), True
    t0 = time.perf_counter()
    train(model, train_split, spec.train, seed=spec.seed, reporter=reporter,
          desc=f"train {spec.model}")
    seconds = time.perf_counter() - t0
    reporter.info(f"baseline {spec.model}: trained {spec.train.epochs} epochs in {seconds:.1f}s")
    warn(reporter, cache.save(key, model, {"seconds": seconds}))
    return model.eval(), False


def apply_defense(spec: DefenseSpec, baseline: nn.Module, train_split: Split,
                  validation: Split, num_classes: int, device: torch.device,
                  train_config: TrainConfig, cache: ModelCache, data_hash: str,
                  reporter: Reporter) -> Defended:
    """The defended model of ``spec`` (from the cache when it is cacheable and stored there);
    the baseline itself is never changed (the defense gets a private copy)."""
    model = copy.deepcopy(baseline)
    key = data_key(spec.cache_key, data_hash)
    meta = cache.load(key, model) if spec.plugin.cacheable else None
    if meta is not None:
        reporter.info(f"[{spec.label}] defended model loaded from cache ({key[:10]}; "
                      f"{provenance_text(meta)})")
        return Defended(model.to(device).eval(), float(meta["seconds"]),
                        list(meta.get("metrics", [])), cached=True)
    ctx = DefenseContext(model=model, train=train_split, validation=validation,
                         params=spec.params, seed=spec.seed, device=device,
                         train_config=train_config, reporter=reporter, num_classes=num_classes)
    t0 = time.perf_counter()
    result = spec.build().apply(ctx)
    seconds = time.perf_counter() - t0
    defended = result.model.to(device).eval()
    for p in defended.parameters():
        p.grad = None
    reporter.info(f"[{spec.label}] defense {spec.name} took {seconds:.1f}s")
    if spec.plugin.cacheable:
        warn(reporter, cache.save(key, defended, {"seconds": seconds, "metrics": result.metrics}))
    return Defended(defended, seconds, list(result.metrics))


def inspect_model(model: nn.Module, test_split: Split, diagnostics: bool) -> ModelFacts:
    """Fingerprint, clean accuracy and (when asked: the first seed's models) the gradient
    diagnostics of a defended model."""
    return ModelFacts(model_hash=fingerprint(model), clean_acc=accuracy(model, test_split),
                      diagnostics=model_diagnostics(model, test_split) if diagnostics else None)


def attack_images(spec: AttackSpec, model: nn.Module, source: nn.Module | None,
                  eps: Sequence[float], data: Split, reporter: Reporter,
                  desc: str) -> list[AttackOutcome]:
    """The outcomes of attack ``spec`` on ``data`` at each eps (in order); ``source`` is the
    model a transfer attack crafts on (``AttackSpec.source``), None for every other attack."""
    attack = spec.build(model)
    if spec.source is not None:
        if source is None:
            raise ValueError(f"attack {spec.label!r} crafts on {spec.source!r}: give its model")
        attack.set_source(source)
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


__all__ = ["Defended", "ModelFacts", "apply_defense", "attack_images", "inspect_model",
           "merge_outcomes", "train_baseline"]
