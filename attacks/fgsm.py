"""FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples",
ICLR 2015 (arXiv 1412.6572). L-infinity, untargeted, one step:
``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch

from robench.attacks.backends import run_backend
from robench.attacks.base import (
    ATTACKS,
    Attack,
    AttackParams,
    eval_mode,
    input_gradient,
)


class FGSMParams(AttackParams):
    backend: Literal["native", "torchattacks", "art"] = "native"


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf, one gradient step."""

    Params = FGSMParams
    family = "single_step"
    # sign(grad) does not depend on eps: a sweep over k eps costs one gradient + k forwards.
    shares_work_across_eps = True
    # torchattacks' FGSM gives bit-identical images; ART's differs in float details
    backend_tolerance = {"torchattacks": 0.0, "art": 0.005}

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if self.params.backend != "native":
            return run_backend("fgsm", self.params.backend, self.model, x, y, eps, self.params,
                               self.seed)
        return x + eps * input_gradient(self.model, x, y).sign()

    def sweep(self, x: torch.Tensor, y: torch.Tensor,
              eps_list: Sequence[float]) -> Iterator[tuple[float, torch.Tensor]]:
        if self.params.backend != "native":
            yield from super().sweep(x, y, eps_list)
            return
        x = x.detach()
        direction = None
        for eps in eps_list:
            if eps == 0:
                yield eps, x.clone()
                continue
            if direction is None:
                with eval_mode(self.model):
                    direction = input_gradient(self.model, x, y).sign()
            # |eps * sign| <= eps already: only the [0, 1] clamp is needed (no projection pass)
            yield eps, (x + eps * direction).clamp_(0.0, 1.0)
