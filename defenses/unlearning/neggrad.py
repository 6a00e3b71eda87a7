"""NegGrad: gradient ascent on the forget set (Golatkar et al., CVPR 2020; Kurmanji et al.,
"Towards Unbounded Machine Unlearning", NeurIPS 2023, arXiv 2302.09880).

Objective per forget minibatch: maximise ``CE(f(x_f), y_f)``. Unbounded ascent destroys the
model, so it is bounded two ways: each example's loss is clipped at ``loss_bound`` (an example
already pushed past it contributes no gradient), and the loop stops early once *every* forget
example is past the bound (Adam's momentum would otherwise keep moving the weights on zero
gradients). The default bound is ln(num_classes): a label whose probability is below 1/K can
no longer be the arg-max, so reaching it on every example means the forget labels are gone.

FGSM setting: ``y_f`` is the wrong class the model gives the adversarial input, so ascent pushes
the model off exactly that answer; nothing pulls it towards the true class. Observed on MNIST
LeNet-5: ascent drives a few forget examples into saturation (p(y_f) = 1 in float32, so their
gradient is exactly zero) while the others shoot past the bound, so the all-past-the-bound stop
rarely fires there; the epoch cap and the small learning rate then bound the ascent.

Reference code compared against: OPTML-Group/Unlearn-Saliency ``Classification/unlearn/GA.py``
(``GA``: plain ascent, loss ``-CE`` on forget minibatches; optimizer from
``Classification/unlearn/impl.py``: SGD, momentum 0.9, weight decay 5e-4, lr ``--unlearn_lr``).
Kurmanji et al.'s repository (meghdadk/SCRUB) has no ascent-only method: its "NegGrad" cell
runs ``negative_grad`` with α 0.95, which is ``neggrad_plus`` here. Deviations, all robench's
additions, none in the reference: the per-example loss clip at ``loss_bound`` (ln K by
default), the early stop once every forget example is past it, and the suite's optimizer (Adam)
at lr 1e-4 for 5 epochs instead of SGD with momentum (the reference takes lr and epochs from the
command line; its README gives no values for GA).
"""

from __future__ import annotations

import math

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
)
from robench.models import eval_mode


class NegGradParams(LoopParams):
    epochs: int = Field(5, ge=0)          # Jia et al. 2023 / SalUn run GA for 5 epochs
    lr: float | None = Field(1e-4, gt=0)  # ascent needs a small step (GA lr 1e-4 in Jia et al.)
    loss_bound: float | None = Field(None, gt=0)  # None: ln(num_classes)


def clipped_ce(logits: torch.Tensor, labels: torch.Tensor, bound: float) -> torch.Tensor:
    """Per-example cross-entropy clipped at ``bound`` (no gradient past it), batch mean."""
    return F.cross_entropy(logits, labels, reduction="none").clamp(max=bound).mean()


@UNLEARNING_METHODS.register("neggrad")
class NegGrad(UnlearningMethod):
    """Gradient ascent on the forget set, loss-clipped with early stop (Kurmanji et al. 2023)."""

    Params = NegGradParams
    default_passes = (Pass("forget", "forget"),)

    def bound(self, data: UnlearningData) -> float:
        return self.params.loss_bound or math.log(data.num_classes)

    def stop(self, model: nn.Module, data: UnlearningData, epoch: int) -> bool:
        if len(data.forget) == 0:
            return True
        with torch.no_grad(), eval_mode(model):
            losses = torch.cat([
                F.cross_entropy(model(data.forget.images[i:i + 2000]),
                                data.forget.labels[i:i + 2000], reduction="none")
                for i in range(0, len(data.forget), 2000)])
        return bool((losses >= self.bound(data)).all())

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        x, y = batch["forget"]
        return -clipped_ce(model(x), y, self.bound(self.data))

