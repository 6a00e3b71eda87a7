"""The models a results folder ships: the weights its rows were computed on, so a reader can
load them, attack them again (``robench verify``) or evaluate new attacks on them without
training (``robench run SUITE --models-from FOLDER``).

**Which models.** A run ships the baseline of each seed and each defended model of a
*cacheable* defense (``Defense.cacheable``). A non-cacheable defense (``none``, input
transformations, wrappers) is a cheap, deterministic function of the baseline: it is applied
again to the shipped baseline, never shipped itself. A resumed run ships the models that are
missing (every model is reported to the recorder, trained, cached or loaded alike); at the end
of a complete run, shipped files of models the run no longer has are removed.

**File name.** ``model-<model_hash>.safetensors``, flat in the results folder, where
``model_hash`` is ``robench.models.model_hash(model)``: exactly the ``model_hash`` column of
the results.csv rows computed on that model (a defense's model; for the baseline, the rows of
a non-cacheable defense that leaves the weights and classes as they are, e.g. ``none``). One
file per model, however many rows. Written through ``OutputFolder.write_bytes`` (atomic, in
the manifest), and an output robench sets aside with the others (``robench.run_files``).

**Contents.** A safetensors file of the model's ``state_dict()`` (every tensor a contiguous
CPU copy, names as in the state dict), with string metadata (``__metadata__``):

=================  ======================================================================
``format``         ``robench-model/1``
``dataset``        the suite's ``data.dataset`` (e.g. ``mnist``)
``model``          the architecture's registry name (``model.name``, e.g. ``lenet5``)
``num_classes``    decimal integer
``seed``           decimal integer: the run seed the model belongs to
``role``           ``baseline`` or ``defense``
``label``          the defense's label; ``baseline`` for the baseline
``defense``        the defense's plugin name; empty for the baseline
``weights_hash``   ``robench.models.weights_hash`` of the weights (checked after loading)
``model_hash``     ``robench.models.model_hash`` (weights + the model classes' source)
``robench_version`` the version that wrote it
``defense_params`` the defense's canonical params JSON (the rows' ``defense_params``); empty
                   for the baseline
``data_hash``      the fingerprint of the dataset it was trained on (the rows' ``data_hash``)
``cache_key``      the plan's model-cache key (``BaselineSpec``/``DefenseSpec.cache_key``)
``seconds``        what defending took (the rows' ``defense_seconds``); empty for the baseline
``metrics``        the defense's metric rows as JSON (defense_metrics.csv); ``[]`` if none
``also``           optional: the other labels the same file serves (below)
=================  ======================================================================

**One file, several labels.** Two models with the same weights and classes have the same
``model_hash``, so the same file name: a cacheable defense that leaves the baseline as it is
(``adversarial_training`` with 0 epochs) or two defenses that train to the same weights. The
recorder then writes one file (``merge_model_files``) whose metadata names one of them (the
baseline first, then by seed and label) and lists the others in ``also``: a JSON list of
objects with that label's ``seed``, ``role``, ``label``, ``defense``, ``defense_params``,
``cache_key``, ``seconds`` and ``metrics`` (``SERVING_KEYS``, strings as above).
``ShippedModel.served()`` gives one entry per label, which is how ``--models-from`` and
``robench verify`` find every label's model.

Loading one yourself: ``safetensors.torch.load_file(path)`` gives the state dict;
``robench.models.create_model(meta["model"], int(meta["num_classes"]))`` the architecture
(``load_state_dict(..., strict=True)``). A model whose forward is wrapped with
``model.logits`` has keys prefixed ``model.``.

**Reading (the interface ``robench verify`` and ``--models-from`` use).**
``shipped_models(files)`` lists every ``model-*.safetensors`` of a folder (and every one its
manifest lists), each read through ``RunFiles`` (regular files only, bytes checked against the
manifest) with its metadata validated: one-line ``UserError`` otherwise.
``load_shipped(entry, skeleton)`` loads the tensors into ``skeleton`` exactly (every key and
shape, ``robench.weights.load_exactly``; files far larger than the skeleton's weights are
refused unread) and checks ``weights_hash`` after loading.

Off the code-hash path: no hashed module imports this one (shipping changes no number).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import robench
from robench.errors import UserError
from robench.json_input import UnreadableJSON, loads
from robench.models import model_hash, weights_hash
from robench.outdir import OutputFolder, RunFiles
from robench.run_files import MODEL_NAME, is_model_name, model_file_name
from robench.weights import HEADER_BYTES, SizeLimit, load_exactly, parse_checkpoint

#: shipping changes no result (see robench.codehash)
AFFECTS_RESULTS = False

FORMAT = "robench-model/1"
ROLES = ("baseline", "defense")
#: every key a shipped model's metadata has (all strings)
METADATA_KEYS = ("format", "dataset", "model", "num_classes", "seed", "role", "label",
                 "defense", "weights_hash", "model_hash", "robench_version", "defense_params",
                 "data_hash", "cache_key", "seconds", "metrics")
#: what each label a file serves has of its own (``also``)
SERVING_KEYS = ("seed", "role", "label", "defense", "defense_params", "cache_key", "seconds",
                "metrics")
#: a shipped file larger than this is refused unread (a results folder stays <= 30 MB)
MAX_FILE_BYTES = 256 * 2**20
#: the shipped models of one results folder, in all, above which a run warns
#: (``size_warning``): a committed results folder stays <= 30 MB
FOLDER_MODEL_BYTES = 30 * 10**6
_HASH = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class ModelFile:
    """A shipped model's file, serialised where the model was computed (a Ray worker too) and
    written by the recorder into the results folder."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model file of a results folder, read and validated (not yet loaded)."""

    name: str                    # model-<model_hash>.safetensors
    path: Path
    data: bytes                  # the file's bytes, as checked against the manifest
    metadata: dict[str, str]

    @property
    def dataset(self) -> str:
        return self.metadata["dataset"]

    @property
    def model(self) -> str:
        return self.metadata["model"]

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def seed(self) -> int:
        return int(self.metadata["seed"])

    @property
    def role(self) -> str:
        return self.metadata["role"]

    @property
    def label(self) -> str:
        return self.metadata["label"]

    @property
    def defense(self) -> str:
        return self.metadata["defense"]

    @property
    def defense_params(self) -> str:
        return self.metadata["defense_params"]

    @property
    def weights_hash(self) -> str:
        return self.metadata["weights_hash"]

    @property
    def model_hash(self) -> str:
        return self.metadata["model_hash"]

    @property
    def seconds(self) -> float:
        return float(self.metadata["seconds"] or 0.0)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return list(json.loads(self.metadata["metrics"]))

    def served(self) -> list[ShippedModel]:
        """One entry per label this file serves: itself, then each of ``also``."""
        base = {k: v for k, v in self.metadata.items() if k != "also"}
        others = json.loads(self.metadata.get("also", "[]"))
        return [ShippedModel(self.name, self.path, self.data, base)] + [
            ShippedModel(self.name, self.path, self.data, {**base, **other})
            for other in others]


