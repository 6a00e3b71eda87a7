"""Gaussian noise: the smoothed classifier of Cohen, Rosenfeld, Kolter, "Certified Adversarial
Robustness via Randomized Smoothing", ICML 2019 (arXiv 1902.02918). Inputs in [0, 1], L2.

Training: the base classifier is trained with Gaussian input noise ``N(0, sigma^2 I)`` added to
every training image (a new draw per image and epoch), cross-entropy on the noisy image, as the
reference's ``code/train.py`` (``inputs + randn_like(inputs) * noise_sd``). Prediction: the
defended model is ``GaussianSmoothed``; each forward pass classifies ``votes`` noisy copies of
every image and returns the vote: its output is ``log`` of the vote shares (a class with no
vote gets ``log 1e-12``), so its argmax is the majority class, ties going to the lower class.
A plain forward pass never abstains; abstention belongs to the ``smoothing`` verifier's
CERTIFY (``robench.attacks.smoothing``), which reads ``sigma`` and the base classifier from the
model. The vote has no gradient: the output's input gradient is exactly zero (a plain gradient
attack makes no progress and the ``input_gradients`` check fails, as for ``bit_depth_reduction``).
The attackable surrogate is ``surrogate()``: the "soft" smoothed classifier, ``log`` of the mean
softmax over ``votes`` fresh noisy copies, which Salman et al. 2019 (arXiv 1906.04584) attack;
the defense declares it (``has_surrogate``), so ``adaptive: auto`` escalates every iterative
attack to ``bpda[of=...,eot=k]``: BPDA through the soft classifier with EOT over its noise. The
model is randomized (``randomized = True``) and evaluated by a vote over ``eval_samples`` passes.

Compared with ``locuslab/smoothing`` ``code/core.py`` (``Smooth.predict``, ``Smooth.certify``)
and ``code/train.py``. Deviations:

- ``Smooth.predict`` abstains unless a two-sided binomial test (``binom_test(count1, count1 +
  count2) <= alpha``) separates the top two classes, over ``n`` noise draws; here the plain
  prediction is the majority of ``votes`` draws (default 32) with no test, so every image gets a
  class (an attack must be able to score it) and ``robench.evaluation`` votes again over
  ``eval_samples`` such passes (default 5).
- The reference trains a ResNet with SGD and a step schedule from scratch; here the suite's
  model, optimiser and epochs (``from_scratch: true``, as ``adversarial_training``), or a
  fine-tune of the trained baseline (``from_scratch: false``).
- The training noise comes from the seeded generator ``robench.seeds.generator(seed,
  "noise")``; the prediction noise from torch's global generator (a forward pass has no seed).
  Neither is clipped to [0, 1], as in the reference.

The attack on the soft classifier compared with ``Hadisalman/smoothing-adversarial``
``code/attacks.py`` (``PGD_L2._attack_mutlinoise``, SmoothAdv; the noise is drawn by its
callers, ``code/train_pgd.py`` once per batch and ``code/predict.py`` once per image).
Deviations:

- The reference keeps its ``num_noise_vectors`` noise draws for every step; here each gradient
  draws ``votes`` fresh copies (``surrogate()``) and an EOT attack averages ``eot_samples`` such
  gradients, so a step sees ``votes * eot_samples`` draws.
- The reference starts at ``delta = 0`` (its ``random_start`` is unused), steps
  ``2 * max_norm / steps`` along the L2-normalised gradient (a random direction where the
  gradient is zero), clamps to [0, 1] and projects onto the L2 ball (``renorm_``); here
  ``bpda``/``pgd``'s own start, ``alpha`` and norm (L-inf as well as L2; a zero gradient stays
  zero). Both run every step and keep the last iterate: the active set
  (``robench.attacks.active``) turns itself off when two passes of the model on the same batch
  differ, as the vote's do (a batch whose every vote is unanimous twice would keep it).
- The reference scores with ``Smooth.predict`` (n 100 000, alpha 0.001, abstaining counted as
  wrong); here the majority over ``eval_samples`` votes of ``votes`` copies (above).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.defenses.adversarial_training import fresh_init, training_config
from robench.defenses.base import DEFENSES, Defense, DefenseContext, DefenseParams, DefenseResult
from robench.seeds import generator
from robench.training import TrainConfig, train
from robench.work import Work

#: the vote share of a class no copy voted for, before the log (keeps the output finite)
FLOOR = 1e-12


class GaussianSmoothed(nn.Module):
    """The smoothed classifier: a vote of ``base_classifier`` over ``votes`` Gaussian-noised
    copies of each image. Its state dict is the base classifier's (the cache and the shipped
    files hold the trained weights only; ``GaussianNoise.wrap`` wraps them again)."""

    def __init__(self, base: nn.Module, sigma: float, votes: int, eval_samples: int) -> None:
        super().__init__()
        self.base_classifier = base
        self.smoothing_sigma = float(sigma)
        self.votes = int(votes)
        #: passes ``robench.evaluation`` votes over when it scores this model
        self.eval_samples = int(eval_samples)

    def noisy_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The base classifier's logits on ``votes`` fresh noisy copies of every image,
        (batch * votes, classes), copies of one image adjacent."""
        noisy = x.repeat_interleave(self.votes, dim=0)
        noisy = noisy + torch.randn_like(noisy) * self.smoothing_sigma
        return self.base_classifier(noisy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.noisy_logits(x.detach())
        c = logits.shape[1]
        hard = F.one_hot(logits.argmax(1), c).to(logits.dtype).view(-1, self.votes, c).mean(1)
        log_hard = hard.clamp_min(FLOOR).log().detach()
        # the vote has no gradient; a zero-gradient path keeps autograd working, so a plain
        # gradient attack sees an all-zero gradient (and ``input_gradients`` flags it) instead
        # of an error or a misleading direction: the soft classifier is ``surrogate()``
        return log_hard + 0.0 * x.flatten(1)[:, :1]

    def surrogate(self) -> nn.Module:
        """The soft smoothed classifier (Salman et al. 2019): ``log`` of the mean softmax over
        ``votes`` fresh noisy copies, differentiable; BPDA (``robench.attacks.bpda``) follows
        its gradient. It shares this model's weights and noise level."""
        return SoftSmoothed(self)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_classifier.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True,
                        assign: bool = False) -> Any:
        return self.base_classifier.load_state_dict(state_dict, strict=strict, assign=assign)


