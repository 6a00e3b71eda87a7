"""Models. Every model takes inputs in [0, 1]; any normalisation lives inside the model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

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


@MODELS.register("mnist_cnn")
class MnistCNN(nn.Module):
    """Madry et al. 2018 MNIST CNN: conv32@5x5 -> pool -> conv64@5x5 -> pool -> 1024 -> 10, ReLU.

    Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018 (arXiv 1706.06083): the architecture behind the PGD-AT
    MNIST anchors (98.53 % clean, 88.50 % AutoAttack at eps 0.3). Compared with the
    reference MadryLab/mnist_challenge ``model.py`` (itself the TensorFlow "Deep MNIST"
    tutorial model): conv 5x5, 32 maps, 'SAME' padding (= padding 2), ReLU, max-pool 2x2;
    conv 5x5, 64 maps, 'SAME', ReLU, max-pool 2x2; fc 7*7*64 -> 1024, ReLU; fc 1024 -> 10.
    Like the reference, it reads [0, 1] pixels directly (no normalisation layer).

    Deviations: PyTorch's default initialisation (the reference draws weights from a normal
    truncated at 2 sd with sd 0.1 and sets biases to 0.1), so that adversarial training's
    ``from_scratch`` re-initialisation (``reset_parameters``) reproduces this model's own
    initial weights; the flatten order is PyTorch's (C, H, W) rather than TensorFlow's
    (H, W, C), which matters only when porting the reference's TensorFlow weights (permute
    ``classifier.1.weight``'s input dimension). Max-pool 'SAME' padding adds nothing on the
    even sizes 28 -> 14 -> 7. Inputs must be 28x28.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    return MODELS.get(name)(num_classes=num_classes)


# -- models whose forward returns more than the logits ---------------------------------------
LogitsKey = int | str


class SelectOutput(nn.Module):
    """Adapts a model whose forward returns a tuple/list or a dict (or an object with named
    fields) to the logits tensor that attacks and defenses expect: ``model: {name: ...,
    logits: 0}`` takes element 0, ``logits: out`` takes the key or field ``out``. The wrapped
    model is ``self.model`` (state-dict keys gain the prefix ``model.``; a checkpoint named by
    ``model.weights`` is loaded into the model itself, before wrapping)."""

    def __init__(self, model: nn.Module, key: LogitsKey) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(x), self.key)

    def extra_repr(self) -> str:
        return f"logits={self.key!r}"


def describe_output(output: object) -> str:
    """A short description of what a forward pass returned, for error messages."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, tuple | list):
        return f"a {type(output).__name__} of {len(output)} outputs"
    if isinstance(output, Mapping):
        keys = ", ".join(map(repr, list(output)[:6]))
        return f"a {type(output).__name__} with keys {keys}"
    return f"a {type(output).__name__}"


def select_output(output: object, key: LogitsKey) -> torch.Tensor:
    """``output[key]`` (index or key) or ``output.key`` (named fields); ValueError if absent."""
    if isinstance(key, int) and isinstance(output, tuple | list):
        if -len(output) <= key < len(output):
            return output[key]
        raise ValueError(f"index {key} is out of range: the model returns "
                         f"{describe_output(output)}")
    if isinstance(key, str) and isinstance(output, Mapping):
        if key in output:
            return output[key]
        raise ValueError(f"no key {key!r}: the model returns {describe_output(output)}")
    if isinstance(key, str) and not isinstance(output, torch.Tensor) and hasattr(output, key):
        return getattr(output, key)  # a named tuple or an output dataclass
    kind = "an index" if isinstance(key, int) else "a key"
    raise ValueError(f"{kind} ({key!r}) does not apply: the model returns "
                     f"{describe_output(output)}")


def check_logits(model: nn.Module, x: torch.Tensor, num_classes: int, name: str,
                 logits: LogitsKey | None, where: str) -> None:
    """One forward pass on real inputs ``x``: the model must return logits of shape
    ``(len(x), num_classes)``; otherwise a ``UserError`` saying what it returned and, for a
    tuple or dict, how to pick the logits with ``model.logits``. ``where`` is the suite file."""
    from robench.errors import UserError

    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except ValueError as err:  # select_output: the logits key does not fit the output
        raise UserError(str(err), where=f"{where}: model.logits") from None
    except (RuntimeError, TypeError) as err:
        text = " ".join(str(err).split())[:160]
        raise UserError(f"model {name!r} fails on {tuple(x.shape)} inputs in [0, 1] "
                        f"({type(err).__name__}: {text})", where=f"{where}: model.name") from None
    if not isinstance(out, torch.Tensor):
        if logits is not None:
            raise UserError(f"the selected output is {describe_output(out)}, not a tensor "
                            "of logits", where=f"{where}: model.logits")
        how = ("the index of the logits" if isinstance(out, tuple | list)
               else "the key of the logits")
        raise UserError(f"model {name!r} returns {describe_output(out)}, not a tensor of "
                        f"logits; set model.logits to {how}", where=f"{where}: model.name")
    expected = (x.shape[0], num_classes)
    if tuple(out.shape) != expected or not out.is_floating_point():
        key = "model.logits" if logits is not None else "model.name"
        raise UserError(f"model {name!r} returns {describe_output(out)} ({out.dtype}); "
                        f"expected float logits of shape {expected} for the dataset's "
                        f"{num_classes} classes", where=f"{where}: {key}")
