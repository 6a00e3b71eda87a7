"""Damaged MNIST files: each is refused before anything is written, with one line naming the file
and what is wrong (exit code 2, no traceback, nothing downloaded, no results folder). The good
files are links to the real MNIST; a damaged one is a changed copy."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")
SUITE = """\
name: damaged
data: {dataset: mnist, eval_limit: 50}
train: {epochs: 0}
attacks: [{name: fgsm, eps: [0.1]}]
"""


def bad_magic(data: bytes) -> bytes:
    return b"\x00\x00\x08\x04" + data[4:]


def label_200(data: bytes) -> bytes:
    return data[:8 + 17] + bytes([200]) + data[8 + 18:]


def half_the_labels(data: bytes) -> bytes:
    count = struct.unpack(">I", data[4:8])[0] // 2
    return data[:4] + struct.pack(">I", count) + data[8:8 + count]


def truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def header_only_cut(data: bytes) -> bytes:
    return data[:10]


def wrong_dims(data: bytes) -> bytes:
    n = struct.unpack(">I", data[4:8])[0]
    return data[:8] + struct.pack(">II", 28 * 28 // 16, 16) + data[16:16 + n * 28 * 28]


def trailing_bytes(data: bytes) -> bytes:
    return data + b"\x00" * 100


def labels_as_images(data: bytes) -> bytes:
    return b"\x00\x00\x08\x03" + data[4:]


CASES: list[tuple[str, str, Callable[[bytes], bytes], list[str]]] = [
    # id, file damaged, how, fragments of the message
    ("bad_magic", "t10k-images-idx3-ubyte", bad_magic, ["magic"]),
    ("label_200", "train-labels-idx1-ubyte", label_200, ["label 200", "0..9"]),
    ("fewer_labels", "t10k-labels-idx1-ubyte", half_the_labels, ["5000 labels", "10000 images"]),
    ("truncated_images", "train-images-idx3-ubyte", truncated, ["truncated"]),
    ("cut_in_header", "t10k-labels-idx1-ubyte", header_only_cut, ["truncated"]),
    ("wrong_dims", "t10k-images-idx3-ubyte", wrong_dims, ["28x28"]),
    ("trailing_bytes", "t10k-labels-idx1-ubyte", trailing_bytes, ["bytes after"]),
    ("labels_said_images", "train-labels-idx1-ubyte", labels_as_images, ["magic"]),
]


def damaged_root(tmp_path: Path, mnist_root: Path, name: str,
                 damage: Callable[[bytes], bytes]) -> Path:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in FILES:
        source = mnist_root / "MNIST" / "raw" / file
        if file == name:
            (raw / file).write_bytes(damage(source.read_bytes()))
        else:
            (raw / file).symlink_to(source)
    return tmp_path / "data"


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_mnist_file_is_refused_before_anything_is_written(tmp_path, mnist_root,
                                                                    robench_cli, case,
                                                                    command):
    _, file, damage, fragments = case
    root = damaged_root(tmp_path, mnist_root, file, damage)
    raw = root / "MNIST" / "raw"
    listing = sorted(p.name for p in raw.iterdir())
    suite, out = tmp_path / "s.yaml", tmp_path / "out"
    suite.write_text(SUITE)
    proc = robench_cli(command, str(suite), "--data-dir", str(root), "--out", str(out),
                       "--no-calibrate" if command == "plan" else "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert file in line and "not found" not in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert not out.exists()
    assert sorted(p.name for p in raw.iterdir()) == listing  # nothing downloaded


def test_good_files_pass_the_check(mnist_root):
    from robench.idx_files import check_dataset_files

    check_dataset_files("mnist", mnist_root)  # raises nothing
    check_dataset_files("mnist", mnist_root / "nowhere")  # missing files: torchvision's turn


def test_fashion_mnist_files_are_checked_too(tmp_path, mnist_root):
    from robench.errors import UserError
    from robench.idx_files import check_dataset_files

    root = damaged_root(tmp_path, mnist_root, "train-labels-idx1-ubyte", label_200)
    (root / "MNIST").rename(root / "FashionMNIST")
    with pytest.raises(UserError, match="train-labels-idx1-ubyte: .*label 200 at position 17"):
        check_dataset_files("fashion_mnist", root)
    check_dataset_files("mnist", root)  # no MNIST files there: the loader's turn


def empty_idx(ndim: int) -> bytes:
    """A well-formed header that promises no items (images 0x28x28, or 0 labels)."""
    dims = (0, 28, 28) if ndim == 3 else (0,)
    return bytes([0, 0, 8, ndim]) + struct.pack(f">{ndim}I", *dims)


@pytest.mark.parametrize("split", ["t10k", "train"])
def test_a_split_of_zero_items_is_refused_naming_the_file(tmp_path, mnist_root, robench_cli,
                                                          split):
    # headers agree (0 images, 0 labels) and sizes match them: torchvision then crashed
    # in torch.frombuffer with a traceback
    root = damaged_root(tmp_path, mnist_root, f"{split}-images-idx3-ubyte",
                        lambda data: empty_idx(3))
    labels = root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte"
    labels.unlink()
    labels.write_bytes(empty_idx(1))
    suite, out = tmp_path / "s.yaml", tmp_path / "out"
    suite.write_text(SUITE)
    proc = robench_cli("plan", str(suite), "--data-dir", str(root), "--out", str(out),
                       "--no-calibrate")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{split}-images-idx3-ubyte" in lines[0] and "no images" in lines[0], lines[0]
    assert not out.exists()


def test_a_labels_file_of_zero_items_is_refused(tmp_path):
    from robench.errors import UserError
    from robench.idx_files import check_idx_file

    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(empty_idx(1))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte: .*no labels"):
        check_idx_file(path, 1)


def test_a_folder_with_only_torchvisions_processed_files_is_not_refused(tmp_path, robench_cli):
    # torchvision reads processed/{training,test}.pt (its old format) and then never looks at
    # raw/: robench checks only the raw files present, so such a folder is not refused
    import torch

    processed = tmp_path / "data" / "MNIST" / "processed"
    processed.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for file, n in (("training.pt", 120), ("test.pt", 100)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        torch.save((images, torch.arange(n) % 10), processed / file)
    suite, out = tmp_path / "s.yaml", tmp_path / "out"
    suite.write_text(SUITE.replace("eval_limit: 50", "eval_limit: 50, validation_size: 0"))
    proc = robench_cli("plan", str(suite), "--data-dir", str(tmp_path / "data"), "--out",
                       str(out), "--no-calibrate")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "MNIST" / "raw").exists()  # nothing downloaded