def model_file(model: nn.Module, *, dataset: str, model_name: str, num_classes: int, seed: int,
               role: str, label: str, defense: str = "", defense_params: str = "",
               data_hash: str = "", cache_key: str = "", seconds: float | None = None,
               metrics: list[dict[str, Any]] | None = None) -> ModelFile:
    """The shipped file of ``model`` (see the module for the metadata)."""
    from safetensors.torch import save

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} (got {role!r})")
    digest = model_hash(model)
    metadata = {
        "format": FORMAT, "dataset": dataset, "model": model_name,
        "num_classes": str(int(num_classes)), "seed": str(int(seed)), "role": role,
        "label": "baseline" if role == "baseline" else label,
        "defense": "" if role == "baseline" else defense,
        "weights_hash": weights_hash(model), "model_hash": digest,
        "robench_version": robench.__version__,
        "defense_params": "" if role == "baseline" else defense_params,
        "data_hash": data_hash, "cache_key": cache_key,
        "seconds": "" if seconds is None else repr(float(seconds)),
        "metrics": json.dumps(metrics or [], sort_keys=True, default=str),
    }
    # contiguous private copies: safetensors refuses tensors that share memory (tied weights)
    state = {name: tensor.detach().cpu().contiguous().clone()
             for name, tensor in model.state_dict().items()}
    return ModelFile(model_file_name(digest), _sorted_header(save(state, metadata)))


