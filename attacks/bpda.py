"""BPDA: Backward Pass Differentiable Approximation, Athalye, Carlini, Wagner, "Obfuscated
Gradients Give a False Sense of Security", ICML 2018 (arXiv 1802.00420), Section 4.1.

A defense ``f(g(x))`` whose preprocessing ``g`` is non-differentiable (rounding: gradient 0
almost everywhere) or useless to differentiate is attacked with the true forward pass and an
approximate backward pass: the gradient is that of ``f(h(x))`` for a differentiable ``h`` with
``h(x) ~ g(x)``. For quantisation ``h`` is the identity (the straight-through estimator), so

``grad_x CE(f(g(x)), y)  :=  [grad_z CE(f(z), y)]_{z = g(x)}``,

written ``f(x + (g(x) - x).detach())``: its forward value is ``f(g(x))``, its gradient the one
above. Here BPDA is PGD (``robench.attacks.pgd``, Madry et al.) with that gradient: the same
params (``steps``, ``alpha``, ``restarts``, ``random_start``, ``norm``: ``linf`` or ``l2``,
``early_stop``), the same random starts (its seed is derived as ``pgd``'s with the same params:
``random_starts_of``), the same active set and restarts. Only the gradient changes: every
prediction (the active set's stop test, the restarts' test, the evaluation that scores the
examples) is the real defended model's.

The surrogate comes from the defended model: a module with a ``surrogate()`` method (declared
by its defense with ``Defense.has_surrogate``; ``bit_depth_reduction``'s ``Quantize``) returns a
differentiable module sharing its weights. A model without one is attacked with its own
gradient: then ``bpda`` is ``pgd`` exactly, image by image (the same seed, params and steps).

Reference code: anishathalye/obfuscated-gradients, ``inputtransformations/robustml_attack.py``
(its ``BPDA`` class) with ``inputtransformations/defense.py`` (``defend_reduce``, bit depth):
the defense runs outside the graph and the gradient at the defended input ``g(adv)`` is added
to ``adv``, i.e. the identity backward pass. Deviations: the reference ascends the
cross-entropy with raw gradient steps (``adv += 0.1 * grad``, up to 1000 steps, clipped to
[0, 1]); before each step it stops if the model is fooled with ``||adv - x||_2 < eps`` (the
last update is returned unchecked), and ``robustml``'s evaluation counts an output outside the
L2 ball as a failed attack. Its loss also holds ``lam * max(||adv - x||_2 - eps, 0)`` (lam
1e-6), but that term is computed from a separate input (``_l2_input``), so its gradient with
respect to the defended input is zero: nothing projects. Its threat model is untargeted L2
(eps ``0.05 * 299`` on 299x299x3 ImageNet images, InceptionV3, one image at a time), and its
bit-depth defense (``defend_reduce``, 3 bits by default) truncates to the level below where
``bit_depth_reduction`` rounds (1 bit in the flagship). Here PGD with signed (L-inf) or
normalised (L2) steps, projection onto the eps-ball and restarts; ``eot_samples`` as every
gradient attack (``robench.attacks.base``).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from robench.attacks.base import ATTACKS
from robench.attacks.pgd import PGD, PGDParams


class BPDAParams(PGDParams):
    # the surrogate is robench's own: no library runs BPDA
    backend: Literal["native"] = "native"


def surrogate_of(model: nn.Module) -> nn.Module | None:
    """The differentiable surrogate a defended model declares (its ``surrogate()``), else
    None."""
    make = getattr(model, "surrogate", None)
    if not callable(make):
        return None
    surrogate = make()
    if not isinstance(surrogate, nn.Module):
        raise TypeError(f"{type(model).__name__}.surrogate() returned "
                        f"{type(surrogate).__name__}, not a torch module")
    return surrogate.train(model.training)


@ATTACKS.register("bpda")
class BPDA(PGD):
    """PGD through the defense's differentiable surrogate (Athalye et al. 2018, BPDA);
    ``pgd`` itself on a model that declares none."""

    Params = BPDAParams  # type: ignore[assignment]  # a PGDParams with backend narrowed
    backend_tolerance = {}
    random_starts_of = "pgd"

    def gradient_model(self) -> nn.Module | None:
        return surrogate_of(self.model)


__all__ = ["BPDA", "BPDAParams", "surrogate_of"]
