"""Adversarial training: train on adversarial examples crafted against the model being trained.

Four methods, L-infinity by default, inputs in [0, 1], untargeted, true labels (``fgsm`` and
``pgd`` also in L2, ``norm: l2``, see below):

- ``fgsm``: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples",
  ICLR 2015 (arXiv 1412.6572). ``mix * CE(f(x), y) + (1 - mix) * CE(f(x_fgsm), y)`` with
  ``x_fgsm = clip(x + eps * sign(grad_x CE))`` and ``mix = 0.5`` (the paper's alpha).
- ``fgsm_rs``: Wong, Rice, Kolter, "Fast is better than free: Revisiting adversarial training",
  ICLR 2020 (arXiv 2001.03994). One signed step of size ``alpha = 1.25 * eps`` from a uniform
  random start in the eps-ball, projected back onto the ball and [0, 1]; loss CE on it alone.
- ``pgd``: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
  Adversarial Attacks", ICLR 2018 (arXiv 1706.06083). ``steps`` signed steps of size ``alpha``
  from a uniform random start, projected after each; loss CE on the result alone.
- ``trades``: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off
  between Robustness and Accuracy", ICML 2019 (arXiv 1901.08573).
  ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` where ``x'`` maximises the KL term by ``steps``
  signed steps of size ``alpha`` from ``x + 0.001 * N(0, 1)`` (the authors' code; here the
  start is also projected onto the ball and [0, 1]); ``beta = 6`` as in the paper.

Choices made here (documented because they change numbers):

- Examples are crafted in eval mode (as the harness's attacks are; LeNet-5 has no batch norm or
  dropout, so for it the mode makes no difference) and the model is trained on them in train
  mode. Random starts come from the generator ``robench.seeds.generator(seed, "noise")`` (the
  shuffle uses ``seed``), so a run repeats exactly on the same device.
- ``alpha`` defaults to ``1.25 * eps`` for ``fgsm_rs`` and to ``2.5 * eps / steps`` for ``pgd`` and
  ``trades`` (a common heuristic: the walk can cross the ball 1.25 times over, so it can reach
  a face of the ball from anywhere inside it). ``fgsm`` always steps by ``eps``.
- ``warmup_epochs`` (default 1) ramps the training eps linearly from 0 to ``eps`` over that many
  epochs (per batch), scaling ``alpha`` by the same factor; ``0`` is the papers' constant eps.
  Without a ramp, PGD training of LeNet-5 from a random init at eps 0.3 stays at chance: the
  model collapses to a near-constant prediction, the loss sits at log(10) and the gradient walk
  finds no signal (measured here on 10k MNIST images, 3 epochs, PGD-5: clean 15.6 %, PGD-20
  14 % without a ramp; clean 88 %, PGD-20 32 % with a one-epoch ramp). The same default applies
  to every method so that methods differ only in their inner maximisation and loss.
- ``steps`` defaults to 5 (Madry et al. used 40 steps of 0.01 on MNIST; TRADES 40 of 0.01): on
  the CPU one input-gradient step costs about 1.8 clean training steps, so PGD-5 training costs
  about 10x clean training and TRADES-5 about 13x. More steps are a param away.
- ``from_scratch: true`` (default) re-initialises every layer of the baseline's architecture
  with its default initialiser under ``seed`` (on the CPU, then moved to the device), which for
  the built-in models reproduces the baseline's own initial weights; ``false`` fine-tunes the
  trained baseline instead. ``epochs``, ``lr`` and ``optimizer`` default to the suite's
  ``train:`` section, so a from-scratch run has the baseline's budget in epochs.
- After each epoch (and once before the first) clean accuracy, FGSM accuracy and PGD-20
  accuracy (``alpha = 2.5 * eps / 20``, random start) at ``eps`` are measured on
  ``monitor_limit`` random images of the validation split (held out of the training split;
  ``null``: all of it; never the test split) and logged to
  ``defense_metrics.csv`` with
  the mean training loss and the eps trained at. This is a monitor only, to make catastrophic
  overfitting visible (FGSM accuracy rising while PGD accuracy collapses, Wong et al. 2020); it
  is never used for training, early stopping or model selection. ``monitor_limit: 0`` turns
  it off.
- ``norm: l2`` (methods ``fgsm`` and ``pgd`` only; minimal): the examples are those of the L2
  attacks (``robench.attacks.fgsm`` FGM and ``robench.attacks.pgd`` PGD-L2): steps
  ``alpha * g / ||g||_2``, projection onto the L2 ball of radius ``eps`` and [0, 1], PGD's random
  start as torchattacks' ``PGDL2`` (Gaussian direction, radius ``eps * U[0, 1]``); ``eps`` and
  ``alpha`` are then L2 radii (``eps`` up to 28, the diameter of [0, 1]^784), the default alpha
  stays ``2.5 * eps / steps`` and the ramp is the same. The monitor then runs FGM and PGD-L2 at
  ``eps`` (metrics ``fgm_l2_acc`` and ``pgd20_l2_acc``). Not validated against a published L2
  adversarial-training result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from robench.attacks import ATTACKS
from robench.attacks.base import (
    DEFAULT_NORM,
    Norm,
    eval_mode,
    input_gradient,
    l2_normalize,
    project,
)
from robench.data import Split
from robench.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
)
from robench.evaluation import evaluate_attack
from robench.seeds import generator
from robench.training import TrainConfig, train
from robench.work import Work

Method = Literal["fgsm", "fgsm_rs", "pgd", "trades"]
#: which optional params each method reads; setting one a method ignores is a suite error
_USES = {"steps": {"pgd", "trades"}, "alpha": {"fgsm_rs", "pgd", "trades"},
         "mix": {"fgsm"}, "beta": {"trades"}}
#: the methods that accept ``norm: l2``
L2_METHODS = {"fgsm", "pgd"}
#: the largest L2 radius: the diameter of [0, 1]^784 (an MNIST image)
MAX_L2 = 28.0
MONITOR_PGD_STEPS = 20


class AdversarialTrainingParams(DefenseParams):
    method: Method = "pgd"
    # before eps and alpha: their L-inf limit (1) is checked against it
    norm: Norm = DEFAULT_NORM                       # l2: methods fgsm and pgd only
    eps: float = Field(0.3, gt=0, le=MAX_L2)             # L-inf: at most 1 (validated)
    epochs: int | None = Field(None, ge=1)          # default: the suite's train.epochs
    from_scratch: bool = True
    steps: int = Field(5, ge=1)                     # pgd, trades
    alpha: float | None = Field(None, gt=0, le=MAX_L2)  # step; default depends on method
    mix: float = Field(0.5, ge=0, le=1)             # fgsm: weight of the clean loss
    beta: float = Field(6.0, ge=0)                  # trades: weight of the KL term
    warmup_epochs: float = Field(1.0, ge=0)         # linear eps ramp-up, in epochs
    lr: float | None = Field(None, gt=0)            # default: the suite's train.lr
    optimizer: Literal["adam", "sgd"] | None = None  # default: the suite's train.optimizer
    monitor_limit: int | None = Field(500, ge=0)    # monitor: N validation images; 0 off

    @model_validator(mode="after")
    def _only_params_the_method_uses(self) -> AdversarialTrainingParams:
        for key, methods in _USES.items():
            if key in self.model_fields_set and self.method not in methods:
                raise ValueError(f"{key} is not used by method {self.method!r} "
                                 f"(only by {', '.join(sorted(methods))})")
        if self.norm == "l2" and self.method not in L2_METHODS:
            raise ValueError(f"norm l2 is not implemented for method {self.method!r} "
                             f"(only for {', '.join(sorted(L2_METHODS))})")
        return self

    @field_validator("eps", "alpha")
    @classmethod
    def _linf_at_most_one(cls, value: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("norm", DEFAULT_NORM) == "linf" and value is not None and value > 1:
            raise ValueError("Input should be less than or equal to 1 for norm linf (inputs "
                             "are in [0, 1]; an L2 radius needs norm: l2)")
        return value

    def step_size(self, eps: float) -> float:
        """The attack step at training radius ``eps`` (scaled along with an eps ramp)."""
        if self.method == "fgsm":
            return eps
        scale = eps / self.eps
        if self.alpha is not None:
            return self.alpha * scale
        if self.method == "fgsm_rs":
            return 1.25 * eps
        return 2.5 * eps / self.steps


def signed_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                 steps: int, generator: torch.Generator | None,
                 norm: Norm = DEFAULT_NORM) -> torch.Tensor:
    """``steps`` signed CE-gradient steps of size ``alpha``, projected onto the eps-ball and
    [0, 1]; from a uniform random start if ``generator`` is given, else from ``x``. With
    ``norm: l2`` the steps are ``alpha * g / ||g||_2`` and the ball is the L2 ball (the start:
    a Gaussian direction at radius ``eps * U[0, 1]``, as ``robench.attacks`` PGD-L2).

    fgsm = (1 step, alpha eps, no start); fgsm_rs = (1 step, 1.25 eps, start); pgd = (k, alpha).
    """
    x = x.detach()
    x_adv = x
    if generator is not None:
        if norm == "linf":
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).mul_(2 * eps)
            noise = noise.sub_(eps)
        else:
            direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype)
            noise = l2_normalize(direction) * (eps * radius).view(-1, *([1] * (x.dim() - 1)))
        x_adv = project(x + noise.to(x.device), x, eps, norm)
    with eval_mode(model):
        for _ in range(steps):
            grad = input_gradient(model, x_adv, y)
            step = grad.sign() if norm == "linf" else l2_normalize(grad)
            x_adv = project(x_adv + alpha * step, x, eps, norm)
    return x_adv.detach()


def trades_example(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int,
                   generator: torch.Generator) -> torch.Tensor:
    """TRADES inner maximisation: signed steps on KL(f(x) || f(x')) from x + 0.001 N(0, 1)."""
    x = x.detach()
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).mul_(0.001)
    x_adv = project(x + noise.to(x.device), x, eps)
    with eval_mode(model), torch.enable_grad():
        p_clean = F.softmax(model(x), dim=1).detach()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


class AdversarialLoss:
    """The ``loss_fn(model, x, y)`` handed to ``robench.training.train``: crafts the method's
    examples at the current (possibly ramped) eps and returns the training loss."""

    def __init__(self, params: AdversarialTrainingParams, steps_per_epoch: int,
                 generator: torch.Generator) -> None:
        self.params = params
        self.ramp_batches = params.warmup_epochs * steps_per_epoch
        self.generator = generator
        self.batches = 0
        self.last_eps = 0.0
        self.loss_sum = 0.0  # since the last ``epoch_summary``
        self.loss_count = 0

    def current_eps(self) -> float:
        """Training radius for the next batch: linear ramp over ``warmup_epochs``, then eps."""
        if self.ramp_batches <= 0:
            return self.params.eps
        return self.params.eps * min(1.0, (self.batches + 1) / self.ramp_batches)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        eps = self.last_eps = self.current_eps()
        alpha = p.step_size(eps)
        if p.method == "trades":
            x_adv = trades_example(model, x, eps, alpha, p.steps, self.generator)
            logits = model(x)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1),
                          reduction="batchmean")
            loss = F.cross_entropy(logits, y) + p.beta * kl
        elif p.method == "fgsm":
            x_adv = signed_steps(model, x, y, eps, alpha, 1, None, p.norm)
            loss = (p.mix * F.cross_entropy(model(x), y)
                    + (1 - p.mix) * F.cross_entropy(model(x_adv), y))
        else:
            steps = 1 if p.method == "fgsm_rs" else p.steps
            x_adv = signed_steps(model, x, y, eps, alpha, steps, self.generator, p.norm)
            loss = F.cross_entropy(model(x_adv), y)
        self.batches += 1
        self.loss_sum += float(loss.detach())
        self.loss_count += 1
        return loss

    def epoch_summary(self) -> dict[str, float]:
        """Mean training loss since the last call and the eps of the last batch."""
        mean = self.loss_sum / self.loss_count if self.loss_count else math.nan
        self.loss_sum, self.loss_count = 0.0, 0
        return {"train_loss": mean, "train_eps": self.last_eps}


