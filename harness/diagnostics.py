"""Model diagnostics measured during a run, while the defended models exist.

AutoAttack-style flags (Croce & Hein 2020): the share of images whose input gradient is all
zero or non-finite, whether two forward passes agree, whether outputs look like probabilities.
The run stores them in ``diagnostics.json``; ``robench.checks`` judges them afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from robench.data import Split
from robench.models import eval_mode

GRADIENT_SAMPLE = 500  # images the diagnostics are measured on (the first of the split)

#: what ``model_diagnostics`` measures (``sample``, the number of images, is optional)
DIAGNOSTIC_KEYS = ("zero_grad_fraction", "nonfinite_grad_fraction", "random_output",
                   "softmax_output")


def model_diagnostics(model: nn.Module, data: Split) -> dict[str, float]:
    """Gradient and output statistics of a model on a small sample (AutoAttack-style flags)."""
    x = data.images[:GRADIENT_SAMPLE].detach().clone().requires_grad_(True)
    y = data.labels[:GRADIENT_SAMPLE]
    with eval_mode(model):
        with torch.enable_grad():
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            again = model(x.detach())
    per_image = grad.flatten(1)
    finite = torch.isfinite(per_image).all(1)
    zero = finite & (per_image.abs().amax(1) == 0)
    probs_like = bool(((logits >= 0) & (logits <= 1)).all()) and bool(
        torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4))
    return {
        "sample": float(x.shape[0]),
        "zero_grad_fraction": zero.float().mean().item(),
        "nonfinite_grad_fraction": (~finite).float().mean().item(),
        "random_output": float(not torch.equal(logits.detach(), again)),
        "softmax_output": float(probs_like),
    }
