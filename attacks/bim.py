"""BIM (iterative FGSM): Kurakin, Goodfellow, Bengio, "Adversarial Examples in the Physical
World", ICLR 2017 workshop (arXiv 1607.02533). L-infinity, untargeted, no random start:

``x_0 = x``, ``x_{n+1} = Clip_{x, eps}(x_n + alpha * sign(grad_x CE(f(x_n), y)))``,

where Clip_{x, eps} clips to the eps-ball around x and to the valid range [0, 1]. Unlike PGD
(Madry et al.) it starts at x itself, so it follows the gradient at the data point: a defense
that masks FGSM's first step but not later ones shows up as BIM beating FGSM.

Arguments and defaults, the paper's (Section 2.2, pixel values 0-255): ``alpha`` = 1/255 (one
intensity level per step); ``steps`` = None: ``min(eps*255 + 4, 1.25*eps*255)`` iterations at
each eps (80 at eps 0.3, 29 at eps 0.1), "enough for the adversarial example to reach the edge
of the eps max-norm ball" while keeping the cost low; an integer fixes the count at every eps.

Compared with torchattacks 3.5 ``BIM`` (``torchattacks/attacks/bim.py``, ``steps=0`` uses the
same rule): the same update and clipping (its max/min sequence equals ``project``). Deviations:
the gradient is of the summed rather than the mean cross-entropy (the same sign per image,
except where the mean underflows to 0); the rule's count is floored as torchattacks does (the
paper does not say how to round) and at least 1 (torchattacks would take 0 steps below
eps ~ 0.003).

``early_stop`` (default true): active-set BIM as active-set PGD (``robench.attacks.active``):
an image stops at its first misclassified iterate and keeps it (checked again on the whole
batch), an image misclassified before the attack is not attacked; for a deterministic model
never weaker per image than the final iterate (Kurakin et al. and torchattacks return the final
iterate); a randomized model gets the plain loop. ``early_stop: false`` is the plain loop (the
one cross-checked with torchattacks image by image).
"""

from __future__ import annotations

import torch
from pydantic import Field

from robench.attacks.active import attack_until_fooled
from robench.attacks.base import ATTACKS, Attack, EOTParams, project
from robench.work import Work


class BIMParams(EOTParams):
    steps: int | None = Field(None, ge=1)
    alpha: float = Field(1 / 255, gt=0, le=1)
    early_stop: bool = True     # active set: stop each image at its first fooling iterate


def paper_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count at ``eps`` (input scale): min(eps+4, 1.25 eps) in
    0-255 units, floored, at least 1."""
    return max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))


@ATTACKS.register("bim")
class BIM(Attack):
    """Basic Iterative Method (Kurakin et al. 2017): FGSM steps of alpha from x, clipped."""

    Params = BIMParams
    family = "iterative"
    label_params = ("eot_samples",)

    @classmethod
    def budget(cls, params: BIMParams) -> int:
        # the budget cannot depend on eps: with the paper's rule, its count at eps 1 (an upper
        # bound for every eps in [0, 1])
        return params.steps if params.steps is not None else paper_steps(1.0)

    @classmethod
    def work_per_image(cls, params: BIMParams, eps: float) -> Work:
        # the steps it takes at this eps (the budget above is the count at eps 1)
        steps = params.steps if params.steps is not None else paper_steps(eps)
        return Work(grad=steps * params.eot_samples)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        p = self.params
        steps = p.steps if p.steps is not None else paper_steps(eps)

        def step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return project(x_adv + p.alpha * grad.sign(), x, eps)

        if p.early_stop:
            return attack_until_fooled(self.model, x, y, x.clone(), steps, step,
                                       samples=self.eot_samples)
        x_adv = x.clone()
        for _ in range(steps):
            x_adv = step(x_adv, self.input_gradient(x_adv, y), x)
        return x_adv


__all__ = ["BIM", "BIMParams", "paper_steps"]
