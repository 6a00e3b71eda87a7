"""Training: one seeded minibatch loop shared by the baseline and by every defense."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from robench.data import Split
from robench.models import eval_mode
from robench.progress import Reporter

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class TrainConfig(BaseModel):
    """The suite's ``train:`` section (also the default optimiser settings of defenses)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    epochs: int = Field(5, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.001, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"


def make_optimizer(model: nn.Module, name: str, lr: float,
                   params: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
    params = list(model.parameters()) if params is None else params
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use adam or sgd")


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of a split: shuffled with ``generator`` if given, else in order."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.images.device)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        yield split.images[index], split.labels[index]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def train(model: nn.Module, data: Split, config: TrainConfig, seed: int,
          loss_fn: LossFn = cross_entropy, reporter: Reporter | None = None,
          desc: str = "train", on_epoch_end: Callable[[int], None] | None = None) -> nn.Module:
    """Train ``model`` in place for ``config.epochs`` epochs with a seeded shuffle.

    ``loss_fn(model, x, y)`` lets defenses change the objective (adversarial training) while
    the loop, the shuffle and the progress bar stay here.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, config.optimizer, config.lr)
    reporter = reporter or Reporter(quiet=True)
    steps = (len(data) + config.batch_size - 1) // config.batch_size
    model.train()
    for epoch in range(config.epochs):
        label = f"{desc} epoch {epoch + 1}/{config.epochs}"
        with reporter.progress(total=steps, desc=label) as bar:
            for x, y in batches(data, config.batch_size, generator):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, x, y)
                loss.backward()
                optimizer.step()
                bar.update(1)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
            model.train()
    optimizer.zero_grad(set_to_none=True)  # leave no stale gradients on the returned model
    model.eval()
    return model


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Predicted labels, in eval mode, in large batches."""
    with eval_mode(model):
        return torch.cat([model(images[i:i + batch_size]).argmax(1)
                          for i in range(0, max(images.shape[0], 1), batch_size)])


def accuracy(model: nn.Module, data: Split, batch_size: int = 2000) -> float:
    if len(data) == 0:
        return float("nan")
    return (predict(model, data.images, batch_size) == data.labels).float().mean().item()
