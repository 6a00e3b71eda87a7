"""SCRUB (Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023, arXiv 2302.09880; repo meghdadk/SCRUB). Teacher-student unlearning: the teacher
is the model before the call, frozen; the student starts as a copy and alternates

- **max-steps** on the forget set: maximise KL(teacher ‖ student) at temperature T (move away
  from what the teacher answers on the forget inputs), only in the first ``max_epochs`` epochs;
- **min-steps** on the retain set: minimise ``gamma·CE + alpha·KL(teacher ‖ student)`` (stay
  the teacher everywhere else).

Defaults: T = 4, 3 epochs with max-steps in the first 2, SGDA learning rate 5e-4 (the
reference notebook's large-scale setting: ``kd_T 4, sgda_epochs 3, msteps 2``) and the small-
scale loss weights ``gamma 1, alpha 0.5`` with Adam (our forget sets are small, hundreds of
examples, like the paper's small-scale setting). As in the reference loop the max pass of an
epoch comes first; in the very first epoch the student *is* the teacher, so the KL gradient is
exactly zero there until a min-step has moved it (the reference relies on weight decay and
dropout for that; LeNet-5 has neither, so the first max pass changes nothing).

FGSM setting: the teacher gives each adversarial input its wrong class; max-steps push the
student's whole output distribution on those inputs away from the teacher's, min-steps keep
clean behaviour. The forget labels themselves are not used (SCRUB never uses them).
"""

from __future__ import annotations

import copy

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
    epochs: int = Field(3, ge=0)
    max_epochs: int = Field(2, ge=0)       # "msteps": epochs that include a max pass
    lr: float | None = Field(5e-4, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0)        # weight of KL on retain (min-steps)
    gamma: float = Field(1.0, ge=0)        # weight of CE on retain (min-steps)


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

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        p = self.params
        if pass_name == "max":
            x, _ = batch["forget"]
            with torch.no_grad():
                teacher = self.teacher(x)
            return -distill_kl(model(x), teacher, p.temperature)
        x, y = batch["retain"]
        with torch.no_grad():
            teacher = self.teacher(x)
        logits = model(x)
        return p.gamma * F.cross_entropy(logits, y) + p.alpha * distill_kl(logits, teacher,
                                                                           p.temperature)
