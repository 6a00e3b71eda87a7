"""R+FGSM: Tramèr, Kurakin, Papernot, Goodfellow, Boneh, McDaniel, "Ensemble Adversarial
Training: Attacks and Defenses", ICLR 2018 (arXiv 1705.07204). L-infinity, untargeted, one
gradient step from a random point:

``x' = clip(x + alpha * sign(N(0, I)), 0, 1)``,
``x_adv = clip(x' + (eps - alpha) * sign(grad_x' CE(f(x'), y)), 0, 1)``.

The random step escapes the sharp curvature right at the data point that makes FGSM (and
FGSM-trained models) look robust: FGSM-specific gradient masking shows up as R+FGSM beating
FGSM at the same eps.

Arguments: ``alpha_fraction`` (default 0.5): the random step as a fraction of eps, so
``alpha = alpha_fraction * eps`` at every eps of a sweep; 0.5 is the paper's choice
(alpha = eps/2); 0 is plain FGSM.

Compared with the authors' code (ftramer/ensemble-adv-training, ``simple_eval.py`` attack
``rand_fgs`` and ``fgs.py``: clip(x + alpha*sign(randn)) then FGSM with eps - alpha, clipped to
[0, 1]): the same maths. Deviations: alpha is a fraction of eps (their MNIST script's default is
an absolute alpha = 0.05 at eps 0.3; the paper uses alpha = eps/2); the random signs are drawn
per image from the attack's seed (``Attack.uniform_noise``: sign(U(-eps, eps)) has the law of
sign(N(0, I)), a fair ±1 per pixel) instead of from numpy's global generator, so an image gets
the same random step in any batch or subset. torchattacks' ``RFGSM`` is a multi-step variant
(``steps`` steps of size alpha); with ``steps=1, alpha=eps/2`` it is this attack exactly
(``tests/test_attacks_masking.py`` checks that with the same random signs).
"""

from __future__ import annotations

import torch
from pydantic import Field

from robench.attacks.base import ATTACKS, Attack, EOTParams, project


class RFGSMParams(EOTParams):
    alpha_fraction: float = Field(0.5, ge=0, lt=1)


@ATTACKS.register("rfgsm")
class RFGSM(Attack):
    """R+FGSM (Tramèr et al. 2018): a random signed step of alpha, then FGSM with eps - alpha."""

    Params = RFGSMParams
    family = "single_step"
    label_params = ("alpha_fraction", "eot_samples")

    def random_signs(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """A fair ±1 per pixel, per image from the base's seeded draws. ``>= 0`` rather than
        ``sign()``: the uniform draw hits exactly 0 with probability 2^-24 per pixel (about one
        pixel in 10 000 MNIST images), and sign(0) = 0 would skip that pixel's random step."""
        noise = self.uniform_noise(x, eps)
        return torch.where(noise >= 0, 1.0, -1.0).to(x.dtype)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        alpha = self.params.alpha_fraction * eps
        start = project(x + alpha * self.random_signs(x, eps), x, eps)
        return start + (eps - alpha) * self.input_gradient(start, y).sign()
