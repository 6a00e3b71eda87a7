"""Randomized-smoothing certificates: CERTIFY of Cohen, Rosenfeld, Kolter, "Certified
Adversarial Robustness via Randomized Smoothing", ICML 2019 (arXiv 1902.02918). A verifier
(``robench.attacks.verifier``): L2 only (``eps`` is an L2 radius), untargeted, inputs in [0, 1].

For each image: ``n0`` noisy copies ``x + N(0, sigma^2 I)`` through the base classifier pick
the top class ``cA`` (selection); ``n`` further copies count ``nA`` votes for ``cA``
(estimation); ``pA_lower`` is the one-sided ``(1 - alpha)`` Clopper-Pearson lower bound on the
vote share, ``Beta(alpha; nA, n - nA + 1)``; if ``pA_lower < 0.5`` CERTIFY abstains (radius 0,
never certified), else the certified L2 radius is ``sigma * Phi^-1(pA_lower)``. An image is
certified at ``eps`` when ``cA`` is its label and its radius is strictly above ``eps``. With
probability at least ``1 - alpha`` per image, the smoothed classifier ``g`` predicts ``cA`` in
the whole open ball of that radius (the paper's Theorem 1).

``sigma`` and the base classifier are read from the defended model: a model built by the
``gaussian_noise`` defense (``robench.defenses.gaussian_noise.GaussianSmoothed``) carries them
as ``smoothing_sigma`` and ``base_classifier``; the plan refuses a suite in which any defense
declares no Gaussian noise (``Defense.noise_sigma``). The radii do not depend on ``eps``: they
are computed once per batch and every eps of the sweep reads them.

Defaults are the paper's: ``n0 = 100``, ``n = 100 000``, ``alpha = 0.001``. Cost: ``n0 + n``
base-classifier forward passes per image (``robench plan`` declares them): on the CPU a LeNet-5
forward pass costs tens of microseconds per image, so the paper's ``n`` is seconds per image
and minutes per hundred images. Fewer samples give smaller radii in expectation (the bound is
looser), and cap them: even with all ``n`` votes for ``cA``, ``pA_lower = alpha^(1/n)``, so the
radius is at most ``sigma * Phi^-1(alpha^(1/n))``: 3.20 sigma at ``n = 10 000`` and 3.81 sigma
at ``n = 100 000`` (``alpha = 0.001``). A smaller ``n`` or ``n0`` or a larger ``alpha`` is a
reduced variant and its label says so (``smoothing[n=...]``).

Compared with ``locuslab/smoothing`` ``code/core.py`` (``Smooth.certify``,
``_lower_confidence_bound``: ``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]``,
the same bound) and ``code/analyze.py`` (``ApproximateAccuracy``: correct and
``radius >= r``). Deviations: certified at ``eps`` needs ``radius > eps`` (strict: the theorem
covers the open ball, and a tie is not a proof, as the ``ibp`` verifier); noise is drawn on
the CPU from a generator seeded by ``(seed, image id)`` (``robench.seeds.derive_seed``) when
the evaluation names the images (``set_images``), so an image's certificate repeats in any
batch, subset or order; else from the verifier's seeded generator (then it repeats only for
the same images in the same batches); ``batch_size`` counts noisy copies per base forward
pass as in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from robench.attacks.base import ATTACKS, AttackParams, Norm
from robench.attacks.verifier import Verifier
from robench.errors import UserError
from robench.models import eval_mode
from robench.seeds import derive_seed
from robench.work import Work

#: the paper's sample sizes and failure probability
PAPER = {"n": 100_000, "n0": 100, "alpha": 0.001}


class SmoothingParams(AttackParams):
    norm: Norm = "l2"
    n0: int = Field(100, ge=1)                  # selection samples per image
    n: int = Field(100_000, ge=1)               # estimation samples per image
    alpha: float = Field(0.001, gt=0, lt=1)     # failure probability per image
    batch_size: int = Field(1000, ge=1)         # noisy copies per base forward pass

    @model_validator(mode="after")
    def _consistent(self) -> SmoothingParams:
        if self.norm != "l2":
            raise ValueError("smoothing certifies L2 radii only: norm must be l2")
        if self.n0 >= self.n:
            raise ValueError(f"n0 ({self.n0}) must be below n ({self.n}): n0 only selects "
                             "the class, n estimates its vote share")
        return self


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion n_a / n."""
    from scipy.stats import beta  # on use: importing robench must not load scipy.stats

    return 0.0 if n_a == 0 else float(beta.ppf(alpha, n_a, n - n_a + 1))


