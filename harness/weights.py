"""Bring your own weights: ``model: {name: ..., weights: path}`` loads a checkpoint as the
baseline instead of training it.

Formats: a safetensors file (``safetensors.torch``), or a torch file read with
``torch.load(..., weights_only=True)`` (never unpickling arbitrary objects). A torch file may
hold the state dict itself, or a dict with it under ``state_dict``, ``model_state_dict`` or
``model`` (common training-script layouts, and robench's own model-cache entries). Keys that
all start with ``module.`` (saved from ``nn.DataParallel``/DDP) lose that prefix. The state dict
must fit the architecture exactly: every key present, no extra key, every shape equal (no
``strict=False``: a silently half-loaded model is the worst outcome).

The file's sha256 joins the baseline's cache key (and so every defense's), and run.json
records it; the file is read and checked when the suite is resolved, read again when the
baseline is built, and a file that changed in between is an error.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench.errors import UserError

WHERE = "model.weights"
#: containers of a state dict in common checkpoint layouts (first match wins)
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
SHOWN = 3  # how many keys an error lists per kind


@dataclass(frozen=True)
class WeightsFile:
    """A checkpoint named by ``model.weights``: its resolved path and content hash."""

    path: Path
    sha256: str
    where: str  # "<suite file>: model.weights", for error messages

    def record(self) -> dict[str, str]:
        """What run.json stores about the file."""
        return {"path": str(self.path), "sha256": self.sha256}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The file's state dict, read again; an error if its content changed since resolve."""
        data = _read(self.path, self.where)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise UserError(f"{self.path} changed since the suite was read (sha256 differs); "
                            "run again", where=self.where)
        return parse_checkpoint(data, self.path, self.where)

    def load_into(self, model: nn.Module, model_name: str) -> nn.Module:
        """Copy the checkpoint into ``model`` (which must fit it exactly); returns ``model``."""
        load_exactly(model, self.state_dict(), model_name, self.where)
        return model


def weights_file(text: str, source: str) -> WeightsFile:
    """Resolve ``model.weights`` (relative paths: relative to the suite file's folder), read
    the file once and check that it holds a state dict; one ``UserError`` otherwise."""
    where = f"{source}: {WHERE}"
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(source).parent / path
    path = path.resolve()
    data = _read(path, where)
    parse_checkpoint(data, path, where)
    return WeightsFile(path, hashlib.sha256(data).hexdigest(), where)


def _read(path: Path, where: str) -> bytes:
    if not path.is_file():
        what = ("is a folder, not a checkpoint file" if path.is_dir() else
                "is not a regular file" if path.exists() else "not found")
        raise UserError(f"weights file {path} {what}", where=where)
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read weights file {path} ({err.strerror})", where=where) from None


def _looks_like_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


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
    names = list(state)
    if all(name.startswith("module.") for name in names):  # saved from (Distributed)DataParallel
        state = {name[len("module."):]: tensor for name, tensor in state.items()}
    return dict(state)


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
