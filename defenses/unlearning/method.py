"""The unlearning-method plugin interface, its registry, and the loop the methods share.

An unlearning method receives a model, a **retain set** (data whose behaviour must be kept) and a
**forget set** (inputs with the labels the model must stop giving them) and changes the model in
place. The base class ``UnlearningMethod`` owns the surroundings: the seeded shuffles (one
generator per set, so drawing forget batches never changes the retain order), cycling a small
set alongside a large one, optimizer creation (defaults from the suite's ``train:`` section),
train mode during updates and eval mode afterwards, and clean parameter gradients at the end.
A method subclasses it, declares a strict pydantic ``Params`` schema and writes only its math:

- ``loss(model, batch, pass_name, epoch)``: the objective of one minibatch, where ``batch`` maps
  a set name (``"retain"``, ``"forget"``) to ``(x, y)``;
- optionally ``passes(epoch)`` (which sets one epoch sweeps, and in what order; a sweep that
  needs an empty set is skipped), ``setup`` (a frozen teacher, a saliency mask),
  ``epoch_data`` (relabelled sets), ``stop`` (early stopping), ``before_step`` /
  ``after_step`` (gradient masks), ``batch_size_of`` (a set's own batch size), ``lr_scale``
  (a per-epoch learning-rate schedule), or a whole ``unlearn`` for methods without gradient
  training (SSD).

Third-party methods register with ``@UNLEARNING_METHODS.register("name")`` or through the
``robench.unlearning_methods`` entry-point group; the ``unlearning`` defense looks them up by
name and validates ``method_params`` with the method's own ``Params``.

In the FGSM setting of the ``unlearning`` defense the forget set holds adversarial examples the
model misclassifies, labelled with the wrong class the model gives them (``forget.labels``);
``forget_true_labels`` holds the clean labels of those inputs, which a method may use only to
*avoid* them (random relabelling never draws the true class, so it does not quietly turn into
adversarial training).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from robench.data import Split
from robench.registry import Registry
from robench.seeds import generator
from robench.training import TrainConfig, make_optimizer
from robench.work import Work

Batch = dict[str, tuple[torch.Tensor, torch.Tensor]]


class UnlearningParams(BaseModel):
    """Base of every method's parameter schema: unknown keys and wrong types are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class LoopParams(UnlearningParams):
    """Settings of the shared gradient loop; ``None`` takes the suite's ``train:`` value."""

    epochs: int = Field(1, ge=0)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    optimizer: Literal["adam", "sgd"] | None = None


@dataclass(frozen=True)
class UnlearningData:
    """What one unlearning call sees."""

    retain: Split                                  # keep this behaviour
    forget: Split                                  # inputs + the labels to unlearn
    forget_true_labels: torch.Tensor | None = None  # clean labels of the forget inputs, if known
    num_classes: int = 10
    train: Split | None = None  # the whole training split the sets were drawn from (SSD's D)

    def split(self, name: str) -> Split:
        if name == "retain":
            return self.retain
        if name == "forget":
            return self.forget
        raise KeyError(name)


@dataclass(frozen=True)
class Pass:
    """One sweep of an epoch: every minibatch of ``drive`` once (shuffled), with a minibatch of
    each set in ``cycle`` drawn alongside (reshuffled whenever it runs out)."""

    name: str
    drive: str
    cycle: tuple[str, ...] = ()


def _shuffled(split: Split, batch_size: int, generator: torch.Generator
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(split), generator=generator).to(split.labels.device)
    for start in range(0, len(split), batch_size):
        index = order[start:start + batch_size]
        yield split.images[index], split.labels[index]


