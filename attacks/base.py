"""The attack base class: owns the surroundings so a plugin writes only its math.

Like torchattacks' ``Attack``, the base sets the model to eval mode (and restores it), keeps
inputs in the valid range [0, 1], projects onto the L-infinity ball of radius ``eps`` (given in
input scale, never 0-255), and computes input gradients without leaking gradients into the
model's parameters. A plugin subclasses ``Attack``, declares a pydantic ``Params`` model, and
implements ``perturb(x, y, eps)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn import functional as F

from robench.registry import Registry

ATTACKS: Registry = Registry("attack", entry_point_group="robench.attacks")


class AttackParams(BaseModel):
    """Base for every attack's parameter schema: unknown keys and wrong types are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the duration, then restore each one's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.train(flag)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss: str = "ce") -> torch.Tensor:
    """Gradient of the summed loss w.r.t. the input only (``.grad`` of parameters untouched)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        value = F.cross_entropy(logits, y, reduction="sum")
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

    Params: type[AttackParams] = AttackParams
    #: True when one sweep over several eps shares work (FGSM: one gradient for all eps).
    shares_work_across_eps: bool = False

    def __init__(self, model: nn.Module, params: AttackParams | None = None, seed: int = 0) -> None:
        self.model = model
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # CPU: same noise on every device

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

    def uniform_noise(self, like: torch.Tensor, eps: float) -> torch.Tensor:
        """Uniform noise in [-eps, eps] from the attack's seeded generator."""
        noise = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        return noise.mul_(2 * eps).sub_(eps).to(like.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
