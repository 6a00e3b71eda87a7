"""Bring your own weights: ``model: {name: ..., weights: path}`` loads a checkpoint as the
baseline instead of training it.

Formats: a safetensors file (``safetensors.torch``), or a torch file read with
``torch.load(..., weights_only=True)`` (never unpickling arbitrary objects). A torch file may
hold the state dict itself, or a dict with it under ``state_dict``, ``model_state_dict`` or
``model`` (common training-script layouts, and robench's own model-cache entries). Keys that
all start with ``module.`` (saved from ``nn.DataParallel``/DDP) lose that prefix. The state dict
must fit the architecture exactly: every key present, no extra key, every shape equal (no
``strict=False``: a silently half-loaded model is the worst outcome).

Every tensor must be a plain dense one (strided layout, real values): a sparse, quantized,
nested or meta tensor is refused in one line naming its key. A file far larger than the
architecture needs is refused from its size before any of it is read (``size_limit``: the
model's parameter and buffer bytes times ``SIZE_FACTOR``, plus ``HEADER_BYTES``), so a
mistaken path to a multi-gigabyte file costs nothing.

The file's sha256 joins the baseline's cache key (and so every defense's), and run.json
records it; the file is read and checked when the suite is resolved, read again when the
baseline is built, and a file that changed in between is an error.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench.errors import UserError
from robench.outdir.files import NotRegularFile, open_regular_file

WHERE = "model.weights"
#: containers of a state dict in common checkpoint layouts (first match wins)
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
SHOWN = 3  # how many keys an error lists per kind
#: a checkpoint may hold more than the weights (optimizer moments, an EMA copy, float64
#: values): up to this many times the model's own bytes are read, plus HEADER_BYTES
SIZE_FACTOR = 8
HEADER_BYTES = 16 * 2**20


@dataclass(frozen=True)
class WeightsFile:
    """A checkpoint named by ``model.weights``: its resolved path and content hash."""

    path: Path
    sha256: str
    where: str  # "<suite file>: model.weights", for error messages
    limit: SizeLimit | None = None  # the most bytes read (None: no limit)

    def record(self) -> dict[str, str]:
        """What run.json stores about the file."""
        return {"path": str(self.path), "sha256": self.sha256}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The file's state dict, read again; an error if its content changed since resolve."""
        data = _read(self.path, self.where, self.limit)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise UserError(f"{self.path} changed since the suite was read (sha256 differs); "
                            "run again", where=self.where)
        return parse_checkpoint(data, self.path, self.where)

    def load_into(self, model: nn.Module, model_name: str) -> nn.Module:
        """Copy the checkpoint into ``model`` (which must fit it exactly); returns ``model``."""
        load_exactly(model, self.state_dict(), model_name, self.where)
        return model


@dataclass(frozen=True)
class SizeLimit:
    """The most bytes a weights file for model ``model`` may have: ``model_bytes`` (its
    parameters and buffers) times ``SIZE_FACTOR`` plus ``HEADER_BYTES``."""

    model: str
    model_bytes: int

    @property
    def bytes(self) -> int:
        return self.model_bytes * SIZE_FACTOR + HEADER_BYTES