def epoch_logger(ctx: DefenseContext, name: str, p: Any, monitor: Split, epochs: int,
                 measure: Callable[[], dict[str, float]]) -> Callable[[int, dict[str, float]],
                                                               None]:
    """``log_epoch(step, values)`` for a training defense: adds the monitor's ``measure()``
    (skipped when ``monitor_limit`` is 0 or there is no validation split), logs every value to
    defense_metrics.csv and prints one line."""

    def log_epoch(step: int, values: dict[str, float]) -> None:
        if p.monitor_limit != 0 and len(monitor):
            values.update(measure())
        for metric, value in values.items():
            ctx.log_metric(step=step, metric=metric, value=value, method=p.method, eps=p.eps,
                           monitor_n=len(monitor))
        if values:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
            ctx.reporter.info(f"{name} epoch {step}/{epochs}: {shown}")

    return log_epoch


def monitor_size(limit: int | None, n_validation: int) -> int:
    """How many validation images a ``monitor_limit`` monitors (None: all, 0: none)."""
    return n_validation if limit is None else min(limit, n_validation)


def monitor_work(times: int, images: int, gradients: int) -> Work:
    """Image passes of a per-epoch monitor run ``times`` times on ``images`` images:
    ``gradients`` input gradients per image, and four forwards (clean and adversarial
    predictions of its two attacks)."""
    return Work(grad=times * images * gradients, forward=times * images * 4)


