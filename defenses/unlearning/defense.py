"""The seed paper's defense: repeated FGSM-then-unlearn rounds.

Khorasani, Jahanian, Rastgarpour, "Protecting the Neural Networks against FGSM Attack Using
Machine Unlearning", arXiv 2511.01377 (2025). Their loop: train LeNet on clean MNIST → generate
FGSM adversarial examples against the current model → "unlearn" them → repeat. The harness
trains the baseline; this plugin runs the rounds on a private copy of it. Each round:

1. **Sample** ``forget_size`` training images (a fresh seeded sample every round).
2. **Attack** them with robench's FGSM (``attack: fgsm``, the paper's) or PGD (``attack: pgd``)
   against the *current* model, each image at an eps drawn uniformly from ``eps`` (or at
   ``eps`` itself when it is a number).
3. **Forget set** = the adversarial examples the current model misclassifies, labelled with the
   wrong class the model gives them: that input→answer association is what is unlearned.
   Their clean labels travel along (``forget_true_labels``) so methods can avoid them.
4. **Retain set** = ``retain_size`` clean training images (fresh seeded sample; ``null`` = the
   whole training split), plus — only with ``retain_adversarial: true`` — the forget inputs with
   their *true* labels (which makes the round partly adversarial training, hence off by default).
5. **Unlearn** with ``method`` (any registered unlearning method; ``method_params`` are
   validated by that method's own schema when the suite is loaded). An empty forget set (the
   model already resists every sampled example) skips the method for that round.

Per-round metrics (``defense_metrics.csv``; ``step`` = round, step 0 = the baseline before any
unlearning, ``method`` = the method's name): ``forget_size``; ``forget_attack_success`` (share of
this round's forget inputs still given their adversarial label after the round);
``forget_true_acc`` (true-label accuracy on them); ``clean_acc`` and ``fgsm_acc`` (a fresh FGSM
at the largest eps against the current model) on the validation split (held out of the
training split, never the test split), or ``monitor_limit`` random images of it; ``seconds``
(forget-set generation + unlearning; monitoring excluded).
There is no "retrain without the forget set" reference: the adversarial examples were never
training data, so that reference would be the baseline itself.

Choices the paper leaves open (its eps grid, epochs, learning rate and unlearning loss are not
public in what we could read), and why:

- ``eps`` defaults to the grid [0.05, 0.1, …, 0.3] sampled per image: the PyTorch FGSM tutorial's
  grid for LeNet/MNIST, which is also the FGSM sweep of ``suites/fgsm_lenet.yaml``, so the forget
  set covers the strengths the defense is evaluated at instead of one point.
- ``method`` defaults to ``neggrad_plus`` (β·CE(retain) − (1−β)·CE(forget), Kurmanji et al. 2023):
  the abstract describes unlearning as removing the perturbed examples' effect while
  "retraining ... on the original data without the added perturbations"; NegGrad+ is the
  standard method that does both (ascent on the forget set, descent on clean data). Plain
  retraining on clean data alone is available as ``method: finetune``.
  NegGrad+'s β defaults to 0.98 (see ``neggrad_plus``): values near 1 as in Kurmanji et al.;
  lower β forgets more but costs clean accuracy.
- ``rounds: 5``, ``forget_size: 2000``, ``retain_size: 10000``: a few rounds so the "repeat"
  matters (later rounds attack an already-changed model), each with a forget set of about a
  thousand misclassified examples (a 5-epoch LeNet-5 is fooled on about half of the sampled
  images) and a clean retain sample 5× the attacked sample. In ``suites/fgsm_lenet.yaml`` this
  measured 16 s per entry for the default method and 28 s for SCRUB (the slowest) on two CPU
  cores, inside the one-minute budget per defense.
- ``attack: fgsm``: the paper's. ``attack: pgd`` asks whether unlearning stronger examples
  helps: PGD (Madry et al. 2018) with a uniform random start, ``PGD_STEPS`` = 10 steps of
  ``alpha = 2.5 * eps / 10`` at each image's eps (Madry et al.'s step rule 2.5·eps/steps, so
  the iterate can cross the ball and back; 10 steps as in the common PGD-10 training attack),
  random starts drawn per image from ``derive_seed(seed, "attack", r)`` and the image's
  dataset index. PGD at every eps costs about 10 FGSMs per image (each image is attacked only
  at its own eps). The per-round ``fgsm_acc`` monitor stays FGSM either way.
- ``retain_adversarial: false``: the paper "unlearns" adversarial examples; training them
  towards their true labels would be adversarial training, a different defense.
- ``monitor_limit: null``: the per-round metrics use the whole validation split (``0``: no
  per-round clean/FGSM monitor; the same meaning as in ``adversarial_training``), as the
  harness's own evaluation does; big suites set e.g. 1000 (FGSM on 10 000 images every round
  would cost more than the unlearning itself). Monitoring never affects the defended weights.
- The optimizer, learning rate and batch size default to the suite's ``train:`` section unless
  the method's own defaults (from its paper) say otherwise.
- Seeds: round ``r`` samples its images and eps with ``derive_seed(seed, "round", r)`` and runs
  the method with ``derive_seed(seed, "method", r)``, so a run repeats exactly and rounds
  differ.
- ``method_params`` are validated by the method's schema when the suite is loaded and stored
  canonically (every default filled in), so two suites that spell the same method settings
  differently share one cache entry.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

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

from robench.attacks import ATTACKS, Attack, create_attack
from robench.data import Split
from robench.defenses.base import DEFENSES, Defense, DefenseContext, DefenseParams, DefenseResult
from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    UnlearningData,
    UnlearningParams,
)
from robench.eps import canonical_eps
from robench.errors import nested_params_message
from robench.evaluation import evaluate_attack
from robench.seeds import derive_seed, generator
from robench.training import TrainConfig, predict
from robench.work import Work

DEFAULT_EPS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
GENERATION_BATCH = 1000
PGD_STEPS = 10          # attack: pgd (see the module docstring)
PGD_STEP_FACTOR = 2.5   # alpha = PGD_STEP_FACTOR * eps / PGD_STEPS


class UnlearningDefenseParams(DefenseParams):
    rounds: int = Field(5, ge=1)
    forget_size: int = Field(2000, ge=1)           # training images attacked per round
    retain_size: int | None = Field(10_000, ge=1)  # clean training images per round; None: all
    eps: list[float] = Field(default_factory=lambda: list(DEFAULT_EPS))
    retain_adversarial: bool = False
    attack: Literal["fgsm", "pgd"] = "fgsm"         # which attack makes the forget set
    method: str = "neggrad_plus"
    method_params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    monitor_limit: int | None = Field(None, ge=0)  # per-round metrics: N validation images; 0 off
    _method: UnlearningParams = PrivateAttr()

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_range(cls, value: Any) -> list[float]:
        """Canonical: always a list of canonical eps (``0.3`` and ``[0.3]`` are one setting)."""
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("eps list must not be empty")
        for eps in values:
            if isinstance(eps, bool) or not isinstance(eps, int | float):
                raise ValueError(f"eps must be a number or a list of numbers (got {eps!r})")
            if not 0 < eps <= 1:
                raise ValueError(f"eps must be in (0, 1], input scale (got {eps!r})")
        return [canonical_eps(e) for e in values]

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in UNLEARNING_METHODS:
            raise ValueError(UNLEARNING_METHODS.unknown_message(value))
        return value

    @field_validator("method_params")
    @classmethod
    def _valid_method_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "method" not in info.data:  # the method name itself was invalid
            return value
        method = info.data["method"]
        try:
            validated = UNLEARNING_METHODS.get(method).Params.model_validate(value)
        except ValidationError as err:
            raise ValueError(nested_params_message(err, f"for unlearning method {method!r}")) \
                from None
        # canonical: every default filled in, so equal settings give equal params and keys
        return validated.model_dump(mode="json")

    @model_validator(mode="after")
    def _typed_method_params(self) -> UnlearningDefenseParams:
        self._method = UNLEARNING_METHODS.get(self.method).Params.model_validate(
            self.method_params)
        return self

    @property
    def method_config(self) -> UnlearningParams:
        """The validated params of ``method`` (its own schema's instance)."""
        return self._method

    @property
    def eps_values(self) -> list[float]:
        return list(self.eps)


def adversarial_examples(attack: Attack, images: torch.Tensor, labels: torch.Tensor,
                         eps_values: list[float], eps_index: torch.Tensor,
                         batch_size: int = GENERATION_BATCH) -> torch.Tensor:
    """Image ``i`` attacked at ``eps_values[eps_index[i]]`` (one sweep per batch: FGSM shares
    its single gradient across the eps values)."""
    out = torch.empty_like(images)
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        which = eps_index[start:start + batch_size]
        chunk = out[start:start + batch_size]
        for k, (_, x_adv) in enumerate(attack.sweep(x, y, eps_values)):
            chunk[which == k] = x_adv[which == k]
    return out


def pgd_examples(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 eps_values: list[float], eps_index: torch.Tensor, image_ids: torch.Tensor,
                 seed: int, batch_size: int = GENERATION_BATCH) -> torch.Tensor:
    """Image ``i`` attacked by PGD at ``eps_values[eps_index[i]]`` only (``PGD_STEPS`` steps of
    ``PGD_STEP_FACTOR * eps / PGD_STEPS``), its random start drawn from ``seed`` and its id."""
    out = images.clone()
    for k, eps in enumerate(eps_values):
        rows = (eps_index == k).nonzero().squeeze(1)
        if not rows.numel():
            continue
        # the final iterate, as PGD training data is made (not the active-set first fooling one)
        attack = create_attack("pgd", model, {"steps": PGD_STEPS, "early_stop": False,
                                              "alpha": PGD_STEP_FACTOR * eps / PGD_STEPS},
                               seed=seed)
        for start in range(0, rows.numel(), batch_size):
            chunk = rows[start:start + batch_size]
            attack.set_images(image_ids[chunk.cpu()].tolist())  # ids live on the CPU
            out[chunk] = attack(images[chunk], labels[chunk], eps)
    return out


def build_forget_set(model: nn.Module, attack: Attack | None, clean: Split,
                     eps_values: list[float], eps_index: torch.Tensor,
                     x_adv: torch.Tensor | None = None) -> tuple[Split, torch.Tensor]:
    """The misclassified adversarial examples of ``clean``, labelled with the model's answers:
    those ``attack`` makes at each image's eps, or the given ``x_adv`` (attack None).

    Returns ``(forget, true_labels)``: ``forget.labels`` are the model's (wrong) predictions,
    ``true_labels`` the clean labels of the same inputs.
    """
    if x_adv is None:
        if attack is None:
            raise ValueError("build_forget_set needs an attack or the adversarial examples")
        x_adv = adversarial_examples(attack, clean.images, clean.labels, eps_values, eps_index)
    predicted = predict(model, x_adv)
    wrong = (predicted != clean.labels).nonzero().squeeze(1)
    return Split(x_adv[wrong], predicted[wrong]), clean.labels[wrong]


def _concat(a: Split, b: Split) -> Split:
    return Split(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]))


