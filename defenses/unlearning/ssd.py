"""Selective Synaptic Dampening (Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without
Retraining Through Selective Synaptic Dampening", AAAI 2024, arXiv 2308.07707; repo
if-loops/selective-synaptic-dampening, ``ParameterPerturber``). No gradient training.

1. Importance of every parameter: the diagonal of the Fisher information, estimated as in the
   reference code by the mean over minibatches of the squared gradient of the minibatch CE —
   ``[]_F`` on the forget set (with its labels), ``[]_D`` on general data.
2. Selection: parameters with ``[]_F > alpha · []_D`` (alpha ≈ 10).
3. Dampening: each selected parameter is multiplied by ``min(lam · []_D / []_F, 1)`` (lam ≈ 1).
   Every other parameter is left bit-identical.

Defaults alpha = 10, lam = 1 are the paper's. In the paper ``D`` is the full training set
(which contains the forget set); here the forget inputs are adversarial examples that were never
training data, so the general importance is measured on the retain set (clean training data).

FGSM setting: the forget loss is CE towards the wrong class the model gives each adversarial
input, so the parameters dampened are those that matter far more for producing those wrong
answers than for classifying clean data.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.data import Split
from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    UnlearningData,
    UnlearningMethod,
    UnlearningParams,
)
from robench.training import TrainConfig


class SSDParams(UnlearningParams):
    alpha: float = Field(10.0, gt=0)   # selection weighting
    lam: float = Field(1.0, gt=0)      # dampening constant
    batch_size: int | None = Field(None, ge=1)


def fisher_diagonal(model: nn.Module, data: Split, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean over minibatches of the squared gradient of the minibatch mean CE, per parameter."""
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    batches = 0
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size]
        y = data.labels[start:start + batch_size]
        params = [p for _, p in model.named_parameters()]
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        for (name, _), grad in zip(model.named_parameters(), grads, strict=True):
            total[name] += grad.pow(2)
        batches += 1
    return {name: value / max(batches, 1) for name, value in total.items()}


@UNLEARNING_METHODS.register("ssd")
class SSD(UnlearningMethod):
    """Selective synaptic dampening of forget-specific weights, no training (Foster et al. 2024)."""

    Params = SSDParams

    def unlearn(self, model: nn.Module, data: UnlearningData, seed: int,
                train_config: TrainConfig) -> nn.Module:
        p = self.params
        batch_size = p.batch_size or train_config.batch_size
        self.steps = 0
        model.eval()
        forget = fisher_diagonal(model, data.forget, batch_size)
        general = fisher_diagonal(model, data.retain, batch_size)
        self.selected: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, param in model.named_parameters():
                selected = forget[name] > p.alpha * general[name]
                factor = (p.lam * general[name] / forget[name]).clamp(max=1.0)
                param[selected] = param[selected] * factor[selected]
                self.selected[name] = selected
        return self.finish(model)
