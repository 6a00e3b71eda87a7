"""Active-set iteration for gradient attacks (PGD, BIM): no step is spent on an image that is
already misclassified.

``attack_until_fooled`` runs the usual loop ``x <- step(x, grad)`` but, at every iterate, reads
the model's prediction from the forward pass the gradient needs anyway. An image whose current
iterate is misclassified (by more than ``STOP_MARGIN`` logits) leaves the active set and keeps
that iterate: the *first* fooling iterate, as AutoAttack's APGD keeps its best point (Croce &
Hein 2020, ``autoattack/autopgd_base.py`` keeps ``x_best_adv`` per image). An image the model
gets wrong before the attack is not attacked at all (it can never count as robust). Every other
image follows exactly the trajectory of the plain loop, so per image the result is never weaker
than the final iterate of the same loop: an image robust here went through all steps and ended
where the plain loop ends; an image fooled here is fooled at a point in the ball.

Gradients are per image (a sum of per-image losses, eval mode), so attacking a subset of the
batch gives each image the gradient it gets in the full batch, up to the float rounding of a
different batch size. ``STOP_MARGIN`` keeps that rounding from ever turning a "fooled" image
back into a correct one when the evaluation classifies the whole batch again: an image stops
only when some wrong class beats the true one by more than 1e-3 logits (float32 rounding of
LeNet's logits between batch sizes is about 1e-5); a barely fooled image keeps stepping, as in
the plain loop. The constant was fixed from that rounding bound, not from any attack result.

Cost: one extra forward pass on the clean batch; each step costs a forward and backward on the
images still active only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

#: a wrong class must beat the true class by more than this many logits to stop an image
STOP_MARGIN = 1e-3

#: ``step(x_adv, grad, x)`` -> the next iterate (projected), for a subset of the batch
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fooled_by_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Images whose best wrong class beats the true class by more than ``STOP_MARGIN``."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true > STOP_MARGIN


def attack_until_fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        start: torch.Tensor, steps: int, step: Step,
                        active: torch.Tensor | None = None) -> torch.Tensor:
    """``steps`` iterations of ``step`` from ``start``, each image stopping at its first
    fooling iterate; images the model gets wrong on ``x`` (or outside ``active``) keep ``x``.

    Returns the iterates (the first fooling one, else the last)."""
    with torch.no_grad():
        active = (model(x).argmax(1) == y) if active is None else active & (model(x).argmax(1) == y)
    x_adv = torch.where(active.view(-1, *([1] * (x.dim() - 1))), start, x)
    for _ in range(steps):
        rows = active.nonzero().squeeze(1)
        if not rows.numel():
            break
        logits, grad = _logits_and_gradient(model, x_adv[rows], y[rows])
        fooled = fooled_by_margin(logits, y[rows])
        moving = rows[~fooled]
        x_adv[moving] = step(x_adv[moving], grad[~fooled], x[moving])
        active[rows[fooled]] = False
    return x_adv


def _logits_and_gradient(model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the gradient of the summed cross-entropy w.r.t. the input (one forward and
    one backward; parameters' ``.grad`` untouched), as ``robench.attacks.base.input_gradient``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x,
                                      only_inputs=True)
    return logits.detach(), grad


__all__ = ["STOP_MARGIN", "attack_until_fooled", "fooled_by_margin"]
