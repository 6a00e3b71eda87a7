"""AutoAttack: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020 (arXiv 2003.01690). L-infinity, standard version:
APGD-CE, APGD-T (9 target classes), FAB-T and Square (5000 queries), each run on the images
the previous ones failed on. We reuse torchattacks' implementation rather than re-deriving it.
"""

from __future__ import annotations

from typing import Literal

import torch

from robench.attacks.base import ATTACKS, Attack, AttackParams


class AutoAttackParams(AttackParams):
    version: Literal["standard", "rand"] = "standard"


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square; L-inf, seeded."""

    Params = AutoAttackParams
    family = "ensemble"

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        attack = torchattacks.AutoAttack(self.model, norm="Linf", eps=eps,
                                         version=self.params.version,
                                         n_classes=self.num_classes(x),
                                         seed=self.seed)
        return attack(x, y)