def merge_model_files(a: ModelFile, b: ModelFile) -> ModelFile:
    """The one file of a model that serves the labels of both ``a`` and ``b`` (files of the
    same model: the same name); the same bytes in whichever order the labels come."""
    from safetensors.torch import load, save

    if a.name != b.name:
        raise ValueError(f"not the same model: {a.name}, {b.name}")
    meta = read_metadata(a.data, a.name, a.name)
    servings = {(s["seed"], s["label"]): s for file in (a, b)
                for s in (_serving(e.metadata) for e in _entry(file).served())}
    first, *rest = sorted(servings.values(), key=lambda s: (s["role"] != "baseline",
                                                            int(s["seed"]), s["label"]))
    metadata = {k: v for k, v in meta.items() if k != "also"} | first
    if rest:
        metadata["also"] = json.dumps(rest, sort_keys=True)
    return ModelFile(a.name, _sorted_header(save(load(a.data), metadata)))


def _entry(file: ModelFile) -> ShippedModel:
    return ShippedModel(file.name, Path(file.name), file.data,
                        read_metadata(file.data, file.name, file.name))


def _serving(metadata: dict[str, str]) -> dict[str, str]:
    return {key: metadata[key] for key in SERVING_KEYS}


def _sorted_header(data: bytes) -> bytes:
    """``data`` (safetensors bytes) with its JSON header's keys sorted: safetensors writes the
    metadata in hash-map order, so the same model would give other bytes (another sha256 in
    the manifest) on every run. The tensors' offsets are relative to the data after the header,
    so they stay valid; the header is padded with spaces to 8 bytes, as safetensors does."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def write_model_file(out: OutputFolder, file: ModelFile) -> str:
    """Put ``file`` into ``out`` (atomically, recorded in its manifest) unless robench's file
    of the same model, serving the same labels, is already there; returns its name."""
    if not out.owns(file.name) or (out.path / file.name).read_bytes() != file.data:
        out.write_bytes(file.name, file.data)
    return file.name


def ship_model(out: OutputFolder, model: nn.Module, **metadata: Any) -> str:
    """Ship ``model`` into the results folder ``out``: ``model_file(model, **metadata)``
    written by ``write_model_file``; returns the file name."""
    return write_model_file(out, model_file(model, **metadata))


def size_warning(folder: Path, limit: int = FOLDER_MODEL_BYTES) -> str | None:
    """A warning naming the total size of the folder's shipped model files when it is above
    ``limit`` (None: within). A warning, not a refusal: the limit keeps a committed results
    folder small for git, it says nothing about the results, and the models are already
    computed when it is known (refusing would throw the run away, and a folder without its
    models cannot be verified)."""
    total = sum(p.stat().st_size for p in folder.iterdir()
                if is_model_name(p.name) and p.is_file() and not p.is_symlink())
    if total <= limit:
        return None
    return (f"the shipped models in {folder} take {total / 1e6:.1f} MB in all, more than the "
            f"{limit / 1e6:.0f} MB a committed results folder may hold; keep it out of git or "
            "ship fewer models (fewer seeds or cacheable defenses)")


# -- reading -----------------------------------------------------------------------------------
def shipped_models(files: RunFiles) -> list[ShippedModel]:
    """Every shipped model of the folder of ``files`` (by file name), read verified and with
    its metadata validated; one-line ``UserError`` for a file that is not one."""
    folder = files.folder
    try:
        present = {entry.name for entry in os.scandir(folder) if is_model_name(entry.name)}
    except OSError as err:
        raise UserError(f"cannot list the folder ({err.strerror or err})",
                        where=str(folder)) from None
    names = sorted(present | {n for n in files.listed() if is_model_name(n)})
    models = []
    for name in names:
        path = folder / name
        try:
            size = os.lstat(path).st_size
        except OSError:
            size = 0  # absent: RunFiles.read says whether it may be
        if size > MAX_FILE_BYTES:
            raise UserError(f"is {size} bytes, larger than any shipped model robench reads "
                            f"({MAX_FILE_BYTES} bytes)", where=str(path))
        data = files.read(name)
        if data is None:
            continue
        models.append(ShippedModel(name, path, data, read_metadata(data, name, str(path))))
    return models


def read_metadata(data: bytes, name: str, where: str) -> dict[str, str]:
    """The validated metadata of a shipped model file's bytes (``name``: its file name, whose
    hash must be the metadata's ``model_hash``)."""
    if len(data) < 10:
        raise UserError("is not a safetensors file (too short)", where=where)
    size = int.from_bytes(data[:8], "little")
    if not 2 <= size <= min(len(data) - 8, HEADER_BYTES) or data[8:9] != b"{":
        raise UserError("is not a safetensors file (no valid header)", where=where)
    try:
        header = loads(data[8:8 + size].decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError, JSONDecodeError, UnreadableJSON
        why = f"its header is {err}" if isinstance(err, UnreadableJSON) else \
            "its header is not JSON"
        raise UserError(f"is not a safetensors file ({why})", where=where) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"is not a robench model file (its metadata has no format {FORMAT!r})",
                        where=where)
    missing = [key for key in METADATA_KEYS if not isinstance(meta.get(key), str)]
    if missing:
        raise UserError(f"metadata lacks {', '.join(missing)}", where=where)
    bad = _bad_metadata(meta)
    if bad:
        raise UserError(f"metadata: {bad}", where=where)
    match = MODEL_NAME.fullmatch(name)
    if match is None or match.group(1) != meta["model_hash"]:
        raise UserError(f"its name does not match its metadata's model_hash "
                        f"{meta['model_hash']}", where=where)
    if "also" in meta:
        bad = _bad_also(meta)
        if bad:
            raise UserError(f"metadata: also: {bad}", where=where)
    return {key: meta[key] for key in METADATA_KEYS + (("also",) if "also" in meta else ())}


