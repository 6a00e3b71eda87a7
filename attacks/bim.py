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

Sweeps share their first steps (``sweep``, active set on a deterministic model): from x, every
eps follows the same iterates until one of them could reach the smallest eps's boundary, since
until then no eps-clip binds (``shared_steps``: while ``k * alpha <= eps_min - alpha / 2``, 24
steps of 1/255 for eps 0.1; float rounding of the iterates stays below 1e-5 there). The sweep
runs those steps once, on the same sub-batches the active set would run at each eps, then
finishes each eps from that state: the examples are bit-identical to attacking each eps on
its own (``tests/test_bim_sweep.py``); only the cost falls. A cell's ``attack_seconds`` then
includes the shared steps when its eps is the first of the sweep to need them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from pydantic import Field

# ``_iterate`` is the active set's inner loop: the sweep runs it on a shared prefix and then
# per eps, so that every sub-batch is the one ``attack_until_fooled`` would have stepped
from robench.attacks.active import Step, _iterate, attack_until_fooled
from robench.attacks.base import ATTACKS, Attack, EOTParams, eval_mode, own_rng, project
from robench.work import Work


class BIMParams(EOTParams):
    steps: int | None = Field(None, ge=1)
    alpha: float = Field(1 / 255, gt=0, le=1)
    early_stop: bool = True     # active set: stop each image at its first fooling iterate


def paper_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count at ``eps`` (input scale): min(eps+4, 1.25 eps) in
    0-255 units, floored, at least 1."""
    return max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))


def shared_steps(eps_min: float, alpha: float) -> int:
    """Steps from x that no eps >= ``eps_min`` clips: the largest k with k * alpha <= eps_min -
    alpha / 2 (the half step is far above the float rounding of k additions)."""
    return max(0, math.floor((eps_min - alpha / 2) / alpha))


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
        steps, step = self.steps_at(eps), self._step(eps)
        if self.params.early_stop:
            return attack_until_fooled(self.model, x, y, x.clone(), steps, step,
                                       samples=self.eot_samples)
        x_adv = x.clone()
        for _ in range(steps):
            x_adv = step(x_adv, self.input_gradient(x_adv, y), x)
        return x_adv

    def steps_at(self, eps: float) -> int:
        """The iterations at ``eps``: the fixed ``steps`` or the paper's rule."""
        return self.params.steps if self.params.steps is not None else paper_steps(eps)

    def sweep(self, x: torch.Tensor, y: torch.Tensor,
              eps_list: Sequence[float]) -> Iterator[tuple[float, torch.Tensor]]:
        """Each eps's examples, as ``self(x, y, eps)`` gives them, the first shared steps run
        once (module docstring). A randomized model, ``early_stop: false`` or fewer than two
        eps > 0 attack each eps on its own."""
        x = x.detach()
        attacked = [float(e) for e in eps_list if e > 0]
        alpha = self.params.alpha
        shared = (min([shared_steps(min(attacked), alpha)] + [self.steps_at(e) for e in attacked])
                  if len(attacked) > 1 and self.params.early_stop else 0)
        if shared == 0 or not self._deterministic(x):
            yield from super().sweep(x, y, eps_list)
            return
        with eval_mode(self.model):
            with torch.no_grad():
                active = self.model(x).argmax(1) == y
            x_adv = x.clone()
            left = torch.where(active, shared, 0)
            running = left > 0
            _iterate(self.model, x, y, x_adv, self._step(min(attacked)), left, running,
                     torch.zeros_like(active), samples=self.eot_samples)
        for eps in (float(e) for e in eps_list):
            if eps == 0:
                yield eps, x.clone()
                continue
            with eval_mode(self.model):
                adv = self._finish(x, y, x_adv.clone(), self._step(eps),
                                   left + torch.where(active, self.steps_at(eps) - shared, 0),
                                   running.clone())
            yield eps, project(adv, x, eps, self.norm)

    def _step(self, eps: float) -> Step:
        alpha = self.params.alpha

        def step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return project(x_adv + alpha * grad.sign(), x, eps)

        return step

    def _deterministic(self, x: torch.Tensor) -> bool:
        """Whether two forward passes of ``x`` agree (``attack_until_fooled``'s test), without
        moving the caller's random stream, so a randomized model's per-eps runs draw as
        before."""
        with own_rng(x.device), torch.no_grad(), eval_mode(self.model):
            return torch.equal(self.model(x), self.model(x))

    def _finish(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, step: Step,
                left: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """``attack_until_fooled``'s loop from a state after the shared steps: the inner loop
        goes on where the shared one stopped, then the whole-batch check and resumptions."""
        forced = torch.zeros_like(running)
        while True:
            _iterate(self.model, x, y, x_adv, step, left, running, forced,
                     samples=self.eot_samples)
            stopped = left > 0
            if not stopped.any():
                return x_adv
            with torch.no_grad():  # the whole batch, as the evaluation will classify it
                running = stopped & (self.model(x_adv).argmax(1) == y)
            if not running.any():
                return x_adv
            forced = running.clone()


__all__ = ["BIM", "BIMParams", "paper_steps", "shared_steps"]
