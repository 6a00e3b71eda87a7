"""Datasets as whole tensors: images float32 in [0, 1] with shape (N, 1, 28, 28), labels int64.

torchvision reads the files (and downloads them for real users); we decode each split into one
tensor once instead of going through PIL per item, and never normalise here: normalisation, if
any, lives inside the model so attacks work in input scale [0, 1].
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from platformdirs import user_cache_dir

from robench.errors import UserError
from robench.registry import Registry
from robench.seeds import generator

DATA_DIR_ENV = "ROBENCH_DATA_DIR"


@dataclass(frozen=True)
class Split:
    """One dataset split held in memory."""

    images: torch.Tensor  # float32, (N, C, H, W), values in [0, 1]
    labels: torch.Tensor  # int64, (N,)
    #: each image's index in the split it was taken from (None: 0..N-1), on the CPU
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def ids(self) -> torch.Tensor:
        """Each image's index in the original split (what per-image outcomes are keyed by)."""
        return self.index if self.index is not None else torch.arange(len(self))

    def head(self, n: int | None) -> Split:
        """The first ``n`` images (all when ``n`` is None). The one "first N" helper: the
        evaluation split is already in a seeded random order (``evaluation_split``), so its
        first N images are a random sample, nested in every larger N."""
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], self.ids[:n])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.ids[index.cpu()])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.index)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int

    @cached_property
    def fingerprint(self) -> str:
        """A short sha256 of every image and label of both splits: the cache keys and result
        rows name exactly which data they come from (another copy of the files, another
        dataset under the same name)."""
        digest = hashlib.sha256(self.name.encode())
        for split in (self.train, self.test):
            for tensor in (split.images, split.labels):
                value = tensor.detach().cpu().contiguous()
                digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
                digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]


def evaluation_split(test: Split, eval_limit: int | None, split_seed: int) -> Split:
    """The test split in a seeded random order, cut to ``eval_limit`` images.

    ``head(N)`` of the result is a uniform random sample of N test images; a smaller N is a
    subset of a larger one (the first N of one permutation), and every defense, attack and
    seed with the same N gets the same images. The order comes from ``split_seed`` alone."""
    order = torch.randperm(len(test), generator=generator(split_seed, "evaluation order"))
    return test.subset(order.to(test.labels.device)).head(eval_limit)


def hold_out_validation(train: Split, size: int, split_seed: int) -> tuple[Split, Split]:
    """(training split without the validation images, validation split): ``size`` training
    images drawn with ``split_seed`` (in that random order, so ``head(N)`` is a random sample);
    the rest keeps its original order."""
    if size == 0:
        return train, train.subset(torch.zeros(0, dtype=torch.long))
    order = torch.randperm(len(train), generator=generator(split_seed, "validation"))
    held = order[:size]  # in random order: a monitor's head(N) is a random sample
    kept = order[size:].sort().values
    device = train.labels.device
    return train.subset(kept.to(device)), train.subset(held.to(device))


DATASETS: Registry = Registry("dataset")


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """Suite/CLI value first, then $ROBENCH_DATA_DIR, then a per-user cache folder."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(user_cache_dir("robench")) / "data"


def _load_torchvision(cls: type, name: str, root: Path, download: bool) -> Dataset:
    splits = {}
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found" / download failures
            raise UserError(_not_found_message(name, root, download, err)) from None
        except OSError as err:  # URLError is an OSError: no network
            raise UserError(_not_found_message(name, root, download, err)) from None
        images = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
        splits[train] = Split(images.contiguous(), ds.targets.to(torch.int64).clone())
    return Dataset(name=name, train=splits[True], test=splits[False], num_classes=10)


def _not_found_message(name: str, root: Path, download: bool, err: Exception) -> str:
    how = "could not download it" if download else "downloading is off"
    return (
        f"{name} not found under {root} and {how} "
        f"({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
        f"point robench at a local copy with --data-dir DIR, data.root in the suite, "
        f"or ${DATA_DIR_ENV} (DIR holds {name_folder(name)}/raw/...)"
    )


def name_folder(name: str) -> str:
    return {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}.get(name, name)


def _files_present(root: Path, name: str) -> bool:
    raw = root / name_folder(name) / "raw"
    return (raw / "t10k-labels-idx1-ubyte").exists() and (raw / "train-images-idx3-ubyte").exists()


@DATASETS.register("mnist")
def mnist(root: Path) -> Dataset:
    """MNIST handwritten digits (LeCun et al.), 60k train / 10k test, 28x28 grey."""
    from torchvision.datasets import MNIST

    return _load_torchvision(MNIST, "mnist", root, download=not _files_present(root, "mnist"))


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: Path) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017), 60k train / 10k test, 28x28 grey."""
    from torchvision.datasets import FashionMNIST

    present = _files_present(root, "fashion_mnist")
    return _load_torchvision(FashionMNIST, "fashion_mnist", root, download=not present)


_CACHE: dict[tuple[str, str], Dataset] = {}


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """Load a registered dataset once per process (later calls reuse the tensors)."""
    path = resolve_data_root(root)
    key = (name, str(path.resolve()))
    if key not in _CACHE:
        _CACHE[key] = DATASETS.get(name)(path)
    return _CACHE[key]
