"""MNIST and Fashion-MNIST files checked before torchvision reads them.

torchvision reads an idx file with ``assert`` statements and a ``view`` (a damaged file is an
``AssertionError`` traceback, or a ``RuntimeError`` robench reported as "not found"), takes any
label byte as a label (200 fails only in training, after the results folder was written) and
does not compare the image and label counts of a split (5000 labels for 10 000 images ran to the
end). ``check_dataset_files`` reads the headers of the four raw files and the labels (small),
checks what their format promises, and raises one ``UserError`` naming the file and what is
wrong, before anything is written. Files that are absent are left to the loader (it downloads
them, or says they are not found); torchvision reads only the unpacked files, and checks a
downloaded ``.gz`` against its MD5 itself.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from robench.errors import UserError
from robench.outdir.files import NotRegularFile, open_regular_file

#: error messages only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False

__all__ = ["IDX_DATASETS", "check_dataset_files", "check_idx_file"]

#: the datasets whose raw files are idx files: name -> folder under the data root
IDX_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
UNSIGNED_BYTE = 0x08
#: a labels file is read whole to check its labels; MNIST's is 60 008 bytes
MAX_LABEL_BYTES = 64 * 2**20


def _damaged(path: Path, what: str) -> UserError:
    return UserError(f"damaged dataset file: {what}; replace it with a good copy (or delete "
                     "the folder's files to download them again)", where=str(path))


def check_idx_file(path: Path, ndim: int) -> int:
    """Check one idx file of unsigned bytes with ``ndim`` dimensions (3: images of 28x28, 1:
    labels in 0..9): magic number, dimensions, size equal to what its header promises, labels
    in range. Returns the number of items; a damaged file is a ``UserError`` naming it."""
    try:
        header_size = 4 + 4 * ndim
        with os.fdopen(open_regular_file(path, follow_links=True), "rb") as f:
            info = os.fstat(f.fileno())
            header = f.read(header_size)
            if len(header) < header_size:
                raise _damaged(path, f"truncated ({len(header)} bytes, shorter than its "
                                     f"{header_size}-byte header)")
            if header[:3] != bytes([0, 0, UNSIGNED_BYTE]) or header[3] != ndim:
                raise _damaged(path, f"magic number 0x{header[:4].hex()} is not that of an "
                                     f"idx file of unsigned bytes with {ndim} dimension"
                                     f"{'s' if ndim > 1 else ''} "
                                     f"(0x{bytes([0, 0, UNSIGNED_BYTE, ndim]).hex()})")
            dims = struct.unpack(f">{ndim}I", header[4:])
            if ndim == 3 and dims[1:] != IMAGE_SIZE:
                raise _damaged(path, f"images are {dims[1]}x{dims[2]}, not "
                                     f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
            count = dims[0]
            if count == 0:  # torchvision's frombuffer fails on an empty body (a traceback)
                raise _damaged(path, f"no {'images' if ndim == 3 else 'labels'} (its header "
                                     "says 0 items)")
            expected = header_size + count * (IMAGE_SIZE[0] * IMAGE_SIZE[1] if ndim == 3 else 1)
            if info.st_size < expected:
                raise _damaged(path, f"truncated ({info.st_size} bytes; its header promises "
                                     f"{count} items in {expected} bytes)")
            if info.st_size > expected:
                raise _damaged(path, f"{info.st_size - expected} bytes after the {count} items "
                                     "its header describes")
            if ndim == 1:
                if expected > MAX_LABEL_BYTES:
                    raise _damaged(path, f"{count} labels, more than any dataset robench knows")
                _check_labels(path, f.read(count))
    except NotRegularFile as err:
        raise _damaged(path, f"{err.kind}, not a regular file") from None
    except OSError as err:
        raise UserError(f"cannot read the dataset file ({err.strerror})", where=str(path)) from None
    return count


def _check_labels(path: Path, labels: bytes) -> None:
    top = max(labels, default=0)
    if top >= NUM_CLASSES:
        where = labels.index(top)
        raise _damaged(path, f"label {top} at position {where} is outside 0..{NUM_CLASSES - 1}")


def check_dataset_files(name: str, root: Path) -> None:
    """Check the raw files of an idx dataset (``IDX_DATASETS``) under the data ``root``: each
    file present is sound (``check_idx_file``) and each split's image and label counts agree.
    Other datasets, and absent files, are left to the dataset's loader."""
    folder = IDX_DATASETS.get(name)
    if folder is None:
        return
    raw = Path(root) / folder / "raw"
    for split in ("train", "t10k"):
        images, labels = raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"
        counts = [check_idx_file(path, ndim) if os.path.lexists(path) else None
                  for path, ndim in ((images, 3), (labels, 1))]
        if None not in counts and counts[0] != counts[1]:
            raise _damaged(labels, f"{counts[1]} labels for the {counts[0]} images of "
                                   f"{images.name}")