def size_limit(model_cls: type[nn.Module], model_name: str,
               num_classes: int = 10) -> SizeLimit | None:
    """The size limit for checkpoints of ``model_cls``, from a copy built without memory
    (on the meta device; None when the model cannot be built so: no limit then, and the
    model's own error comes when it is built for the run)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = model_cls(num_classes=num_classes)
        tensors = itertools.chain(model.parameters(), model.buffers())
        return SizeLimit(model_name, sum(t.numel() * t.element_size() for t in tensors))
    except Exception:  # noqa: BLE001 - a plugin's constructor may fail in its own ways
        return None


def weights_file(text: str, source: str, limit: SizeLimit | None = None) -> WeightsFile:
    """Resolve ``model.weights`` (relative paths: relative to the suite file's folder), read
    the file once (refused unread when it is larger than ``limit``) and check that it holds a
    state dict of dense tensors; one ``UserError`` otherwise."""
    where = f"{source}: {WHERE}"
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(source).parent / path
    path = path.resolve()
    data = _read(path, where, limit)
    parse_checkpoint(data, path, where)
    return WeightsFile(path, hashlib.sha256(data).hexdigest(), where, limit)


def suite_record(suite: Any, weights: WeightsFile | None, folder: Path) -> dict[str, Any]:
    """The suite as run.json records it (``suite.model_dump``), with ``model.weights`` relative
    to the results folder ``folder``: a recorded suite resolves its relative paths against
    run.json's folder (``robench verify``), so the checkpoint is found from any working folder,
    and wherever the results and the checkpoint move together (a clone of a repository that
    holds both). An absolute path would break on another machine, and a path relative to the
    suite file, or to the working folder of the run, breaks when verify runs elsewhere. The
    checkpoint's identity is its sha256 (run.json's ``baseline.weights``), not its path."""
    dump: dict[str, Any] = suite.model_dump(mode="json")
    if weights is not None and isinstance(dump.get("model"), dict):
        try:
            dump["model"]["weights"] = os.path.relpath(weights.path, folder.resolve())
        except ValueError:  # another drive (Windows): no relative path exists
            dump["model"]["weights"] = str(weights.path)
    return dump


def recorded_weights(suite: dict[str, Any], baseline: Any, folder: Path) -> dict[str, Any]:
    """A recorded suite whose ``model.weights`` is found: as recorded (relative to the results
    folder ``folder``, see ``suite_record``), else the resolved path run.json's
    ``baseline.weights.path`` names when that file exists (a run recorded with the suite's
    own relative path). The file's sha256 is checked against the record either way."""
    model = suite.get("model")
    if not isinstance(model, dict):
        return suite
    given = model.get("weights")
    if not isinstance(given, str) or not given or (folder / Path(given).expanduser()).exists():
        return suite
    record = baseline.get("weights") if isinstance(baseline, dict) else None
    path = record.get("path") if isinstance(record, dict) else None
    if isinstance(path, str) and Path(path).is_absolute() and Path(path).is_file():
        return {**suite, "model": {**model, "weights": path}}
    return suite


def _read(path: Path, where: str, limit: SizeLimit | None = None) -> bytes:
    try:
        fd = open_regular_file(path, follow_links=True)
    except FileNotFoundError:
        raise UserError(f"weights file {path} not found", where=where) from None
    except NotRegularFile as err:
        what = ("is a folder, not a checkpoint file" if err.kind == "a folder" else
                f"is not a regular file ({err.kind})")
        raise UserError(f"weights file {path} {what}", where=where) from None
    except OSError as err:
        raise UserError(f"cannot read weights file {path} ({err.strerror})", where=where) from None
    try:
        with os.fdopen(fd, "rb") as f:
            size = _size_checked(path, f.fileno(), limit, where)
            data = f.read(size + 1)  # a file that grew since its size was checked stays bounded
    except OSError as err:
        raise UserError(f"cannot read weights file {path} ({err.strerror})", where=where) from None
    if limit is not None and len(data) > limit.bytes:
        _too_large(path, len(data), limit, where)
    return data


def _size_checked(path: Path, fd: int, limit: SizeLimit | None, where: str) -> int:
    size = os.fstat(fd).st_size
    if limit is not None and size > limit.bytes:
        _too_large(path, size, limit, where)
    return size


def _too_large(path: Path, size: int, limit: SizeLimit, where: str) -> None:
    raise UserError(f"weights file {path} is {_bytes(size)}, but model {limit.model!r} has "
                    f"{_bytes(limit.model_bytes)} of weights (files up to {_bytes(limit.bytes)} "
                    "are read): not a checkpoint of this model?", where=where)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _looks_like_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


