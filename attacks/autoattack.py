"""AutoAttack: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020 (arXiv 2003.01690). L-infinity (default) or L2
(``norm: l2``), untargeted in outcome, true labels, inputs in [0, 1].

``norm: l2`` runs the same four components with torchattacks' ``norm='L2'`` (the reference's
``set_version('standard')`` uses the same list, apgd-ce, apgd-t, fab-t, square, for Linf and
L2); our driver and its projection are norm-aware (``robench.attacks.base.project``).

``version: standard`` (the default) is the paper's standard version as set by
``AutoAttack.set_version('standard')`` and run by ``run_standard_evaluation`` in the reference
file fra31/auto-attack ``autoattack/autoattack.py``, in this order:

1. APGD-CE: cross-entropy loss, 100 iterations, 1 restart.
2. APGD-T: targeted DLR loss, 9 target classes (the 2nd..10th largest clean logits), 100
   iterations and 1 restart per target.
3. FAB-T: FAB aimed at the same 9 target classes, 100 iterations, 1 restart per target.
4. Square: 5000 queries, ``p_init`` 0.8, 1 restart, margin loss, fixed ``p`` schedule.

Images misclassified clean are never attacked. Each component runs only on the images that every
earlier component failed to break, and each image keeps the first adversarial example found
(checked with a fresh forward pass), so robust accuracy counts an image only if it is correct
clean and survives all four.

Where and why this deviates from the reference:

- Component code: torchattacks 3.5.1's ports ``APGD``, ``APGDT``, ``FAB`` and ``Square`` run the
  components, not fra31's files. The driver (order, subsets, first success kept) is ours; we do
  not use ``torchattacks.AutoAttack``, whose components keep torchattacks' default of 10
  iterations (torchattacks issue #196). The settings that torchattacks names differently:
  iterations are ``steps`` (the reference's ``n_iter``); APGD-T's and FAB's target count is
  ``n_classes - 1`` (there is no ``n_target_classes`` argument), so we pass ``n_classes =
  targets + 1``; FAB-T is ``FAB(multi_targeted=True)``. FAB's ``targeted`` attribute, or
  torchattacks' ``set_mode_targeted_*``, means one user-chosen target per image, which is not
  FAB-T. torchattacks' ``Square`` defaults to ``resc_schedule=True``; the reference's standard
  version uses ``resc_schedule=False``, and so do we.
- Target count: the reference fixes 9 target classes and only warns (``checks.check_n_classes``)
  when the model has fewer than 10 classes; we use ``min(9, n_classes - 1)`` and refuse models
  with fewer than 4 classes, for which the targeted DLR loss is undefined.
- Seeds: the reference's default ``seed=None`` reseeds every component from ``time.time()``;
  we give every component the plugin's ``seed``, so runs repeat. Like the reference, the
  components reseed torch's global generator when they start; we run them inside
  ``torch.random.fork_rng`` so the caller's random stream is left as it was.
- Batching: the reference attacks in batches of 250 (``bs``); we attack the batch the harness
  passes in one call. Only the random draws differ.
- Gradient mode: like the reference, the components run inside ``torch.no_grad()`` (they
  enable gradients where they need them). Earlier robench ran them with gradients on, which
  gave the same examples but kept every APGD/APGD-T iterate alive in an autograd graph
  (torchattacks records its best-iterate copies): several GB on 1000 images.
- The reference's automatic warnings (randomised or dynamic model, probabilities instead of
  logits, Square beating the gradient attacks) are not run here; robench's ``checks`` module
  covers some of them per suite.
- Success is checked on the example after projection onto the eps-ball and [0, 1] (the
  components already stay inside both), so what is kept is what the harness scores.

``eot_samples`` k > 1 (EOT, for randomized defenses; version standard only): APGD-CE and
APGD-T get torchattacks' ``eot_iter=k`` (each iteration's gradient averaged over k passes, as
the reference's ``version='rand'`` does with ``eot_iter=20``); FAB-T (torchattacks has no EOT
for it) and Square (gradient-free) run unchanged. Unlike the other gradient attacks, this
averaging is torchattacks' own, not ``robench.attacks.base.input_gradient``.

``version: fast`` is NOT the standard version: it is ``torchattacks.AutoAttack(version=
'standard')`` unchanged, with the same four components at torchattacks' defaults (10 iterations
for APGD-CE, APGD-T and FAB-T; Square with 5000 queries and the rescaled ``p`` schedule). It is
weaker, overstates robust accuracy, and is kept only for quick runs and for comparison with
earlier robench results, which used it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from pydantic import model_validator

from robench.attacks.base import (
    ATTACKS,
    TORCHATTACKS_NORM,
    Attack,
    EOTParams,
    Norm,
    own_rng,
    project,
)
from robench.work import Work

if TYPE_CHECKING:
    import torchattacks

#: The reference's standard-version settings (fra31/auto-attack, ``set_version('standard')``).
STANDARD_ITERATIONS = 100
STANDARD_TARGETS = 9
STANDARD_QUERIES = 5000
STANDARD_P_INIT = 0.8
#: torchattacks' default iterations for the components of its ``AutoAttack`` (``version: fast``)
FAST_ITERATIONS = 10
#: The targeted DLR loss divides by the gap between the 1st and the 3rd/4th largest logits.
MIN_CLASSES = 4


class Component(NamedTuple):
    """One stage of AutoAttack: its reference name and the attack object that runs it.

    ``attack`` is called as ``attack(x, y)`` and returns adversarial examples for (x, y); for the
    built-in versions it is a configured torchattacks attack whose own attributes (``steps``,
    ``n_restarts``, ``n_target_classes``, ``n_queries``, ``seed``) are the settings that run.
    """

    name: str
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AutoAttackParams(EOTParams):
    version: Literal["standard", "fast"] = "standard"
    norm: Norm = "linf"

    @model_validator(mode="after")
    def _eot_in_standard(self) -> AutoAttackParams:
        if self.eot_samples > 1 and self.version != "standard":
            raise ValueError("eot_samples > 1 needs version standard (torchattacks' "
                             "AutoAttack, version fast, has no EOT)")
        return self


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020), L-inf or L2 (``norm``), seeded.

    Params:
        version: ``"standard"`` (default): the paper's standard version, APGD-CE, APGD-T (9
            targets), FAB-T (9 targets), each 100 iterations, then Square with 5000 queries,
            each on the images the previous ones failed on. ``"fast"``: NOT the standard
            version; torchattacks' ``AutoAttack`` with its 10-iteration components, weaker, for
            quick runs and comparison with earlier results only.
    """

    Params = AutoAttackParams
    family = "ensemble"
    label_params = ("version", "norm", "eot_samples")

    @classmethod
    def budget(cls, params: AutoAttackParams) -> int:
        """Gradient steps plus queries per image, every component run to the end (an upper
        bound: each component only attacks the images the earlier ones left robust)."""
        return int(sum(cls.work_per_image(params, 1.0)))

    @classmethod
    def work_per_image(cls, params: AutoAttackParams, eps: float) -> Work:
        # APGD-CE, APGD-T and FAB-T per target: input gradients; Square: forward queries
        steps = STANDARD_ITERATIONS if params.version == "standard" else FAST_ITERATIONS
        eot = params.eot_samples
        return Work(grad=steps * ((1 + STANDARD_TARGETS) * eot + STANDARD_TARGETS),
                    forward=STANDARD_QUERIES)

    @classmethod
    def reduced_variant(cls, params: AutoAttackParams) -> str | None:
        return None if params.version == "standard" else f"version={params.version}"

    def components(self, eps: float, n_classes: int) -> list[Component]:
        """The configured components, in the order they run, for a model with ``n_classes``."""
        import torchattacks

        if self.params.version == "fast":
            fast = self._torchattacks_autoattack(eps, n_classes)
            names = ("apgd-ce", "apgd-t", "fab-t", "square")
            return [Component(n, a) for n, a in zip(names, fast._autoattack.attacks, strict=True)]
        if n_classes < MIN_CLASSES:
            raise ValueError(f"autoattack: the standard version needs at least {MIN_CLASSES} "
                             f"classes (targeted DLR loss), the model has {n_classes}")
        targets = min(STANDARD_TARGETS, n_classes - 1)
        common = {"norm": TORCHATTACKS_NORM[self.norm], "eps": eps, "seed": self.seed,
                  "n_restarts": 1}
        return [
            Component("apgd-ce", torchattacks.APGD(
                self.model, steps=STANDARD_ITERATIONS, loss="ce", eot_iter=self.eot_samples,
                rho=0.75, **common)),
            Component("apgd-t", torchattacks.APGDT(
                self.model, steps=STANDARD_ITERATIONS, n_classes=targets + 1,
                eot_iter=self.eot_samples, rho=0.75, **common)),
            Component("fab-t", torchattacks.FAB(
                self.model, steps=STANDARD_ITERATIONS, multi_targeted=True,
                n_classes=targets + 1, alpha_max=0.1, eta=1.05, beta=0.9, **common)),
            Component("square", torchattacks.Square(
                self.model, n_queries=STANDARD_QUERIES, p_init=STANDARD_P_INIT, loss="margin",
                resc_schedule=False, **common)),
        ]

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)  # one pass: the class count and the clean predictions
        n_classes, clean_pred = int(logits.shape[1]), logits.argmax(1)
        # Like the reference's ``run_standard_evaluation`` (all components inside
        # ``torch.no_grad()``): the components build their own graphs in ``enable_grad``
        # blocks, but torchattacks 3.5.1's APGD/APGD-T copy each step's iterate into their
        # best-so-far tensor outside one, which chained every step's iterate into one autograd
        # graph kept alive to the end (+1 GB for 2 target classes on 1000 images).
        with own_rng(x.device), torch.no_grad():
            if self.params.version == "fast":
                return self._torchattacks_autoattack(eps, n_classes)(x, y)
            return self._cascade(self.components(eps, n_classes), x, y, eps, clean_pred)

    def _cascade(self, components: list[Component], x: torch.Tensor, y: torch.Tensor,
                 eps: float, clean_pred: torch.Tensor) -> torch.Tensor:
        """Run the components in order, each on the images still robust; keep first successes."""
        x_adv = x.clone()
        robust = clean_pred == y  # images misclassified clean are never attacked
        for component in components:
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_sub, y_sub = x[idx], y[idx]
            adv = project(component.attack(x_sub, y_sub).detach(), x_sub, eps, self.norm)
            fooled = self.model(adv).argmax(1) != y_sub
            x_adv[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        return x_adv

    def _torchattacks_autoattack(self, eps: float, n_classes: int) -> torchattacks.AutoAttack:
        import torchattacks

        return torchattacks.AutoAttack(self.model, norm=TORCHATTACKS_NORM[self.norm], eps=eps,
                                       version="standard",
                                       n_classes=n_classes, seed=self.seed)
