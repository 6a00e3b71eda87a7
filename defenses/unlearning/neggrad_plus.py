"""NegGrad+: descent on the retain set and ascent on the forget set in one objective,
``β·CE(retain) − (1−β)·CE(forget)`` (Kurmanji, Triantafillou, Hayes, Triantafillou, "Towards
Unbounded Machine Unlearning", NeurIPS 2023, arXiv 2302.09880; repo meghdadk/SCRUB,
``run_neggrad_epoch`` in ``small_scale_unlearning.ipynb``).

As in the reference code an epoch is one pass over the retain set, each retain minibatch paired
with a forget minibatch from a cycled forget set. Deviations from the reference cell: the forget
set is reshuffled each time it is cycled (``itertools.cycle`` replays the first pass's batches);
no ``l2_penalty`` towards the initial weights inside the β term; β, optimizer (the suite's Adam
and lr) and 1 epoch per round instead of the notebook's α 0.95, SGD lr 0.01, 10 epochs. With
β = 1 the forget term has weight zero and the method is exactly ``finetune`` (same shuffles,
same weights).

FGSM setting: the retain term keeps clean accuracy; the forget term pushes the model off the
wrong class it gives each adversarial input. This is the ``unlearning`` defense's default: it is
the standard unlearning objective that does both halves of the seed paper's description
("forget" the perturbed examples, keep training on "the original data").
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    Batch,
    LoopParams,
    Pass,
    UnlearningMethod,
)


class NegGradPlusParams(LoopParams):
    epochs: int = Field(1, ge=0)
    # Kurmanji et al. tune β per setting, with values close to 1 (the forget term is a small
    # correction to fine-tuning). 0.98, re-checked on the VALIDATION split (5000 training
    # images held out; never test images) with benchmarks/tuning/neggrad_beta.yaml: MNIST
    # LeNet-5, the fgsm_lenet unlearning budget (5 rounds, forget 2000, retain 10 000), seed 0.
    # Rule fixed before the sweep: the lowest share of the last round's forget set still fooled
    # among the β whose validation clean accuracy stays within 1 pp of the baseline's (98.52 %).
    # After round 5 (validation clean % / FGSM@0.3 % / still fooled %):
    #   β 0.9: 81.2 / 55.7 / 4.1    β 0.95: 89.2 / 62.1 / 13.2    β 0.97: 97.28 / 38.1 / 36.8
    #   β 0.98: 97.94 / 23.1 / 42.6  β 0.99: 98.20 / 7.9 / 67.2     β 0.995: 98.34 / 4.9 / 76.8
    # 0.97 falls 1.24 pp below the baseline; 0.98 is the β the rule picks (one seed: the
    # 0.97/0.98 boundary is within seed noise, so this is a documented choice, not an optimum).
    beta: float = Field(0.98, ge=0.0, le=1.0)


@UNLEARNING_METHODS.register("neggrad_plus")
class NegGradPlus(UnlearningMethod):
    """β·CE(retain) − (1−β)·CE(forget), retain-driven with cycled forget (Kurmanji et al. 2023)."""

    Params = NegGradPlusParams
    default_passes = (Pass("retain", "retain", cycle=("forget",)),)

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        (x_r, y_r), (x_f, y_f) = batch["retain"], batch["forget"]
        beta = self.params.beta
        retain = F.cross_entropy(model(x_r), y_r)
        forget = F.cross_entropy(model(x_f), y_f)
        return beta * retain - (1 - beta) * forget