#: the starts of torch.load's notes on sparse and quantized tensors, silenced: such a file is
#: refused in one line after loading (``_unwrap``); any other warning still shows
TORCH_LOAD_NOTES = (
    "Validating sparse tensor invariants",
    "Sparse CSR tensor support is in beta",
    "TypedStorage is deprecated",
    "torch.quantize_per_tensor, torch.quantize_per_channel and other quantized",
)


def parse_checkpoint(data: bytes, path: Path, where: str) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint's bytes (safetensors or torch ``weights_only``)."""
    if _looks_like_safetensors(data) or path.suffix == ".safetensors":
        try:
            from safetensors.torch import load as load_safetensors

            state: Any = load_safetensors(data)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise UserError(f"{path.name} is not a readable safetensors file "
                            f"({type(err).__name__}: {_short(err)})", where=where) from None
    else:
        try:
            with warnings.catch_warnings():
                for note in TORCH_LOAD_NOTES:
                    warnings.filterwarnings("ignore", message=note, category=UserWarning)
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle/zip/torch errors of a foreign file
            raise UserError(f"{path.name} is not a checkpoint: neither safetensors nor a torch "
                            f"file that torch.load(weights_only=True) reads ({_why(err)})",
                            where=where) from None
    return _unwrap(state, path, where)


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                    for k, v in value.items()))


def _unwrap(state: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    if not _is_state_dict(state) and isinstance(state, Mapping):
        state = next((state[k] for k in CONTAINER_KEYS if _is_state_dict(state.get(k))), state)
    if not _is_state_dict(state):
        if isinstance(state, Mapping):
            keys = ", ".join(map(str, list(state)[:SHOWN]))
            what = f"a dict without a state dict (keys: {keys or 'none'})"
        else:
            what = f"a {type(state).__name__}"
        raise UserError(f"{path.name} holds {what}, not a state dict (parameter names mapped "
                        "to tensors)", where=where)
    for name, tensor in state.items():
        odd = _not_dense(tensor)
        if odd:
            raise UserError(f"{path.name}: tensor {_short(repr(name), 80)} is not a plain dense "
                            f"tensor ({odd}); save dense values (tensor.to_dense(), "
                            "dequantize())", where=where)
    names = list(state)
    if all(name.startswith("module.") for name in names):  # saved from (Distributed)DataParallel
        state = {name[len("module."):]: tensor for name, tensor in state.items()}
    return dict(state)


def _not_dense(tensor: torch.Tensor) -> str:
    """What makes ``tensor`` more or less than plain values in memory ("" when nothing)."""
    if tensor.is_nested:
        return "nested"
    if tensor.layout != torch.strided:
        return str(tensor.layout).replace("torch.", "")
    if tensor.is_quantized:
        return "quantized"
    if tensor.is_meta:
        return "meta, without values"
    return ""


def load_exactly(model: nn.Module, state: Mapping[str, torch.Tensor], model_name: str,
                 where: str) -> None:
    """``load_state_dict`` with every key and shape required to match; the error lists the
    first few missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {_shape(state[k])}, model {_shape(v)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    # a float parameter from an integer tensor would be a silent cast of something else
    dtypes = [f"{k} (file {state[k].dtype}, model {v.dtype})" for k, v in expected.items()
              if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if missing or unexpected or shapes or dtypes:
        parts = [f"{label} {_first(items)}" for label, items in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatches", shapes), ("non-float values", dtypes)) if items]
        hint = (" (a checkpoint of another architecture?)"
                if not set(state) & set(expected) or shapes else "")
        raise UserError(f"checkpoint does not fit model {model_name!r}{hint}: "
                        + "; ".join(parts), where=where)
    with torch.no_grad():
        model.load_state_dict(dict(state), strict=True)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _first(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _why(err: BaseException) -> str:
    """The useful line of torch's long ``weights_only`` error."""
    text = str(err)
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        return (f"it pickles a {pickled.group(1)} object, which weights_only loading refuses; "
                "save model.state_dict() instead")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return f"{type(err).__name__}: {_short(detail.group(1) if detail else text)}"


def _short(err: BaseException | str, limit: int = 120) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."
