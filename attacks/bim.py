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
until then no eps-clip binds (``shared_steps``: while ``k * alpha <= eps_min - alpha / 2``, 25
steps of 1/255 for eps 0.1; each shared step also checks that the smallest eps's clip did not
bind, else the sweep goes eps by eps). The sweep runs those steps once, on the same
sub-batches the active set would run at each eps, then finishes each eps from that state: the
examples are bit-identical to attacking each eps on its own (``tests/test_bim_sweep.py``);
only the cost falls. The first eps > 0 of the sweep pays for the shared steps in its cell's
``attack_seconds``. Ray runs each eps as its own task (``robench.executors.ray``): no sharing
there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from pydantic import Field

from robench.attacks.active import Step, attack_until_fooled, fooled_by_margin
from robench.attacks.base import (
    ATTACKS,
    Attack,
    EOTParams,
    eval_mode,
    logits_and_gradient,
    own_rng,
    project,
)
from robench.work import Work


class BIMParams(EOTParams):
    steps: int | None = Field(None, ge=1)
    alpha: float = Field(1 / 255, gt=0, le=1)
    early_stop: bool = True     # active set: stop each image at its first fooling iterate


def paper_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count at ``eps`` (input scale): min(eps+4, 1.25 eps) in
    0-255 units, floored, at least 1."""
    return max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))


def _random_states(device: torch.device) -> list[torch.Tensor]:
    """torch's global random states that a forward pass on ``device`` could move."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


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
        once (module docstring), when the first eps > 0 needs them. A randomized model,
        ``early_stop: false``, fewer than two eps > 0, or shared steps in which the smallest
        eps's clip bound: each eps on its own."""
        x = x.detach()
        eps_list = [float(e) for e in eps_list]
        attacked = [e for e in eps_list if e > 0]
        shared = (min([shared_steps(min(attacked), self.params.alpha)]
                      + [self.steps_at(e) for e in attacked])
                  if len(attacked) > 1 and self.params.early_stop else 0)
        tried, state = shared == 0, None
        for eps in eps_list:
            if eps == 0:
                yield eps, x.clone()
                continue
            if not tried:
                tried, state = True, self._shared_steps(x, y, min(attacked), shared)
            if state is None:
                yield eps, self(x, y, eps)
                continue
            x_adv, left, running, active = state
            with eval_mode(self.model):
                adv = self._finish(x, y, x_adv.clone(), self._step(eps),
                                   left + torch.where(active, self.steps_at(eps) - shared, 0),
                                   running.clone())
            yield eps, project(adv, x, eps, self.norm)

    def _shared_steps(self, x: torch.Tensor, y: torch.Tensor, eps_min: float, shared: int
                      ) -> tuple[torch.Tensor, ...] | None:
        """The active set's state after ``shared`` steps at ``eps_min`` (iterates, steps left,
        running, attacked), as every larger eps would have reached it; None for a randomized
        model, or when an ``eps_min`` clip bound on the way (a larger eps would not have
        clipped: ``shared_steps`` leaves half a step for rounding, which a tiny ``alpha``
        summed over thousands of steps can exceed)."""
        if not self._deterministic(x):
            return None
        alpha, bound = self.params.alpha, False

        def step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            nonlocal bound
            moved = x_adv + alpha * grad.sign()
            stepped = project(moved, x, eps_min)
            # equal to the [0, 1] clamp alone: every eps >= eps_min gives this iterate
            bound = bound or not torch.equal(stepped, moved.clamp(0.0, 1.0))
            return stepped

        with eval_mode(self.model):
            with torch.no_grad():
                active = self.model(x).argmax(1) == y
            x_adv = x.clone()
            left = torch.where(active, shared, 0)
            running = left > 0
            self._iterate(x, y, x_adv, step, left, running, torch.zeros_like(active))
        return None if bound else (x_adv, left, running, active)

    def _step(self, eps: float) -> Step:
        alpha = self.params.alpha

        def step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return project(x_adv + alpha * grad.sign(), x, eps)

        return step

    def _iterate(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, step: Step,
                 left: torch.Tensor, running: torch.Tensor, forced: torch.Tensor) -> None:
        """The active set's inner loop, as ``robench.attacks.active`` runs it (same sub-batches,
        same stop test): step the ``running`` images in place until each is fooled or out of
        steps. A copy, not a shared helper, because editing ``active`` would change the code
        hash of every PGD and BPDA cell; ``tests/test_bim_sweep.py`` fails if the two drift
        apart (the sweep must equal ``attack_until_fooled`` bit for bit)."""
        while True:
            rows = (running & (left > 0)).nonzero().squeeze(1)
            if not rows.numel():
                return
            logits, grad = logits_and_gradient(self.model, x_adv[rows], y[rows],
                                               self.eot_samples)
            fooled = fooled_by_margin(logits, y[rows]) & ~forced[rows]
            moving = rows[~fooled]
            x_adv[moving] = step(x_adv[moving], grad[~fooled], x[moving])
            left[moving] -= 1
            forced[rows] = False
            running[rows[fooled]] = False

    def _deterministic(self, x: torch.Tensor) -> bool:
        """Whether two forward passes of ``x`` agree (``attack_until_fooled``'s test) and draw
        no random numbers, without moving the caller's random stream: a randomized model is
        attacked eps by eps and draws exactly what it drew before."""
        with own_rng(x.device), torch.no_grad(), eval_mode(self.model):
            before = _random_states(x.device)
            same = torch.equal(self.model(x), self.model(x))
            return same and all(torch.equal(a, b)
                                for a, b in zip(before, _random_states(x.device), strict=True))

    def _finish(self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, step: Step,
                left: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """``attack_until_fooled``'s loop from a state after the shared steps: the inner loop
        goes on where the shared one stopped, then the whole-batch check and resumptions."""
        forced = torch.zeros_like(running)
        while True:
            self._iterate(x, y, x_adv, step, left, running, forced)
            stopped = left > 0
            if not stopped.any():
                return x_adv
            with torch.no_grad():  # the whole batch, as the evaluation will classify it
                running = stopped & (self.model(x_adv).argmax(1) == y)
            if not running.any():
                return x_adv
            forced = running.clone()


__all__ = ["BIM", "BIMParams", "paper_steps", "shared_steps"]
