"""ℓ1-sparse unlearning (Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify
Machine Unlearning", NeurIPS 2023, arXiv 2304.04934): fine-tune on the retain set with an ℓ1
penalty on all weights, ``CE(retain) + γ_e‖θ‖₁``, whose strength decays linearly per epoch.

Reference code compared against: OPTML-Group/Unlearn-Sparse ``unlearn/FT.py`` (``FT_l1`` →
``FT_iter(with_l1=True)``, ``l1_regularization`` = ‖θ‖₁ over all parameters) driven by
``unlearn/impl.py`` (``_iterative_unlearn_impl``). There ``current_alpha = alpha · (1 − epoch /
unlearn_epochs)`` with a 0-based epoch, held constant for every minibatch of that epoch: the
first epoch uses the full alpha and the last ``alpha / unlearn_epochs`` (the penalty never
reaches zero). Here the same schedule runs over the call's ``epochs``: ``γ_e = γ(1 − e/E)``;
for a one-epoch call (the default, once per round of the unlearning defense) that is the full
γ at every step. (``no_l1_epochs`` is the reference's ``--no-l1-epochs``, default 0 in
``arg_parser.py``, as here.)

Defaults: γ = 5e-4 (the paper's CIFAR-10 setting; the code's ``--alpha`` default, 0.2, is
shared with its Fisher methods and its README passes the value explicitly) and SGD (momentum
0.9) at the reference's ``unlearn_lr`` default, 0.01; with Adam the sign-like ℓ1 gradient would be
rescaled per weight and sparsify far more than the paper intends. Deviations: one epoch per
call instead of the reference's 10 (the defense calls the method once per round); no SGD
weight decay (the reference's optimizer adds ``weight_decay`` 5e-4) and no MultiStepLR
milestones (its defaults, 91 and 136, are never reached in 10 epochs anyway).

FGSM setting: like ``finetune`` it never looks at the forget set; the sparsity prior is what is
supposed to make the forget behaviour easier to overwrite.
"""

from __future__ import annotations

from typing import Literal

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

    def penalty_weight(self, epoch: int) -> float:
        """``γ(1 − epoch/epochs)``: constant within an epoch, as in the reference's ``FT_iter``."""
        return self.params.gamma * (1.0 - epoch / self.params.epochs)

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        x, y = batch["retain"]
        return F.cross_entropy(model(x), y) + self.penalty_weight(epoch) * l1_norm(model)