def training_config(base: TrainConfig, p: Any) -> TrainConfig:
    """The suite's ``train:`` settings with a training defense's own ``epochs``, ``lr`` and
    ``optimizer`` where it sets them (None: the suite's)."""
    return base.model_copy(update={
        "epochs": p.epochs if p.epochs is not None else base.epochs,
        "lr": p.lr if p.lr is not None else base.lr,
        "optimizer": p.optimizer or base.optimizer,
    })


def fresh_init(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with every layer re-initialised under ``seed``.

    Done on the CPU so the weights do not depend on the device; for a model whose layers are
    created in the order they are registered (the built-ins) this equals constructing it after
    ``torch.manual_seed(seed)``, as the runner does for the baseline.
    """
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh.to(device)


@DEFENSES.register("adversarial_training")
class AdversarialTraining(Defense):
    """Adversarial training (FGSM, FGSM-RS, PGD or TRADES examples in the training loop)."""

    Params = AdversarialTrainingParams

    @classmethod
    def code_dependencies(cls, params: AdversarialTrainingParams) -> list[object]:
        return [ATTACKS.get("fgsm"), ATTACKS.get("pgd")]  # the per-epoch monitor

    @classmethod
    def cost(cls, params: AdversarialTrainingParams, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        # per training image and epoch: the crafting steps, then the loss's passes (fgsm and
        # trades: clean and adversarial); the monitor runs before the first epoch and after each
        p = params
        epochs = training_config(train_config, p).epochs
        crafting = p.steps if p.method in ("pgd", "trades") else 1
        loss = 2 if p.method in ("fgsm", "trades") else 1
        return Work(train=epochs * n_train * (crafting + loss)) + monitor_work(
            epochs + 1, monitor_size(p.monitor_limit, n_validation), 1 + MONITOR_PGD_STEPS)

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        p: AdversarialTrainingParams = self.params
        model = fresh_init(ctx.model, ctx.seed) if p.from_scratch else ctx.model
        config = training_config(ctx.train_config, p)
        steps_per_epoch = math.ceil(len(ctx.train) / config.batch_size)
        loss_fn = AdversarialLoss(p, steps_per_epoch, generator(ctx.seed, "noise"))
        monitor = ctx.validation.head(p.monitor_limit)
        fgsm = ctx.make_attack("fgsm", model=model, params={"norm": p.norm})
        pgd = ctx.make_attack("pgd", model=model, params={
            "steps": MONITOR_PGD_STEPS, "alpha": 2.5 * p.eps / MONITOR_PGD_STEPS,
            "norm": p.norm})
        # L-inf keeps its metric names; L2 ones say so (FGM is not FGSM)
        fgsm_name, pgd_name = (("fgsm", f"pgd{MONITOR_PGD_STEPS}") if p.norm == "linf"
                               else ("fgm_l2", f"pgd{MONITOR_PGD_STEPS}_l2"))

        def measure() -> dict[str, float]:
            fgsm_outcome = evaluate_attack(model, fgsm, [p.eps], monitor)[0]
            return {"clean_acc": fgsm_outcome.clean_acc,
                    f"{fgsm_name}_acc": fgsm_outcome.robust_acc,
                    f"{pgd_name}_acc": evaluate_attack(model, pgd, [p.eps], monitor)[0].robust_acc}

        log_epoch = epoch_logger(ctx, f"adversarial_training[{p.method}]", p, monitor,
                                 config.epochs, measure)

        log_epoch(0, {})
        train(model, ctx.train, config, seed=ctx.seed, loss_fn=loss_fn, reporter=ctx.reporter,
              desc=f"adversarial training ({p.method})",
              on_epoch_end=lambda epoch: log_epoch(epoch + 1, loss_fn.epoch_summary()))
        return DefenseResult(model=model, metrics=ctx.metrics)
