"""The attack base class: owns the surroundings so a plugin writes only its math.

Like torchattacks' ``Attack``, the base sets the model to eval mode (and restores it), keeps
inputs in the valid range [0, 1], projects onto the L-infinity ball of radius ``eps`` (given in
input scale, never 0-255), and computes input gradients without leaking gradients into the
model's parameters. A plugin subclasses ``Attack``, declares a pydantic ``Params`` model and
its traits (``family``, ...), and implements ``perturb(x, y, eps)``.

Traits are what the harness asks of an attack instead of testing its name: the checks and the
leaderboard treat every ``single_step`` attack as they treat FGSM, every ``iterative`` one as
they treat PGD, and so on, so a third-party attack gets the checks of its family.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn import functional as F

from robench.models import eval_mode, output_classes
from robench.registry import Registry

#: single_step: one gradient step (FGSM); iterative: many gradient steps (PGD); ensemble: a
#: fixed ensemble of strong attacks (AutoAttack); black_box: never reads gradients (Square)
Family = Literal["single_step", "iterative", "ensemble", "black_box"]


class AttackParams(BaseModel):
    """Base for every attack's parameter schema: unknown keys and wrong types are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input only (parameters' ``.grad``
    untouched)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(value, x, only_inputs=True)
    return grad


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball around x and onto the valid input range [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


class Attack:
    """Base of every attack plugin (L-infinity, untargeted, true labels, inputs in [0, 1]).

    Args:
        model: the (defended) model under attack; inputs in [0, 1], logits out.
        params: an instance of the subclass's ``Params`` (validated by the suite schema).
        seed: seeds the attack's own random generator (random starts), so runs repeat.
    """

    Params: ClassVar[type[AttackParams]] = AttackParams
    #: what kind of attack this is (see ``Family``); checks and the leaderboard ask this
    family: ClassVar[Family] = "iterative"
    #: True when one sweep over several eps shares work (FGSM: one gradient for all eps).
    shares_work_across_eps: ClassVar[bool] = False
    #: allowed |native - backend| accuracy difference per reference backend; 0 means the
    #: backend must agree exactly (a failed check, not a warning, when it does not)
    backend_tolerance: ClassVar[dict[str, float]] = {}

    def __init__(self, model: nn.Module, params: AttackParams | None = None, seed: int = 0) -> None:
        self.model = model
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # CPU: same noise on every device
        self._num_classes: int | None = None

    # -- traits read from params (override when a plugin has such params) ------------------
    @classmethod
    def gradient_based(cls) -> bool:
        return cls.family != "black_box"

    @classmethod
    def budget(cls, params: Any) -> int:
        """Gradient steps (or queries) per image: a larger budget should not be weaker."""
        return 1

    @classmethod
    def backend(cls, params: Any) -> str:
        """Which implementation computes the examples (``native`` = robench's own)."""
        return str(getattr(params, "backend", "native"))

    # -- what a plugin writes -------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    # -- what the base owns ---------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial examples for (x, y) within ``eps``; eps 0 returns x unchanged."""
        x = x.detach()
        if eps == 0:
            return x.clone()
        params = list(self.model.parameters())
        saved_grads = [p.grad for p in params]
        with eval_mode(self.model):
            x_adv = self.perturb(x, y, float(eps))
        # library attacks (torchattacks' AutoAttack) call loss.backward(): undo what they leave
        for param, grad in zip(params, saved_grads, strict=True):
            param.grad = grad
        return project(x_adv.detach(), x, float(eps))

    def sweep(self, x: torch.Tensor, y: torch.Tensor,
              eps_list: Sequence[float]) -> Iterator[tuple[float, torch.Tensor]]:
        """Adversarial examples at each eps; attacks that can share work override this."""
        for eps in eps_list:
            yield eps, self(x, y, eps)

    def num_classes(self, x: torch.Tensor) -> int:
        """The model's number of classes (one forward pass, the first time)."""
        if self._num_classes is None:
            self._num_classes = output_classes(self.model, x)
        return self._num_classes

    def uniform_noise(self, like: torch.Tensor, eps: float) -> torch.Tensor:
        """Uniform noise in [-eps, eps] from the attack's seeded generator."""
        noise = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        return noise.mul_(2 * eps).sub_(eps).to(like.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


ATTACKS: Registry[type[Attack]] = Registry("attack", entry_point_group="robench.attacks",
                                           base=Attack)

__all__ = ["ATTACKS", "Attack", "AttackParams", "Family", "eval_mode", "input_gradient",
           "project"]
