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

``early_stop`` (default true): active-set PGD (``robench.attacks.active``). An image stops at
its first misclassified iterate and keeps it, and an image the model gets wrong before the
attack is not attacked; a stopped image is checked again in a forward pass of the whole batch
(and resumes if it is not fooled there), every other image follows the plain loop's trajectory,
so for a deterministic model the result is never weaker per image than the final iterate
(Madry et al.'s reference, ``MadryLab/mnist_challenge/pgd_attack.py``, and torchattacks' ``PGD``
return the final iterate); a randomized model gets the plain loop. With restarts, a restart
attacks only the images every earlier restart failed on. ``early_stop: false`` is the plain
final-iterate loop (for comparison; PGD examples made as training data use it). The
``torchattacks`` and ``art`` backends run their library's own final-iterate loop: their params
record ``early_stop: false`` (``true`` with them is an error).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from robench.attacks.active import attack_until_fooled
from robench.attacks.backends import run_backend
from robench.attacks.base import (
    ATTACKS,
    Attack,
    EOTParams,
    Norm,
    input_gradient,
    l2_normalize,
    project,
)

#: the largest L2 step: the diameter of [0, 1]^784 (an MNIST image) is 28
MAX_L2_ALPHA = 28.0


class PGDParams(EOTParams):
    steps: int = Field(40, ge=1)
    alpha: float = Field(0.01, gt=0, le=MAX_L2_ALPHA)
    random_start: bool = True
    restarts: int = Field(1, ge=1)
    backend: Literal["native", "torchattacks", "art"] = "native"
    norm: Norm = "linf"
    early_stop: bool = True     # active set: stop each image at its first fooling iterate

    @model_validator(mode="before")
    @classmethod
    def _libraries_run_their_own_loop(cls, data: Any) -> Any:
        # torchattacks and ART return their final iterate: recorded as such in the params
        if isinstance(data, dict) and data.get("backend", "native") != "native":
            return {"early_stop": False, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PGDParams:
        if self.eot_samples > 1 and self.backend != "native":
            raise ValueError("eot_samples applies to the native backend only")
        if self.early_stop and self.backend != "native":
            raise ValueError(f"early_stop applies to the native backend only; {self.backend} "
                             "runs its own final-iterate loop (leave early_stop out)")
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
    label_params = ("norm", "eot_samples")

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
            # an active-set restart attacks only the images every earlier restart failed on
            x_adv = self._run(x, y, eps, still_correct.clone() if p.early_stop else None)
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

    def _run(self, x: torch.Tensor, y: torch.Tensor, eps: float,
             active: torch.Tensor | None = None) -> torch.Tensor:
        p = self.params
        if p.backend != "native":
            return run_backend("pgd", p.backend, self.model, x, y, eps, p, self.seed)
        norm = p.norm
        x_adv = (project(x + self.random_start(x, eps), x, eps, norm) if p.random_start
                 else x.clone())

        def step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            direction = grad.sign() if norm == "linf" else l2_normalize(grad)
            return project(x_adv + p.alpha * direction, x, eps, norm)

        surrogate = self.gradient_model()
        if p.early_stop:
            return attack_until_fooled(self.model, x, y, x_adv, p.steps, step, active,
                                       surrogate, self.eot_samples)
        for _ in range(p.steps):
            x_adv = step(x_adv, input_gradient(self.model if surrogate is None else surrogate,
                                               x_adv, y, self.eot_samples), x)
        return x_adv

    def gradient_model(self) -> nn.Module | None:
        """The model whose input gradients the steps follow when it is not the attacked model
        itself (None: the attacked model's own); BPDA (``robench.attacks.bpda``) returns the
        defense's differentiable surrogate. Predictions are always the attacked model's."""
        return None
