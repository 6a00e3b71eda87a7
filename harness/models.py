"""Models. Every model takes inputs in [0, 1]; any normalisation lives inside the model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from robench.registry import Registry

MODELS: Registry = Registry("model", entry_point_group="robench.models", base=nn.Module)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the duration, then restore each one's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.train(flag)


def output_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes a model outputs, from one forward pass on one input."""
    with torch.no_grad(), eval_mode(model):
        return int(model(x[:1]).shape[1])


def model_hash(model: nn.Module) -> str:
    """What a result row was computed on: the model's weights and the source of every module
    class in it (so a wrapper whose weights are the baseline's, such as an input
    transformation, still changes the hash when its ``forward`` is edited)."""
    import hashlib

    from robench.codehash import code_hash

    # torch's own layers are covered by torch's version (part of every cell's code hash)
    classes = sorted({type(m) for m in model.modules()
                      if type(m).__module__.split(".")[0] not in ("torch", "torchvision")},
                     key=lambda c: f"{c.__module__}.{c.__qualname__}")
    text = f"{weights_hash(model)}:{code_hash(*classes) if classes else ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(model: nn.Module) -> str:
    """A short sha256 of a model's state dict (names, dtypes, shapes and bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class Normalize(nn.Module):
    """Standardises [0, 1] inputs inside the model, so attacks keep working in input scale."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@MODELS.register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5: conv6@5x5 pad2 -> pool -> conv16@5x5 -> pool -> 120 -> 84 -> 10, ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 mean: float = 0.1307, std: float = 0.3081) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    return MODELS.get(name)(num_classes=num_classes)
