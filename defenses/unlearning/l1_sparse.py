"""ℓ1-sparse unlearning (Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify
Machine Unlearning", NeurIPS 2023, arXiv 2304.04934; repo OPTML-Group/Unlearn-Sparse,
``FT_iter(with_l1=True)``): fine-tune on the retain set with an ℓ1 penalty on all weights whose
strength decays linearly to zero, ``CE(retain) + γ_t‖θ‖₁``, ``γ_t = γ(1 − t/T)``.

The reference decays γ per epoch over ~10 epochs; the unlearning defense calls a method once per
round with few epochs, so here the same linear schedule runs over the call's optimizer steps
(identical at epoch boundaries). Defaults: γ = 5e-4 and SGD (momentum 0.9) at lr 0.01, the
paper's CIFAR-10 setting; with Adam the sign-like ℓ1 gradient would be rescaled per weight and
sparsify far more than the paper intends.

FGSM setting: like ``finetune`` it never looks at the forget set; the sparsity prior is what is
supposed to make the forget behaviour easier to overwrite.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    Batch,
    LoopParams,
    UnlearningData,
    UnlearningMethod,
)


class L1SparseParams(LoopParams):
    epochs: int = Field(1, ge=0)
    lr: float | None = Field(0.01, gt=0)
    optimizer: Literal["adam", "sgd"] | None = "sgd"
    gamma: float = Field(5e-4, ge=0)


def l1_norm(model: nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for p in model.parameters())


@UNLEARNING_METHODS.register("l1_sparse")
class L1Sparse(UnlearningMethod):
    """Fine-tune on retain with a linearly decaying ℓ1 penalty (Jia et al. NeurIPS 2023)."""

    Params = L1SparseParams

    def setup(self, model: nn.Module, data: UnlearningData) -> None:
        self.total_steps = self.params.epochs * math.ceil(len(data.retain) / self.batch_size)

    def penalty_weight(self, step: int) -> float:
        return self.params.gamma * max(0.0, 1.0 - step / max(self.total_steps, 1))

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        x, y = batch["retain"]
        return F.cross_entropy(model(x), y) + self.penalty_weight(self.steps) * l1_norm(model)
