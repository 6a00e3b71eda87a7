"""What a run starts from, checked before anything is written: the command line's options, the
resolved plan, the dataset and its splits, the results folder. ``robench run``
(``robench.runner``) and ``robench plan`` (``robench.preflight``) both start here, so they
resolve a suite the same way and refuse the same mistakes with the same one-line errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from robench.config import Suite, load_suite, parse_suite
from robench.data import (
    DATASETS,
    Dataset,
    Split,
    evaluation_split,
    hold_out_validation,
    load_dataset,
    resolve_data_root,
)
from robench.errors import UserError
from robench.idx_files import check_dataset_files
from robench.outdir import OutputFolder
from robench.plan import Plan, resolve
from robench.probe import check_baseline
from robench.run_files import output_names


@dataclass
class RunOptions:
    """Command-line overrides and switches of ``robench run``."""

    data_dir: str | None = None
    out: str | None = None
    device: str | None = None
    eval_limit: int | None = None
    epochs: int | None = None
    seed: int | None = None
    seeds: str | None = None       # "0,1,2": replaces the suite's seed/seeds
    quiet: bool = False
    use_cache: bool = True
    force: bool = False
    executor: str = "serial"       # serial | ray (robench.executors)
    jobs: int | None = None        # CPUs of the local Ray cluster (--executor ray)
    address: str | None = None     # an existing Ray cluster to join (--executor ray)
    models_from: str | None = None  # a results folder whose shipped models are loaded


def apply_overrides(suite: Suite, opts: RunOptions, source: str) -> Suite:
    """The suite with the command line's overrides, validated like the file itself."""
    raw = suite.model_dump(mode="python")
    for section, key, value in (("data", "root", opts.data_dir),
                                ("data", "eval_limit", opts.eval_limit),
                                ("train", "epochs", opts.epochs), (None, "device", opts.device)):
        if value is not None:
            (raw[section] if section else raw)[key] = value
    if opts.seed is not None and opts.seeds is not None:
        raise UserError("give either --seed or --seeds, not both", where="--seeds")
    if opts.seed is not None:
        raw["seed"], raw["seeds"] = opts.seed, None
    if opts.seeds is not None:
        raw["seed"], raw["seeds"] = None, parse_seed_list(opts.seeds)
    return parse_suite(raw, f"{source} (with command-line options)")


def parse_seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2`` as integers (range, repeats: the suite's own validation)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"expected comma-separated integers such as 0,1,2 (got {text!r})",
                        where="--seeds") from None


def resolve_device(name: str, where: str = "device") -> torch.device:
    """The torch device a suite's ``device`` names on this machine (``auto``: a GPU if any)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available; "
                        "use 'auto' or 'cpu'", where=where)
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda", where=where)
    return torch.device(name)


def check_data_sizes(plan: Plan, dataset: Dataset) -> None:
    """Sizes a suite asks for that the dataset does not have are a ``UserError`` naming the
    key (before anything is written; nothing is copied)."""
    data, source = plan.suite.data, plan.source
    if data.validation_size >= len(dataset.train):
        raise UserError(f"validation_size {data.validation_size} leaves no training images "
                        f"({dataset.name} has {len(dataset.train)})",
                        where=f"{source}: data.validation_size")
    if data.eval_limit is not None and data.eval_limit > len(dataset.test):
        raise UserError(f"eval_limit {data.eval_limit} is larger than the {len(dataset.test)} "
                        f"test images of {dataset.name}", where=f"{source}: data.eval_limit")
    n_eval = min(data.eval_limit or len(dataset.test), len(dataset.test))
    for i, attack in enumerate(plan.attacks):
        if attack.limit is not None and attack.limit > n_eval:
            raise UserError(f"limit {attack.limit} is larger than the {n_eval} evaluation "
                            "images", where=f"{source}: attacks[{i}].limit")


def data_splits(plan: Plan, dataset: Dataset) -> tuple[Split, Split, Split]:
    """(training, validation, evaluation) splits of the suite (``check_data_sizes`` first)."""
    data = plan.suite.data
    check_data_sizes(plan, dataset)
    train, validation = hold_out_validation(dataset.train, data.validation_size, data.split_seed)
    return train, validation, evaluation_split(dataset.test, data.eval_limit, data.split_seed)


@dataclass(frozen=True)
class RunData:
    """What a run keeps of its dataset: the fingerprint of the whole dataset, the three splits,
    and ``dataset`` with ``train`` = the training split (without the validation images) and
    ``test`` = the evaluation split. The full splits they were copied from are not kept, so
    their memory is free for the whole run."""

    fingerprint: str
    dataset: Dataset
    splits: tuple[Split, Split, Split]

    @classmethod
    def of(cls, plan: Plan, dataset: Dataset) -> RunData:
        fingerprint = dataset.fingerprint  # first: hashing copies the training images once
        train, validation, evaluation = data_splits(plan, dataset)
        slim = Dataset(dataset.name, train, evaluation, dataset.num_classes)
        return cls(fingerprint, slim, (train, validation, evaluation))


def prepare(path: str | Path, opts: RunOptions, keep_loaded: bool = True
            ) -> tuple[Plan, Dataset, Path]:
    """The plan, the dataset and the results folder of a suite with the command line's options,
    every user mistake found before anything is written (``robench plan`` stops here).
    ``keep_loaded=False`` loads the dataset afresh instead of from (and into) the per-process
    cache, so a run can let go of the splits it does not use."""
    plan = resolve(apply_overrides(load_suite(path), opts, str(path)), str(path))
    # user mistakes fail before anything is written
    device_where = "--device" if opts.device else f"{path}: device"
    if opts.executor == "serial":  # a Ray run's device is checked against the cluster's
        resolve_device(plan.suite.device, where=device_where)
    if opts.out is not None and not opts.out.strip():
        raise UserError("empty folder name", where="--out")
    name, root = plan.suite.data.dataset, plan.suite.data.root
    check_dataset_files(name, resolve_data_root(root))  # damaged files: one line, not a traceback
    dataset = (load_dataset(name, root) if keep_loaded
               else DATASETS.get(name)(resolve_data_root(root)))
    check_data_sizes(plan, dataset)  # before the folder is opened
    check_baseline(plan, dataset)  # checkpoint fits, logits for every batch size: before writes
    out_dir = Path(opts.out) if opts.out else Path("results") / plan.name
    return plan, dataset, out_dir


def check_out_dir(out_dir: Path) -> None:
    """Refuse, without writing anything, what ``robench run`` would refuse about its results
    folder (``robench plan``): a path that is not a folder or cannot be created, a damaged
    manifest, a folder a run holds, files robench did not write at its output names."""
    if not os.path.lexists(out_dir):
        parent = out_dir.absolute().parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"cannot create the results folder ({parent} is not a folder)",
                            where=str(out_dir.absolute()))
        return
    with OutputFolder(out_dir, create=False, inspect_only=True) as folder:
        folder.refuse_foreign(output_names(folder.path))


__all__ = ["RunData", "RunOptions",
           "apply_overrides", "check_data_sizes", "check_out_dir", "data_splits",
           "parse_seed_list", "prepare", "resolve_device"]