class SoftSmoothed(nn.Module):
    """``log`` of the mean softmax of ``smoothed``'s base classifier over ``votes`` noisy copies
    (the soft smoothed classifier of Salman et al. 2019, arXiv 1906.04584; their
    ``Hadisalman/smoothing-adversarial`` ``code/attacks.py``, ``PGD_L2.attack`` with
    ``num_noise_vectors``, averages the softmax over the noise draws the same way). Its
    cross-entropy is ``-log`` of the soft classifier's true-class share; a floor of ``FLOOR``
    (theirs: 1e-20) keeps it finite."""

    def __init__(self, smoothed: GaussianSmoothed) -> None:
        super().__init__()
        self.smoothed = smoothed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.smoothed.noisy_logits(x)
        soft = F.softmax(logits, dim=1).view(-1, self.smoothed.votes, logits.shape[1]).mean(1)
        return soft.clamp_min(FLOOR).log()


class GaussianNoiseParams(DefenseParams):
    sigma: float = Field(0.25, gt=0, le=10)     # noise std (input scale), training and votes
    votes: int = Field(32, ge=1)                # noisy copies per image in each forward pass
    eval_samples: int = Field(5, ge=1)          # passes the evaluation votes over
    epochs: int | None = Field(None, ge=1)      # default: the suite's train.epochs
    from_scratch: bool = True
    lr: float | None = Field(None, gt=0)        # default: the suite's train.lr
    optimizer: Literal["adam", "sgd"] | None = None  # default: the suite's train.optimizer


@DEFENSES.register("gaussian_noise")
class GaussianNoise(Defense):
    """Gaussian-noise training and a majority vote over noisy copies (Cohen et al. 2019)."""

    Params = GaussianNoiseParams
    randomized = True
    has_surrogate = True  # the soft smoothed classifier (``GaussianSmoothed.surrogate``)

    @classmethod
    def cost(cls, params: GaussianNoiseParams, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        return Work(train=training_config(train_config, params).epochs * n_train)

    @classmethod
    def noise_sigma(cls, params: GaussianNoiseParams) -> float:
        return params.sigma

    @classmethod
    def wrap(cls, model: nn.Module, params: GaussianNoiseParams) -> nn.Module:
        return GaussianSmoothed(model, params.sigma, params.votes, params.eval_samples)

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        p = self.params
        assert isinstance(p, GaussianNoiseParams)
        model = fresh_init(ctx.model, ctx.seed) if p.from_scratch else ctx.model
        noise = generator(ctx.seed, "noise")

        def noisy_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            draw = torch.randn(x.shape, generator=noise, dtype=x.dtype).to(x.device)
            return F.cross_entropy(m(x + p.sigma * draw), y)

        train(model, ctx.train, training_config(ctx.train_config, p), seed=ctx.seed,
              loss_fn=noisy_loss, reporter=ctx.reporter,
              desc=f"gaussian noise training (sigma {p.sigma:g})")
        return DefenseResult(model=self.wrap(model, p), metrics=ctx.metrics)


__all__ = ["FLOOR", "GaussianNoise", "GaussianNoiseParams", "GaussianSmoothed", "SoftSmoothed"]
