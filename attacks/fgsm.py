"""FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples",
ICLR 2015 (arXiv 1412.6572). Untargeted, one step:
``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.

``norm: l2`` is the fast gradient method (FGM) of the same paper family, as ART's
``FastGradientMethod(norm=2)`` (art/attacks/evasion/fast_gradient.py, ``_apply_norm``):
``x_adv = clip(x + eps * g / ||g||_2, 0, 1)`` per image, g the input gradient. Deviation: ART
divides by ``||g||_2 + 1e-7``, we by ``max(||g||_2, 1e-12)`` (a zero gradient gives no step in
both). torchattacks has no L2 FGSM, so ``backend: torchattacks`` is L-inf only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from pydantic import model_validator

from robench.attacks.backends import run_backend
from robench.attacks.base import (
    ATTACKS,
    Attack,
    EOTParams,
    Norm,
    eval_mode,
    l2_normalize,
    project,
)


class FGSMParams(EOTParams):
    backend: Literal["native", "torchattacks", "art"] = "native"
    norm: Norm = "linf"

    @model_validator(mode="after")
    def _backend_has_norm(self) -> FGSMParams:
        if self.norm == "l2" and self.backend == "torchattacks":
            raise ValueError("torchattacks has no L2 FGSM (FGM): use backend native or art")
        if self.eot_samples > 1 and self.backend != "native":
            raise ValueError("eot_samples applies to the native backend only")
        return self


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf, one gradient step; with
    ``norm: l2`` the fast gradient method (FGM, the normalised gradient)."""

    Params = FGSMParams
    family = "single_step"
    # sign(grad) does not depend on eps: a sweep over k eps costs one gradient + k forwards.
    shares_work_across_eps = True
    # torchattacks' FGSM gives bit-identical images; ART's differs in float details
    backend_tolerance = {"torchattacks": 0.0, "art": 0.005}
    # an L2 column must never pass for an L-inf one: ``fgsm[norm=l2]``
    label_params = ("norm", "eot_samples")

    def direction(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step of size 1: sign(g) (L-inf) or g / ||g||_2 (L2)."""
        grad = self.input_gradient(x, y)
        return grad.sign() if self.norm == "linf" else l2_normalize(grad)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if self.params.backend != "native":
            return run_backend("fgsm", self.params.backend, self.model, x, y, eps, self.params,
                               self.seed)
        return x + eps * self.direction(x, y)

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
                    direction = self.direction(x, y)
            if self.norm == "linf":
                # |eps * sign| <= eps already: only the [0, 1] clamp is needed
                yield eps, (x + eps * direction).clamp_(0.0, 1.0)
            else:  # as __call__ does (float rounding can put ||eps * g/||g|| || above eps)
                yield eps, project(x + eps * direction, x, eps, self.norm)
