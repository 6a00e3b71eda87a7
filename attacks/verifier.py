"""The verifier base: an evaluation plugin that proves robustness instead of attacking.

An attack gives an upper bound on robust accuracy (it finds some of the adversarial examples);
a verifier gives a lower bound (an image it certifies has no adversarial example in the
L-infinity ball of radius ``eps`` intersected with [0, 1], whatever attack is run). Both go
through the one evaluation loop (``robench.evaluation.evaluate_attack``), which asks a plugin of
the ``verifier`` family for ``certify(x, y, eps)`` instead of adversarial examples; the per-image
outcome stored is ``adv_correct = certified``. The plan gives every verifier entry the role
``bound``: its rows never enter the worst case (a bound, not an attack), the leaderboard shows
them as ``verified@eps`` and the checks test that no attack beats them (``bounds_hold``).

Like ``Attack``, the base owns the surroundings: eval mode (set and restored), no gradient into
the model's parameters, the input box ``[max(x - eps, 0), min(x + eps, 1)]``, the batch cap
(``params.batch_size`` images per bound computation) and the rule that only a correctly
classified image can be certified. A plugin writes ``margin_bounds(lo, hi, y)``: for every
image an upper bound on ``z_j - z_y`` for every class ``j`` (0 at ``j = y``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robench.attacks.base import Attack, Family
from robench.models import eval_mode

#: how many images one bound computation handles when a plugin's params do not say
DEFAULT_BATCH = 1000


class Verifier(Attack):
    """Base of every verifier plugin (L-infinity, inputs in [0, 1], true labels)."""

    family: ClassVar[Family] = "verifier"
    #: True when a certificate holds with a probability below 1 (``smoothing``: 1 - alpha per
    #: image, for the infinite-sample smoothed classifier): the checks then treat a certified
    #: image that an attack breaks as a warning, and its eps-0 row as below clean accuracy
    probabilistic: ClassVar[bool] = False

    @classmethod
    def check_model(cls, model: nn.Module, model_name: str, params: Any) -> None:
        """Raise a one-line ``UserError`` when this verifier cannot handle ``model`` (an
        unsupported layer, a missing library). The plan calls it on the suite's model before
        any work; ``certify`` meets the same error on a defended model that wraps it."""

    @classmethod
    def check_defense(cls, defense: Any, params: Any, label: str) -> None:
        """Raise a one-line ``UserError`` when this verifier cannot certify the defense plugin
        ``defense`` with ``params`` (labelled ``label`` in the suite); the plan calls it for
        every defense before any work (``smoothing`` needs a Gaussian-noise defense)."""

    def margin_bounds(self, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor
                      ) -> torch.Tensor:
        """Upper bounds (batch, classes) on ``logit_j - logit_y`` over the box [lo, hi]."""
        raise NotImplementedError

    def certify(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Bool (batch,): correctly classified and every other logit provably below the true
        one everywhere in the eps-ball (strictly: a tie is not a proof)."""
        x = x.detach()
        cap = int(getattr(self.params, "batch_size", DEFAULT_BATCH))
        params = list(self.model.parameters())
        saved = [p.grad for p in params]
        parts = []
        with eval_mode(self.model), torch.no_grad():
            for start in range(0, x.shape[0], cap):
                xb, yb = x[start:start + cap], y[start:start + cap]
                correct = self.model(xb).argmax(1) == yb
                lo, hi = (xb - eps).clamp(0.0, 1.0), (xb + eps).clamp(0.0, 1.0)
                upper = self.margin_bounds(lo, hi, yb)
                others = upper.scatter(1, yb[:, None], float("-inf"))
                parts.append(correct & (others.amax(1) < 0))
        for param, grad in zip(params, saved, strict=True):
            param.grad = grad
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=x.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is a verifier: it certifies images "
                        "(certify) and crafts no adversarial examples")

    def sweep(self, x: torch.Tensor, y: torch.Tensor, eps_list: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is a verifier: use certify, not sweep")


__all__ = ["Verifier"]
