"""Fine-tuning on the retain set only ("FT"; the catastrophic-forgetting baseline of Golatkar et
al., CVPR 2020, and of every later unlearning benchmark, e.g. Kurmanji et al., NeurIPS 2023).

The forget set is never looked at: whatever the model stops doing on it, it stops doing because
further training on the retain set overwrote it. In the FGSM setting the retain set is clean
training data (plus, with ``retain_adversarial``, the adversarial inputs with their true labels),
so this is "continue training on the original data" — the reading of the seed paper's abstract
("retraining a model on the original data without the added perturbations").
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
    UnlearningMethod,
)


class FinetuneParams(LoopParams):
    # Kurmanji et al.'s FT baseline runs a few epochs on the retain set; one pass per round
    # here, because the unlearning defense repeats the call every round.
    epochs: int = Field(1, ge=0)


@UNLEARNING_METHODS.register("finetune")
class Finetune(UnlearningMethod):
    """Fine-tune on the retain set only (catastrophic forgetting; Golatkar et al. 2020)."""

    Params = FinetuneParams

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        x, y = batch["retain"]
        return F.cross_entropy(model(x), y)
