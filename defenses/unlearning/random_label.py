"""Random labels / Amnesiac unlearning (Graves, Nagisetty, Ganesh, "Amnesiac Machine Learning",
AAAI 2021, arXiv 2010.10981): relabel the forget examples with random *other* classes and train
on them together with retain data, so the model's learnt answer on them is overwritten.

Each epoch draws fresh labels (uniform over the classes that are neither the forget label nor,
when known, the input's true label), then sweeps the relabelled forget set once and the retain
set once (the order of SalUn's reference ``RL`` loop for CIFAR-10, Fan et al. 2024).

FGSM setting: the forget label is the wrong class the model gives the adversarial input, so
that class is excluded by definition; the true class is excluded too (``exclude_true_label``),
otherwise one draw in K−1 would be the correct label and the method would be partly
adversarial training by accident. Training adversarial inputs towards their true labels is the
separate, explicit switch ``retain_adversarial`` of the ``unlearning`` defense.

Reference code compared against: OPTML-Group/Unlearn-Saliency ``Classification/unlearn/RL.py``
(``RL`` without a mask, its CIFAR-10 branch) with ``Classification/unlearn/impl.py`` (optimizer)
and ``Classification/arg_parser.py`` (defaults); Graves et al. publish no code. Deviations:
labels exclude the forget label and the true class, where the reference draws
``torch.randint(0, num_classes)`` over all classes; the suite's ``train:`` optimizer, lr and
batch size (Adam 1e-3, batch 128 in our suites) for 1 epoch per call, where the reference runs
SGD (momentum 0.9, weight decay 5e-4) at ``--unlearn_lr`` for ``--unlearn_epochs`` (README
command: 0.013 for 10 epochs), batch 256; the ``unlearning`` defense calls the method once per
round.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.data import Split
from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    Batch,
    LoopParams,
    Pass,
    UnlearningData,
    UnlearningMethod,
    random_other_labels,
)


class RandomLabelParams(LoopParams):
    epochs: int = Field(1, ge=0)
    exclude_true_label: bool = True


def relabel_forget(method: UnlearningMethod, data: UnlearningData,
                   exclude_true_label: bool) -> UnlearningData:
    """``data`` with the forget set's labels replaced by fresh random other classes."""
    forget = data.forget
    if len(forget) == 0:
        return data
    also = data.forget_true_labels if exclude_true_label else None
    labels = random_other_labels(forget.labels, data.num_classes, method.generator, also)
    return replace(data, forget=Split(forget.images, labels))


@UNLEARNING_METHODS.register("random_label")
class RandomLabel(UnlearningMethod):
    """Forget set relabelled with random other classes, then retain data (Graves et al. 2021)."""

    Params = RandomLabelParams
    default_passes = (Pass("forget", "forget"), Pass("retain", "retain"))

    def epoch_data(self, data: UnlearningData, epoch: int) -> UnlearningData:
        return relabel_forget(self, data, self.params.exclude_true_label)

    def loss(self, model: nn.Module, batch: Batch, pass_name: str, epoch: int) -> torch.Tensor:
        x, y = batch[pass_name]
        return F.cross_entropy(model(x), y)
