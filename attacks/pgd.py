"""PGD: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (arXiv 1706.06083). L-infinity, untargeted, ``steps`` signed
gradient steps of size ``alpha`` from a uniform random start in the eps-ball, each followed by
projection onto the ball and [0, 1]. With ``restarts`` > 1 an image counts as robust only if
every restart fails (the worst case per image is kept).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from robench.attacks.backends import run_backend
from robench.attacks.base import ATTACKS, Attack, AttackParams, input_gradient, project


class PGDParams(AttackParams):
    steps: int = Field(40, ge=1)
    alpha: float = Field(0.01, gt=0, le=1)
    random_start: bool = True
    restarts: int = Field(1, ge=1)
    backend: Literal["native", "torchattacks", "art"] = "native"


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected Gradient Descent (Madry et al. 2018), L-inf, random start, restarts."""

    Params = PGDParams
    family = "iterative"
    # random starts differ between implementations: agreement within 2 pp
    backend_tolerance = {"torchattacks": 0.02, "art": 0.02}

    @classmethod
    def budget(cls, params: PGDParams) -> int:
        return params.steps * params.restarts

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        p = self.params
        if p.restarts == 1:
            return self._run(x, y, eps)
        best = None
        still_correct = torch.ones_like(y, dtype=torch.bool)
        for _ in range(p.restarts):
            x_adv = self._run(x, y, eps)
            if best is None:
                best = x_adv.clone()
            # keep, per image, the first restart that fools the model
            with torch.no_grad():
                fooled = self.model(x_adv).argmax(1) != y
            take = fooled & still_correct
            best[take] = x_adv[take]
            still_correct &= ~fooled
            if not still_correct.any():
                break
        return best

    def _run(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        p = self.params
        if p.backend != "native":
            return run_backend("pgd", p.backend, self.model, x, y, eps, p, self.seed)
        x_adv = project(x + self.uniform_noise(x, eps), x, eps) if p.random_start else x.clone()
        for _ in range(p.steps):
            x_adv = project(x_adv + p.alpha * input_gradient(self.model, x_adv, y).sign(), x, eps)
        return x_adv
