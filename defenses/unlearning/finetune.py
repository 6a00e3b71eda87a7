"""Fine-tuning on the retain set only ("FT"; the catastrophic-forgetting baseline of Golatkar et
al., CVPR 2020, and of every later unlearning benchmark, e.g. Kurmanji et al., NeurIPS 2023).

The forget set is never looked at: whatever the model stops doing on it, it stops doing because
further training on the retain set overwrote it. In the FGSM setting the retain set is clean
training data (plus, with ``retain_adversarial``, the adversarial inputs with their true labels),
so this is "continue training on the original data" — the reading of the seed paper's abstract
("retraining a model on the original data without the added perturbations").

Reference code compared against: meghdadk/SCRUB ``small_scale_unlearning.ipynb`` (``finetune``
and ``run_train_epoch``, the FT baseline of Kurmanji et al.) and OPTML-Group/Unlearn-Saliency
``Classification/unlearn/FT.py`` (``FT`` → ``FT_iter`` without ℓ1, with the optimizer of
``Classification/unlearn/impl.py``). The loss is the same plain CE on retain minibatches.
Deviations: the suite's ``train:`` optimizer, lr and batch size (Adam 1e-3 in our suites) for 1
epoch per call, where SCRUB's notebook uses SGD lr 0.01 (no weight decay) for 10 epochs and
Unlearn-Saliency SGD (momentum 0.9, weight decay 5e-4) at ``--unlearn_lr`` for
``--unlearn_epochs`` (defaults 0.01 and 10); the ``unlearning`` defense calls the method once
per round. SCRUB's loop also adds an ``l2_penalty`` towards the starting weights (with the
notebook's ``args.weight_decay``) and runs the model in eval mode; neither is done here (eval
mode changes nothing for LeNet-5, which has no dropout or batch norm).
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