def _bad_also(meta: dict[str, Any]) -> str | None:
    """What is wrong with the ``also`` list of a valid metadata dict (None: nothing)."""
    try:
        others = loads(meta["also"]) if isinstance(meta["also"], str) else None
    except ValueError:
        others = None
    if not isinstance(others, list):
        return "not a JSON list"
    for other in others:
        if not (isinstance(other, dict) and set(other) == set(SERVING_KEYS)
                and all(isinstance(v, str) for v in other.values())):
            return f"each entry has exactly the string keys {', '.join(SERVING_KEYS)}"
        bad = _bad_metadata({**meta, **other})
        if bad:
            return bad
    return None


def _bad_metadata(meta: dict[str, str]) -> str | None:
    """What is wrong with a metadata dict whose keys are all there (None: nothing)."""
    for key in ("num_classes", "seed"):
        if not re.fullmatch(r"-?[0-9]{1,20}", meta[key]):
            return f"{key} is not an integer ({meta[key]!r})"
    if int(meta["num_classes"]) < 1:
        return f"num_classes must be positive ({meta['num_classes']})"
    if meta["role"] not in ROLES:
        return f"role must be baseline or defense ({meta['role']!r})"
    for key in ("weights_hash", "model_hash"):
        if not _HASH.fullmatch(meta[key]):
            return f"{key} is not a 16-digit hex hash ({meta[key]!r})"
    if not meta["label"] or (meta["role"] == "defense" and not meta["defense"]):
        return "a defense model names its label and defense"
    if meta["seconds"]:
        try:
            float(meta["seconds"])
        except ValueError:
            return f"seconds is not a number ({meta['seconds']!r})"
    try:
        metrics = loads(meta["metrics"])
    except ValueError as err:
        return f"metrics is {err}" if isinstance(err, UnreadableJSON) else "metrics is not JSON"
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        return "metrics is not a list of rows"
    return None


def load_shipped(entry: ShippedModel, skeleton: nn.Module) -> nn.Module:
    """``skeleton`` with the weights of ``entry`` (every key and shape must fit it; a file far
    larger than the skeleton's weights is refused unread), in eval mode; a ``UserError`` when
    the loaded weights do not hash to the metadata's ``weights_hash``."""
    where = str(entry.path)
    tensors = itertools.chain(skeleton.parameters(), skeleton.buffers())
    limit = SizeLimit(entry.model, sum(t.numel() * t.element_size() for t in tensors))
    if len(entry.data) > limit.bytes:
        raise UserError(f"is {len(entry.data)} bytes, far more than model {entry.model!r} "
                        f"needs: not a model of this architecture", where=where)
    state = parse_checkpoint(entry.data, entry.path, where)
    load_exactly(skeleton, state, entry.model, where)
    found = weights_hash(skeleton)
    if found != entry.weights_hash:
        raise UserError(f"its weights hash to {found}, not to the weights_hash "
                        f"{entry.weights_hash} of its metadata: edited or damaged", where=where)
    return skeleton.eval()


__all__ = ["FOLDER_MODEL_BYTES", "FORMAT", "MAX_FILE_BYTES", "METADATA_KEYS", "SERVING_KEYS",
           "ModelFile", "ShippedModel", "load_shipped", "merge_model_files", "model_file",
           "read_metadata", "ship_model", "shipped_models", "size_warning", "write_model_file"]
