"""PGD: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (arXiv 1706.06083). L-infinity, untargeted, ``steps`` signed
gradient steps of size ``alpha`` from a uniform random start in the eps-ball, each followed by
projection onto the ball and [0, 1]. With ``restarts`` > 1 an image counts as robust only if
every restart fails (the worst case per image is kept).

``norm: l2`` is PGD-L2 as torchattacks' ``PGDL2`` (torchattacks/attacks/pgdl2.py): steps of
``alpha * g / ||g||_2`` per image, projection by scaling delta to ``||delta||_2 <= eps``, then
[0, 1]; random start as ``PGDL2`` (a Gaussian direction at radius ``eps * U[0, 1]``, see
``Attack.random_start``). Deviations: torchattacks divides by ``||g||_2 + 1e-10``, we by
``max(||g||_2, 1e-12)``; its random start comes from torch's global generator, ours per image.
With ``norm: l2``, ``alpha`` must be given (the default 0.01 is an L-inf step; a common choice
is ``2.5 * eps / steps`` for the largest eps, as in Madry et al.).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from robench.attacks.backends import run_backend
from robench.attacks.base import (
    ATTACKS,
    Attack,
    AttackParams,
    Norm,
    input_gradient,
    l2_normalize,
    project,
)

#: the largest L2 step: the diameter of [0, 1]^784 (an MNIST image) is 28
MAX_L2_ALPHA = 28.0


class PGDParams(AttackParams):
    steps: int = Field(40, ge=1)
    alpha: float = Field(0.01, gt=0, le=MAX_L2_ALPHA)
    random_start: bool = True
    restarts: int = Field(1, ge=1)
    backend: Literal["native", "torchattacks", "art"] = "native"
    norm: Norm = "linf"

    @model_validator(mode="after")
    def _alpha_fits_norm(self) -> PGDParams:
        if self.norm == "linf" and self.alpha > 1:
            raise ValueError(f"alpha {self.alpha:g} > 1: an L-inf step is at most 1 (inputs "
                             "are in [0, 1])")
        if self.norm == "l2" and "alpha" not in self.model_fields_set:
            raise ValueError("with norm l2 give `alpha` (an L2 step, e.g. 2.5 * eps / steps); "
                             "the default 0.01 is an L-inf step")
        return self


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected Gradient Descent (Madry et al. 2018), L-inf or L2 (``norm``), random start,
    restarts."""

    Params = PGDParams
    family = "iterative"
    # random starts differ between implementations: agreement within 2 pp
    backend_tolerance = {"torchattacks": 0.02, "art": 0.02}
    # an L2 column must never pass for an L-inf one: ``pgd[norm=l2]``
    label_params = ("norm",)

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
        norm = p.norm
        x_adv = (project(x + self.random_start(x, eps), x, eps, norm) if p.random_start
                 else x.clone())
        for _ in range(p.steps):
            grad = input_gradient(self.model, x_adv, y)
            step = grad.sign() if norm == "linf" else l2_normalize(grad)
            x_adv = project(x_adv + p.alpha * step, x, eps, norm)
        return x_adv
