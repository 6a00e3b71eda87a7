"""Transfer attack: adversarial examples crafted on another defense's model of the same suite
(the *source*), then evaluated on the attacked model (the *target*). Papernot, McDaniel,
Goodfellow, "Transferability in Machine Learning", arXiv 1605.07277 (2016); used as a masking
diagnostic by Tramèr et al. 2018 (arXiv 1705.07204) and Athalye et al. 2018 (arXiv 1802.00420):
a black-box transfer attack that beats the white-box attacks on the target means the target's
gradients are masked, and its white-box numbers overstate its robustness.

The target is never differentiated (the base still puts it in eval mode); the harness hands the
source model to the attack (``needs_source_model``: the plan resolves ``source`` to a defense
of the suite, the runner defends it first and calls ``set_source``).

Arguments:
    source (default None): the label of the defense whose model crafts the examples; None is the
        suite's undefended entry (the ``none`` plugin's, whatever its label), as in the authors'
        setting of an undefended surrogate. A label not in the suite is an error at load time.
    attack (default ``pgd``): the registered attack that crafts the examples on the source.
    attack_params (default {}): its params, validated by its own schema at load time; the
        defaults make PGD-40 with alpha 0.01 and a random start, the suite's PGD. A crafting
        attack with an ``early_stop`` param (active-set PGD and BIM) crafts with
        ``early_stop: false`` unless given: the first iterate that fools the source barely
        crosses its decision boundary and transfers poorly; the final iterate is what the
        transfer literature crafts (ftramer/ensemble-adv-training ``attacks.py``).

The examples are crafted once per source model and reused for every target of the suite
(same source, crafting params, seed, images and eps: the same examples; kept in memory while the
source model lives), so a transfer column costs one crafting, not one per defense (within one
process: under ``--executor ray`` each attack task crafts its own, with the same result).

The crafting attack gets this attack's seed, so its random starts are per image as usual and
the examples are exactly those that attack would craft on the source directly (the same for
every target: differences between targets are theirs). Compared with the authors' evaluation
loop (ftramer/ensemble-adv-training ``simple_eval.py``: craft on ``src_model``, report the error
of each ``target_model`` on the same examples): the same protocol, with robench's accuracy
(correct before and after the attack on the target) instead of the error on the examples.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from torch import nn

from robench.attacks.base import ATTACKS, Attack, AttackParams, Norm, project
from robench.errors import nested_params_message
from robench.work import Work


class TransferParams(AttackParams):
    source: str | None = Field(None, min_length=1)
    attack: str = "pgd"
    attack_params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    _crafting: AttackParams = PrivateAttr()

    @field_validator("attack")
    @classmethod
    def _known_attack(cls, value: str) -> str:
        if value not in ATTACKS:
            raise ValueError(ATTACKS.unknown_message(value))
        if ATTACKS.get(value).family == "verifier":
            raise ValueError(f"{value!r} is a verifier, not an attack: it crafts no examples")
        if ATTACKS.get(value).needs_source_model:
            raise ValueError(f"{value!r} needs a source model itself; craft with a white-box "
                             "or black-box attack (e.g. pgd)")
        return value

    @field_validator("attack_params")
    @classmethod
    def _valid_attack_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "attack" not in info.data:  # the attack name itself was invalid
            return value
        name = info.data["attack"]
        schema = ATTACKS.get(name).Params
        field = schema.model_fields.get("early_stop")
        if field is not None and field.annotation is bool and "early_stop" not in value:
            # an active-set attack would stop at the first iterate that fools the source,
            # which barely crosses its boundary and transfers poorly: craft the final iterate
            value = {**value, "early_stop": False}
        try:
            validated = schema.model_validate(value)
        except ValidationError as err:
            raise ValueError(nested_params_message(err, f"for crafting attack {name!r}")) \
                from None
        # canonical: every default filled in, so equal settings give equal params and cells
        return validated.model_dump(mode="json")

    @model_validator(mode="after")
    def _typed_attack_params(self) -> TransferParams:
        self._crafting = ATTACKS.get(self.attack).Params.model_validate(self.attack_params)
        return self

    @property
    def crafting_params(self) -> AttackParams:
        """The validated params of the crafting attack (its own schema's instance)."""
        return self._crafting


@ATTACKS.register("transfer")
class Transfer(Attack):
    """Transfer attack: examples crafted on a source defense's model, evaluated on the target."""

    Params = TransferParams
    family = "transfer"
    needs_source_model = True
    label_params = ("source", "attack")

    def __init__(self, model: nn.Module, params: TransferParams | None = None,
                 seed: int = 0) -> None:
        super().__init__(model, params, seed)
        self._crafter: Attack | None = None

    @classmethod
    def budget(cls, params: TransferParams) -> int:
        return ATTACKS.get(params.attack).budget(params.crafting_params)

    @classmethod
    def work_per_image(cls, params: TransferParams, eps: float) -> Work:
        # crafted on the source model by the crafting attack; the target only classifies
        return ATTACKS.get(params.attack).work_per_image(params.crafting_params, eps)

    @classmethod
    def code_dependencies(cls, params: TransferParams) -> list[object]:
        return [ATTACKS.get(params.attack)]

    @classmethod
    def source_label(cls, params: TransferParams) -> str | None:
        return params.source

    def set_source(self, model: nn.Module) -> None:
        plugin = ATTACKS.get(self.params.attack)
        self._crafter = plugin(model, self.params.crafting_params, seed=self.seed)
        self._crafter.set_images(self._image_ids)

    @property
    def crafter(self) -> Attack:
        if self._crafter is None:
            raise RuntimeError("transfer attack without a source model: call set_source(model) "
                               "first (the runner does)")
        return self._crafter

    @classmethod
    def norm_of(cls, params: Any) -> Norm:
        """The crafting attack's threat model (an L2 transfer is an L2 attack)."""
        return ATTACKS.get(params.attack).norm_of(params.crafting_params)

    def set_images(self, image_ids: Sequence[int] | None) -> None:
        super().set_images(image_ids)
        if self._crafter is not None:  # the crafter draws the random starts, per image
            self._crafter.set_images(image_ids)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        return self.crafter(x, y, eps)

    def sweep(self, x: torch.Tensor, y: torch.Tensor,
              eps_list: Sequence[float]) -> Iterator[tuple[float, torch.Tensor]]:
        # the crafter's own sweep (FGSM shares its gradient); the target is never touched
        for eps, x_adv in self._crafted(x, y, [float(e) for e in eps_list]):
            yield eps, project(x_adv, x.detach(), eps, self.norm) if eps else x_adv

    def _crafted(self, x: torch.Tensor, y: torch.Tensor,
                 eps_list: list[float]) -> Iterator[tuple[float, torch.Tensor]]:
        """The crafter's examples, crafted once per source model for every target: the same
        source, crafting params, seed, named images (and their pixels and labels) and eps give
        the same examples, so later targets reuse them (kept while the source model lives)."""
        if self._image_ids is None:  # unnamed images: no identity to remember them by
            yield from self.crafter.sweep(x, y, eps_list)
            return
        memo = _CRAFTED.setdefault(self.crafter.model, {})
        images = (self.params.crafting_params.model_dump_json(), self.seed,
                  tuple(self._image_ids), tuple(y.tolist()), float(x.double().sum()))
        missing = [eps for eps in eps_list if (images, eps) not in memo]
        if missing:
            for eps, x_adv in self.crafter.sweep(x, y, missing):
                memo[(images, eps)] = x_adv.detach()
        for eps in eps_list:
            yield eps, memo[(images, eps)]


#: examples crafted on each source model, weakly keyed by the model object (freed with it)
_CRAFTED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, float], torch.Tensor]] = \
    weakref.WeakKeyDictionary()
