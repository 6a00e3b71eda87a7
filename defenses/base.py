"""The defense plugin interface.

A defense receives the trained baseline and returns a defended model. It subclasses
``Defense``, declares a pydantic ``Params`` model (unknown keys and wrong types are rejected
when the suite is loaded, before any work starts) and implements ``apply(ctx)``. Everything a
defense may need arrives in the ``DefenseContext``: a private copy of the baseline model, the
training data, its params, the seed, the device, the suite's training settings, a factory for
registered attacks, a reporter for progress, and ``log_metric`` for per-round/epoch numbers
(written to ``defense_metrics.csv``). The harness then attacks whatever model ``apply``
returns: attacks are white-box and adaptive, they always see the final defended model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from robench.attacks import Attack, create_attack
from robench.data import Split
from robench.progress import Reporter
from robench.registry import Registry
from robench.training import TrainConfig
from robench.work import Work


class DefenseParams(BaseModel):
    """Base for every defense's parameter schema."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


@dataclass
class DefenseContext:
    model: nn.Module            # a private copy of the trained baseline; change it freely
    train: Split                # training split, on ``device``
    # held out of the training split (data.validation_size): for monitors and tuning only;
    # defenses never see the test split
    validation: Split
    params: Any                 # the defense's validated Params instance
    seed: int
    device: torch.device
    train_config: TrainConfig   # the suite's baseline training settings (defaults for defenses)
    num_classes: int = 10       # classes of the dataset (the model's output size)
    reporter: Reporter = field(default_factory=lambda: Reporter(quiet=True))
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def make_attack(self, name: str, model: nn.Module | None = None,
                    params: dict[str, Any] | None = None, seed: int | None = None) -> Attack:
        """A registered attack against ``model`` (default: the context's model)."""
        return create_attack(name, model if model is not None else self.model, params,
                             seed=self.seed if seed is None else seed)

    def log_metric(self, step: int, metric: str, value: float, **extra: Any) -> None:
        """Record one tidy row (step, metric, value, extra columns) for defense_metrics.csv."""
        self.metrics.append({"step": step, "metric": metric, "value": float(value), **extra})


@dataclass
class DefenseResult:
    model: nn.Module
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Defense:
    """Base of every defense plugin."""

    Params: ClassVar[type[DefenseParams]] = DefenseParams
    #: False when the defended model is cheap to rebuild or not a LeNet-shaped state dict
    cacheable: ClassVar[bool] = True
    #: True when ``check_model`` has something to check (the plan then builds the model)
    checks_model: ClassVar[bool] = False
    #: True when the defended model declares a differentiable surrogate of its
    #: non-differentiable part: its module has a ``surrogate()`` method returning a
    #: differentiable module that shares its weights (``robench.attacks.bpda``); the plan
    #: then escalates to BPDA for it (``adaptive: auto``, docs/adaptive.md)
    has_surrogate: ClassVar[bool] = False
    #: True when the defended model's forward pass draws randomness (two passes of the same
    #: images may differ): attacks on it need EOT (``eot_samples``), and its predictions are
    #: evaluated by a vote over ``eval_samples`` passes (``robench.evaluation``)
    randomized: ClassVar[bool] = False

    def __init__(self, params: DefenseParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def code_dependencies(cls, params: Any) -> list[object]:
        """Plugins this defense looks up by name at run time (e.g. ``ctx.make_attack("fgsm")``)
        whose code therefore shapes the defended model: their source joins the cache key."""
        return []

    @classmethod
    def cost(cls, params: Any, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        """Image passes of ``apply``, for time estimates (``robench plan``; an upper bound where
        the work varies). Default: the suite's own training, ``epochs`` x the training images.
        A defense that costs nothing (``Work()``) is also rebuilt by ``robench plan`` to check
        which of its cells are done."""
        return Work(train=train_config.epochs * n_train)

    @classmethod
    def check_model(cls, model: nn.Module, model_name: str, params: Any) -> None:
        """Raise a one-line ``UserError`` when this defense cannot work on the suite's model;
        called by the plan before any work when ``checks_model`` is True."""

    @classmethod
    def noise_sigma(cls, params: Any) -> float | None:
        """The standard deviation of the Gaussian input noise whose vote this defense's
        prediction is (randomized smoothing, read by the ``smoothing`` verifier), or None."""
        return None

    @classmethod
    def wrap(cls, model: nn.Module, params: Any) -> nn.Module:
        """The defended model around trained weights: the model cache and the shipped files
        hold weights only, so a model loaded from them is wrapped again here (``apply``
        returns the wrapped model). Default: the weights are the model."""
        return model

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        raise NotImplementedError


DEFENSES: Registry[type[Defense]] = Registry("defense", entry_point_group="robench.defenses",
                                             base=Defense)