def _cycled(split: Split, batch_size: int, generator: torch.Generator
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from _shuffled(split, batch_size, generator)


def random_other_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator,
                        also_exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform random labels that differ from ``labels`` (and from ``also_exclude``) per row."""
    allowed = torch.ones(labels.shape[0], num_classes, dtype=torch.bool)
    rows = torch.arange(labels.shape[0])
    allowed[rows, labels.cpu()] = False
    if also_exclude is not None:
        allowed[rows, also_exclude.cpu()] = False
    if not bool(allowed.any(1).all()):
        raise ValueError("no class left to draw a random label from")
    drawn = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
    return drawn.to(labels.device)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, times T² (Hinton et al. 2015), batch mean."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


class UnlearningMethod:
    """Base of every unlearning method (a gradient loop over retain/forget minibatches).

    Args:
        params: an instance of the subclass's ``Params`` (validated by the suite schema).
    """

    Params: type[UnlearningParams] = LoopParams
    #: the sweeps of one epoch; subclasses override this or ``passes``
    default_passes: tuple[Pass, ...] = (Pass("retain", "retain"),)

    def __init__(self, params: UnlearningParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.steps = 0  # optimizer steps taken by the last ``unlearn`` call

    # -- what a plugin writes -------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def passes(self, epoch: int) -> tuple[Pass, ...]:
        return self.default_passes

    def setup(self, model: nn.Module, data: UnlearningData) -> None:
        """Called once before the first update (the model is unchanged here)."""

    def epoch_data(self, data: UnlearningData, epoch: int) -> UnlearningData:
        """The sets one epoch sweeps (e.g. the forget set with freshly drawn random labels)."""
        return data

    def stop(self, model: nn.Module, data: UnlearningData, epoch: int) -> bool:
        """Checked before each epoch; True ends the loop early."""
        return False

    def before_step(self, model: nn.Module) -> None:
        """After ``backward``, before ``optimizer.step`` (e.g. mask gradients)."""

    def after_step(self, model: nn.Module) -> None:
        """After ``optimizer.step`` (e.g. restore frozen weights)."""

    def batch_size_of(self, name: str) -> int:
        """The minibatch size for set ``name`` (``"retain"``, ``"forget"``)."""
        return self.batch_size

    def lr_scale(self, epoch: int) -> float:
        """The learning rate of ``epoch`` as a multiple of the initial one (a step schedule)."""
        return 1.0

    @classmethod
    def cost(cls, params: UnlearningParams, n_retain: int, n_forget: int,
             n_train: int) -> Work:
        """Image passes of one ``unlearn`` call, for time estimates: by default ``epochs``
        passes over the retain and the forget set (an upper bound for methods that sweep only
        one of them or stop early)."""
        return Work(train=getattr(params, "epochs", 1) * (n_retain + n_forget))

    # -- what the base owns ---------------------------------------------------------------
    def unlearn(self, model: nn.Module, data: UnlearningData, seed: int,
                train_config: TrainConfig) -> nn.Module:
        """Change ``model`` in place so it forgets ``data.forget``; returns it in eval mode."""
        p = self.params
        self.seed = seed
        self.data = data
        self.generator = generator(seed, "method")  # the method's own randomness (random labels)
        self.batch_size = p.batch_size or train_config.batch_size
        self.steps = 0
        self.setup(model, data)
        lr = p.lr or train_config.lr
        self.optimizer = optimizer = make_optimizer(
            model, p.optimizer or train_config.optimizer, lr)
        shuffles = {name: generator(seed, name) for name in ("retain", "forget")}
        model.train()
        for epoch in range(p.epochs):
            if self.stop(model, data, epoch):
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * self.lr_scale(epoch)
            model.train()
            sets = self.epoch_data(data, epoch)
            for sweep in self.passes(epoch):
                for batch in self._batches(sets, sweep, shuffles):
                    optimizer.zero_grad(set_to_none=True)
                    loss = self.loss(model, batch, sweep.name, epoch)
                    loss.backward()
                    self.before_step(model)
                    optimizer.step()
                    self.after_step(model)
                    self.steps += 1
        return self.finish(model)

    def _batches(self, data: UnlearningData, sweep: Pass,
                 shuffles: dict[str, torch.Generator]) -> Iterator[Batch]:
        drive = data.split(sweep.drive)
        if len(drive) == 0 or any(len(data.split(name)) == 0 for name in sweep.cycle):
            return
        sides = {name: _cycled(data.split(name), self.batch_size_of(name), shuffles[name])
                 for name in sweep.cycle}
        for xy in _shuffled(drive, self.batch_size_of(sweep.drive), shuffles[sweep.drive]):
            batch = {sweep.drive: xy}
            for name, source in sides.items():
                batch[name] = next(source)
            yield batch

    @staticmethod
    def finish(model: nn.Module) -> nn.Module:
        model.eval()
        for param in model.parameters():
            param.grad = None
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


UNLEARNING_METHODS: Registry[type[UnlearningMethod]] = Registry(
    "unlearning method", entry_point_group="robench.unlearning_methods", base=UnlearningMethod)