def certified_radius(n_a: int, n: int, alpha: float, sigma: float) -> float:
    """CERTIFY's radius for ``n_a`` votes of ``n`` for the selected class; -1 when it abstains
    (``pA_lower < 0.5``)."""
    from scipy.stats import norm

    p_lower = lower_confidence_bound(n_a, n, alpha)
    return -1.0 if p_lower < 0.5 else sigma * float(norm.ppf(p_lower))


@ATTACKS.register("smoothing")
class Smoothing(Verifier):
    """Randomized-smoothing CERTIFY (Cohen et al. 2019), L2, on a ``gaussian_noise`` model."""

    Params = SmoothingParams
    probabilistic = True  # each certificate holds with probability 1 - alpha
    shares_work_across_eps = True  # one CERTIFY per image serves every eps
    # a reduced variant must never pass for the paper's CERTIFY: ``smoothing[n=1000,...]``
    label_params = ("n", "n0", "alpha", "norm")

    def __init__(self, model: nn.Module, params: AttackParams | None = None,
                 seed: int = 0) -> None:
        super().__init__(model, params, seed)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def _p(self) -> SmoothingParams:
        assert isinstance(self.params, SmoothingParams)
        return self.params

    @classmethod
    def work_per_image(cls, params: SmoothingParams, eps: float) -> Work:
        return Work(forward=params.n0 + params.n)

    @classmethod
    def reduced_variant(cls, params: SmoothingParams) -> str | None:
        # one marker, the first weaker setting: the automatic label shows every one of them
        weaker = [f"{k}={getattr(params, k)}" for k, paper in PAPER.items()
                  if (getattr(params, k) > paper if k == "alpha"
                      else getattr(params, k) < paper)]
        return weaker[0] if weaker else None

    @classmethod
    def check_defense(cls, defense: Any, params: Any, label: str) -> None:
        if defense.noise_sigma(params) is None:
            raise UserError(f"smoothing certifies a Gaussian-noise defense (randomized "
                            f"smoothing); defense {label!r} declares no Gaussian noise")

    def _counts(self, base: nn.Module, x: torch.Tensor, num: int, sigma: float,
                classes: int, gen: torch.Generator) -> torch.Tensor:
        counts = torch.zeros(classes, dtype=torch.long)
        cap = int(self._p.batch_size)
        for start in range(0, num, cap):
            k = min(cap, num - start)
            noise = torch.randn((k, *x.shape), generator=gen, dtype=x.dtype)
            pred = base(x.unsqueeze(0) + sigma * noise.to(x.device)).argmax(1).cpu()
            counts += torch.bincount(pred, minlength=classes)[:classes]
        return counts

    def radii(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: CERTIFY's class (-1: abstain) and radius (0 when abstaining)."""
        base = getattr(self.model, "base_classifier", None)
        sigma = getattr(self.model, "smoothing_sigma", None)
        if base is None or sigma is None:
            raise UserError("smoothing certifies a model of the gaussian_noise defense; this "
                            "model carries no smoothing_sigma and base_classifier")
        p = self._p
        labels, radii = [], []
        with eval_mode(self.model), torch.no_grad():
            classes = self.num_classes(x)
            ids = self._image_ids if self._image_ids is not None \
                and len(self._image_ids) == x.shape[0] else None
            for i, image in enumerate(x):
                # a named image's noise is its own (seed, image id) stream: the same
                # certificate in any batch, subset or order; unnamed: the attack's generator
                gen = self.generator if ids is None else \
                    torch.Generator().manual_seed(derive_seed(self.seed, "certify", ids[i]))
                c_a = int(self._counts(base, image, p.n0, sigma, classes, gen).argmax())
                n_a = int(self._counts(base, image, p.n, sigma, classes, gen)[c_a])
                r = certified_radius(n_a, p.n, p.alpha, sigma)
                labels.append(c_a if r >= 0 else -1)
                radii.append(max(r, 0.0))
        return (torch.tensor(labels, dtype=torch.long, device=x.device),
                torch.tensor(radii, dtype=torch.float64, device=x.device))

    def certify(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Bool (batch,): CERTIFY's class is the label and its radius is above ``eps``."""
        if self._last is None or self._last[0] is not x:
            self._last = (x, *self.radii(x.detach()))
        _, labels, radii = self._last
        return (labels == y) & (radii > eps)


__all__ = ["PAPER", "Smoothing", "SmoothingParams", "certified_radius",
           "lower_confidence_bound"]