def _rate(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if hits.numel() else math.nan


@DEFENSES.register("unlearning")
class UnlearningDefense(Defense):
    """FGSM (or PGD) → unlearn the misclassified adversarial examples → repeat (Khorasani et
    al. 2025)."""

    Params = UnlearningDefenseParams

    @classmethod
    def code_dependencies(cls, params: UnlearningDefenseParams) -> list[object]:
        # FGSM always (the per-round monitor), PGD when it makes the forget set
        attacks = ["fgsm"] + (["pgd"] if params.attack == "pgd" else [])
        return [UNLEARNING_METHODS.get(params.method), *map(ATTACKS.get, attacks)]

    @classmethod
    def cost(cls, params: UnlearningDefenseParams, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        # per round: the attack on forget_size images (an upper bound on the forget set, which
        # keeps only the misclassified ones), the method, and the FGSM monitor before each round
        p = params
        forget = min(p.forget_size, n_train)
        retain = n_train if p.retain_size is None else min(p.retain_size, n_train)
        retain += forget if p.retain_adversarial else 0
        crafting = PGD_STEPS if p.attack == "pgd" else 1
        method = UNLEARNING_METHODS.get(p.method).cost(p.method_config, retain, forget, n_train)
        per_round = Work(grad=forget * crafting, forward=2 * forget) + method
        monitor = n_validation if p.monitor_limit is None else min(p.monitor_limit, n_validation)
        return per_round.scaled(p.rounds) + Work(grad=monitor, forward=2 * monitor).scaled(
            p.rounds + 1)

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        p: UnlearningDefenseParams = self.params
        method_cls = UNLEARNING_METHODS.get(p.method)
        model = ctx.model.eval()
        train, eps_values = ctx.train, p.eps_values
        monitor = ctx.validation.head(p.monitor_limit)
        self._monitor(ctx, model, monitor, step=0)
        for round_ in range(1, p.rounds + 1):
            started = time.perf_counter()
            draw = generator(ctx.seed, "round", round_)
            sample = torch.randperm(len(train), generator=draw)[:p.forget_size]
            eps_index = torch.randint(len(eps_values), (sample.numel(),), generator=draw)
            clean = train.subset(sample.to(train.labels.device))
            eps_index = eps_index.to(train.labels.device)
            if p.attack == "fgsm":
                forget, true_labels = build_forget_set(
                    model, ctx.make_attack("fgsm", model), clean, eps_values, eps_index)
            else:
                x_adv = pgd_examples(model, clean.images, clean.labels, eps_values, eps_index,
                                     clean.ids, seed=derive_seed(ctx.seed, "attack", round_))
                forget, true_labels = build_forget_set(model, None, clean, eps_values,
                                                       eps_index, x_adv=x_adv)
            retain_rows = torch.randperm(len(train), generator=draw)
            if p.retain_size is not None:
                retain_rows = retain_rows[:p.retain_size]
            retain = train.subset(retain_rows.to(train.labels.device))
            if p.retain_adversarial:
                retain = _concat(retain, Split(forget.images, true_labels))
            if len(forget):
                data = UnlearningData(retain=retain, forget=forget,
                                      forget_true_labels=true_labels,
                                      num_classes=ctx.num_classes, train=ctx.train)
                model = method_cls(p.method_config).unlearn(
                    model, data, seed=derive_seed(ctx.seed, "method", round_),
                    train_config=ctx.train_config)
            seconds = time.perf_counter() - started
            after = predict(model, forget.images) if len(forget) else forget.labels
            still_fooled = _rate(after == forget.labels)
            true_acc = _rate(after == true_labels)
            log = {"method": p.method}
            ctx.log_metric(step=round_, metric="forget_size", value=len(forget), **log)
            ctx.log_metric(step=round_, metric="forget_attack_success", value=still_fooled, **log)
            ctx.log_metric(step=round_, metric="forget_true_acc", value=true_acc, **log)
            clean_acc, fgsm_acc = self._monitor(ctx, model, monitor, step=round_)
            ctx.log_metric(step=round_, metric="seconds", value=seconds, **log)
            ctx.reporter.info(
                f"[unlearning:{p.method}] round {round_}/{p.rounds}: forget {len(forget)}, "
                f"still fooled {still_fooled:.3f}, clean {clean_acc:.4f}, "
                f"fgsm@{max(eps_values):g} {fgsm_acc:.4f}, {seconds:.1f}s")
        return DefenseResult(model=model.eval(), metrics=ctx.metrics)

    def _monitor(self, ctx: DefenseContext, model: nn.Module, monitor: Split,
                 step: int) -> tuple[float, float]:
        p: UnlearningDefenseParams = self.params
        if p.monitor_limit == 0 or not len(monitor):  # off, or no validation split
            return math.nan, math.nan
        outcome = evaluate_attack(model, ctx.make_attack("fgsm", model), [max(p.eps_values)],
                                  monitor)[0]
        ctx.log_metric(step=step, metric="clean_acc", value=outcome.clean_acc, method=p.method)
        ctx.log_metric(step=step, metric="fgsm_acc", value=outcome.robust_acc, method=p.method)
        return outcome.clean_acc, outcome.robust_acc
