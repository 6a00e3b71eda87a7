"""SCRUB (Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023, arXiv 2302.09880). Teacher-student unlearning: the teacher is the model before
the call, frozen; the student starts as a copy and, in every epoch,

- **max-steps** (only in the first ``max_epochs`` epochs, before the min-steps): one pass over
  the forget set minimising ``−KL(teacher ‖ student)`` at temperature T;
- **min-steps**: one pass over the retain set minimising ``gamma·CE + alpha·KL(teacher ‖
  student)``.

Reference code compared against: meghdadk/SCRUB ``small_scale_unlearning.ipynb`` (the
repository's README: "use small_scale_unlearning.ipynb for small-scale experiments"; cell 26:
batch sizes, cell 30: settings, cell 34: the epoch loop) with
``thirdparty/repdistiller/helper/loops.py::train_distill`` (the two losses),
``distiller_zoo/KD.py::DistillKL`` (KL · T² / batch) and ``helper/util.py::adjust_learning_rate``
(the step schedule). Every default is that notebook's small-scale setting, used as one whole:
``optim adam``, ``sgda_learning_rate 5e-4``, ``sgda_weight_decay 0.1``, ``sgda_epochs 10``,
``msteps 3``, ``kd_T 2``, ``gamma 1``, ``alpha 0.5``, ``beta 0`` (``distill kd``: no third
term), ``lr_decay_epochs [5, 8, 9]`` with ``lr_decay_rate 0.1`` (epoch e, 1-based, runs at
``lr · 0.1^#{d : e > d}``), ``retain_bs 32``, ``forget_bs 64`` (the cell's ``smoothing``,
``clip`` and ``sstart`` are not read by ``train_distill``; its gradient clipping is commented
out). The weight decay is Adam's
coupled L2 (``grad += wd·θ`` before each step, as ``torch.optim.Adam(weight_decay=...)``); it is
also what lets the very first max-step move the student, whose KL gradient is exactly zero
while it still equals the teacher. (The large-scale notebook instead uses SGD, T = 4, 3 epochs,
``msteps 2``, ``gamma 0.99``, ``alpha 0.001``, batch 128; mixing the two is what this avoids.)

Deliberate deviations: none in the maths. The student stays in train mode throughout as in the
reference (LeNet-5 has no dropout or batch norm, so this changes nothing here). The notebook's
forget set is 300 images and its retain set a small Lacuna subset; the defense's forget set is
about a thousand adversarial examples and its retain sample 10 000 images per round, so a call
takes 10 × 313 min-steps.

FGSM setting: the teacher gives each adversarial input its wrong class; max-steps push the
student's whole output distribution on those inputs away from the teacher's, min-steps keep
clean behaviour. The forget labels themselves are not used (SCRUB never uses them).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    Batch,
    LoopParams,
    Pass,
    UnlearningData,
    UnlearningMethod,
    distill_kl,
)


class ScrubParams(LoopParams):
    epochs: int = Field(10, ge=0)                 # sgda_epochs
    max_epochs: int = Field(3, ge=0)              # msteps: epochs that start with a max pass
    lr: float | None = Field(5e-4, gt=0)          # sgda_learning_rate
    optimizer: Literal["adam", "sgd"] | None = "adam"
    batch_size: int | None = Field(32, ge=1)      # retain_bs (min-steps)
    forget_batch_size: int = Field(64, ge=1)      # forget_bs (max-steps)
    weight_decay: float = Field(0.1, ge=0)        # sgda_weight_decay (coupled L2)
    lr_decay_epochs: list[int] = Field(default_factory=lambda: [5, 8, 9])
    lr_decay_rate: float = Field(0.1, gt=0)
    temperature: float = Field(2.0, gt=0)         # kd_T
    alpha: float = Field(0.5, ge=0)               # weight of KL on retain (min-steps)
    gamma: float = Field(1.0, ge=0)               # weight of CE on retain (min-steps)


@UNLEARNING_METHODS.register("scrub")
class Scrub(UnlearningMethod):
    """Teacher-student max/min KL steps on forget/retain (SCRUB; Kurmanji et al. NeurIPS 2023)."""

    Params = ScrubParams

    def setup(self, model: nn.Module, data: UnlearningData) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)

    def passes(self, epoch: int) -> tuple[Pass, ...]:
        if epoch < self.params.max_epochs:
            return (Pass("max", "forget"), Pass("min", "retain"))
        return (Pass("min", "retain"),)

    def batch_size_of(self, name: str) -> int:
        return self.params.forget_batch_size if name == "forget" else self.batch_size

    def lr_scale(self, epoch: int) -> float:
        decays = sum(epoch + 1 > d for d in self.params.lr_decay_epochs)  # 1-based epochs
        return self.params.lr_decay_rate ** decays

    def before_step(self, model: nn.Module) -> None:
        for param in model.parameters():
            param.grad.add_(param, alpha=self.params.weight_decay)

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        p = self.params
        x, y = batch["forget" if pass_name == "max" else "retain"]
        with torch.no_grad():
            teacher = self.teacher(x)
        logits = model(x)
        if pass_name == "max":
            return -distill_kl(logits, teacher, p.temperature)
        return p.gamma * F.cross_entropy(logits, y) + p.alpha * distill_kl(logits, teacher,
                                                                           p.temperature)
