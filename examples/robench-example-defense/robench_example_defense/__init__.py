"""An out-of-tree robench defense, installed through the ``robench.defenses`` entry point.

Gaussian data augmentation: fine-tune the trained baseline on ``clip(x + N(0, sigma^2), 0, 1)``
(Zantedeschi, Nicolae, Rawat, "Efficient Defenses Against Adversarial Attacks", AISec 2017,
arXiv 1707.06728; ART ships it as ``GaussianAugmentation``). Random noise is not adversarial
noise: expect better accuracy on noisy inputs and only a small change under FGSM/PGD. It is
here because it is small and honest, not because it is a strong defense.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from robench.defenses import Defense, DefenseContext, DefenseParams, DefenseResult
from robench.seeds import generator
from robench.training import train

__all__ = ["GaussianAugment", "GaussianAugmentParams"]


class GaussianAugmentParams(DefenseParams):
    sigma: float = Field(0.3, gt=0, le=1)     # noise standard deviation, input scale [0, 1]
    epochs: int = Field(1, ge=1)              # fine-tuning epochs over the training split
    lr: float | None = Field(None, gt=0)      # default: the suite's train.lr


class GaussianAugment(Defense):
    """Gaussian data augmentation (Zantedeschi et al. 2017): fine-tune on noisy images."""

    Params = GaussianAugmentParams

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        p = self.params
        rng = generator(ctx.seed, "noise")  # a CPU generator: the same noise on any device

        def noisy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(x.shape, generator=rng).to(x.device)
            return F.cross_entropy(model((x + p.sigma * noise).clamp(0, 1)), y)

        config = ctx.train_config.model_copy(
            update={"epochs": p.epochs, "lr": p.lr or ctx.train_config.lr})
        train(ctx.model, ctx.train, config, seed=ctx.seed, loss_fn=noisy_loss,
              reporter=ctx.reporter, desc="gaussian_augment",
              on_epoch_end=lambda epoch: ctx.log_metric(
                  step=epoch + 1, metric="noisy_acc", value=noisy_accuracy(ctx, p.sigma)))
        return DefenseResult(model=ctx.model, metrics=ctx.metrics)


@torch.no_grad()
def noisy_accuracy(ctx: DefenseContext, sigma: float, n: int = 500) -> float:
    """Accuracy on ``n`` validation images with fixed Gaussian noise (a monitor)."""
    x, y = ctx.validation.images[:n], ctx.validation.labels[:n]
    noise = torch.randn(x.shape, generator=generator(ctx.seed, "monitor")).to(x.device)
    ctx.model.eval()
    return (ctx.model((x + sigma * noise).clamp(0, 1)).argmax(1) == y).float().mean().item()
