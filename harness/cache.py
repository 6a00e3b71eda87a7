"""Content-addressed cache of trained and defended model weights.

The key is a hash of everything that determines the weights (dataset, model, training and
defense configuration, seed, robench version, and the hash of the source code that trains or
defends: ``robench.codehash``), so re-running a finished suite recomputes nothing, and changing
one defense's params or editing its file recomputes only that defense. Weights are
stored with ``torch.save(state_dict)`` in a per-user cache folder (never in the repository) and
read back with ``torch.load(..., weights_only=True)``.

Each entry records how it was trained (``trained_with``: device, torch threads, torch version,
CPU architecture, memory format, CPU kernels), which the run log shows when the entry is reused.
It is not part of the key, on purpose: the same training on another thread count, kernel set or
device differs only in the order floats are summed, so a cluster's entries serve a laptop; but
the weights are then not what this machine would train, and the last bits grow over training:
a baseline's numbers move by about a point, some unlearning defenses' by up to 30 points
(benchmarks/RESULTS.md, "Two cells at a time on 2 cores"), and the log says so.

An entry is served only when it verifies: it records its key's inputs (the canonical JSON a
plan's key is the hash of, joined with the fingerprint of the data: ``CacheKey.with_data``),
the hash of its weights (``state_hash``: what ``robench.models.weights_hash`` gives the model
they are loaded into) and the hash of its metadata (the seconds and a defense's metrics a run
records from it), and ``load`` treats it as a miss when its recorded inputs do not hash to its
file name, or its weights or metadata do not hash to their recorded values. So an entry whose
weights were swapped for another model's, whose metadata was edited, or that was copied under
another key's name, is recomputed rather than served, in a cache shared by many machines too.
This guards against mix-ups and damage, not against a forger who recomputes the hashes: the
cache is only as trustworthy as the folder it lives in. An entry written before these records
existed is a miss once, and is then written again with them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from platformdirs import user_cache_dir
from torch import nn

from robench.engine import model_memory_format
from robench.errors import UserError
from robench.outdir.files import read_regular

CACHE_ENV = "ROBENCH_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(user_cache_dir("robench")) / "models")


@dataclass(frozen=True)
class CacheKey:
    """The inputs that determine a model's weights, as canonical JSON (``text``: what an entry
    records), and their hash (``hex``: a plan's ``cache_key``, an entry's file name)."""

    text: str

    @property
    def hex(self) -> str:
        return digest(self.text)

    def with_data(self, data_hash: str) -> CacheKey:
        """These inputs and the fingerprint of the data actually loaded: the key a run stores
        its models under (``robench plan`` looks up the same key)."""
        return cache_key(**json.loads(self.text), data=data_hash)


def cache_key(**parts: Any) -> CacheKey:
    """The key of ``parts``: their JSON with sorted keys, compact, values as ``str`` when JSON
    has no type for them."""
    return CacheKey(json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")))


def digest(text: str) -> str:
    """The short sha256 of ``text`` that keys and records use."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """The hash of a state dict's tensors (names, dtypes, shapes and bytes, in name order):
    what ``robench.models.weights_hash`` gives a model with this state dict, computed before
    the tensors are copied into one."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        value = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}:{value.dtype}:{tuple(value.shape)}\0".encode())
        hasher.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


def fits(state: Any, model: nn.Module) -> bool:
    """Whether ``state`` has exactly ``model``'s entries, each a tensor of the same shape and
    dtype (so loading it changes every weight or none)."""
    own = model.state_dict()
    return (isinstance(state, dict) and state.keys() == own.keys()
            and all(isinstance(state[k], torch.Tensor) and state[k].shape == v.shape
                    and state[k].dtype == v.dtype for k, v in own.items()))


class ModelCache:
    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = root or cache_dir()
        self.enabled = enabled

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str | CacheKey, model: nn.Module,
             on_reject: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """Load weights into ``model``; returns the stored metadata, or None on a miss. An
        entry that exists but is not served (damaged, of another model, unverified) leaves
        ``model`` untouched and is passed to ``on_reject`` as one line saying why."""
        name = key.hex if isinstance(key, CacheKey) else key
        path = self._path(name)
        if not self.enabled or not os.path.lexists(path):
            return None
        try:
            # a regular file only (a FIFO planted there must not block the run), and never far
            # larger than the model's own weights
            data = read_regular(path, limit=_size_cap(model) + 1)
            if data is None:
                return None
            if len(data) > _size_cap(model):
                raise ValueError("far larger than the model's weights")
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            why = _rejected(blob, name, model)
            if why is None:
                model.load_state_dict(blob["state_dict"])
                return json.loads(blob["meta"])
        except UserError as err:  # not a regular file: a miss, said in one line
            why = f"it cannot be read ({err.message})"
        except Exception as err:  # a corrupt or incompatible entry is a miss, never a crash
            why = f"it cannot be read ({type(err).__name__})"
        if on_reject is not None:
            on_reject(f"model cache entry {name[:10]} not used: {why}; computing it again")
        return None

    def recorded_meta(self, key: CacheKey) -> dict[str, Any] | None:
        """The metadata of ``key``'s entry as stored now, checked against the key (its recorded
        inputs hash to its name, its metadata to its recorded hash) but without loading or
        checking its weights: what a run records of the entries it used (``trained_with``).
        None when the cache is off, or the entry is absent, unreadable or does not verify."""
        if not self.enabled:
            return None
        try:
            data = read_regular(self._path(key.hex), limit=RECORD_READ_LIMIT)
            if data is None:
                return None
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            meta, text = blob.get("meta"), blob.get(KEY_FIELD)
            if not (isinstance(meta, str) and isinstance(text, str)) or digest(text) != key.hex \
                    or blob.get(META_FIELD) != _bound(text, meta):
                return None
            value = json.loads(meta)
        except Exception:  # noqa: BLE001 - an unreadable entry is simply not recorded
            return None
        return value if isinstance(value, dict) else None

    def entries(self) -> list[Path]:
        """The entry files in the cache folder (named ``<32 hex>.pt``)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.pt")
                      if _is_key(p.stem) and p.is_file() and not p.is_symlink())

    def info(self) -> dict[str, Any]:
        entries = self.entries()
        return {"location": str(self.root), "entries": len(entries),
                "bytes": sum(p.stat().st_size for p in entries)}

    def clear(self) -> int:
        """Delete every entry file (and nothing else); returns how many."""
        entries = self.entries()
        for path in entries:
            path.unlink(missing_ok=True)
        return len(entries)

    def save(self, key: CacheKey, model: nn.Module, meta: dict[str, Any]) -> str | None:
        """Store the weights and ``meta``, with their hashes and the key's inputs; returns
        None, or why they could not be stored (an unwritable or full cache folder costs only
        the reuse, never the run)."""
        if not self.enabled:
            return None
        # stored in the default layout whatever the engine's (the values are the same), so an
        # entry reads as a plain state dict (safetensors refuses channels_last tensors)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.root)
            os.close(fd)
            text = json.dumps({**meta, "trained_with": trained_with(model)}, default=str,
                              sort_keys=True)
            torch.save({"state_dict": state, "meta": text,
                        WEIGHTS_FIELD: _bound(key.text, state_hash(state)),
                        META_FIELD: _bound(key.text, text), KEY_FIELD: key.text}, tmp)
            os.replace(tmp, self._path(key.hex))
        except (OSError, RuntimeError) as err:
            return f"model cache {self.root} is not writable ({err}); continuing without it"
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return None


#: the most bytes ``recorded_meta`` reads of one entry (a larger file is not recorded)
RECORD_READ_LIMIT = 256 << 20
#: what an entry records beside its weights and metadata: their hashes, and its key's inputs
WEIGHTS_FIELD = "weights_hash"
META_FIELD = "meta_hash"
KEY_FIELD = "key"


def _rejected(blob: Any, key: str, model: nn.Module) -> str | None:
    """Why an entry read from the file of ``key`` must not be served into ``model``, or None.
    Checked before anything is copied: load_state_dict copies what fits, then fails."""
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), str):
        return "it is not a model cache entry"
    if not _valid_meta(json.loads(blob["meta"])):
        return "its metadata is damaged"
    if not fits(blob.get("state_dict"), model):
        return "its weights do not fit the model"
    recorded = [blob.get(field) for field in (WEIGHTS_FIELD, META_FIELD, KEY_FIELD)]
    if not all(isinstance(value, str) for value in recorded):
        return ("it records no weights hash, metadata hash or key (written by an older "
                "robench, or damaged)")
    weights, meta, text = (str(value) for value in recorded)
    if digest(text) != key:
        return ("it was recorded for another key (its recorded inputs do not hash to its "
                "name: a copied or renamed entry)")
    if _bound(text, blob["meta"]) != meta:
        return "its metadata does not match its recorded hash (edited or damaged)"
    if _bound(text, state_hash(blob["state_dict"])) != weights:
        return "its weights do not match their recorded hash (replaced or damaged)"
    return None


def _bound(key_text: str, value: str) -> str:
    """A recorded hash bound to its entry's key: a hash copied from another entry (with its
    weights or metadata) does not verify under this entry's key."""
    return digest(f"{key_text}\0{value}")


def _size_cap(model: nn.Module) -> int:
    """The largest entry file read for ``model``: 8x its weights' bytes plus 16 MiB (room for
    the pickle's framing and metadata, never a file far larger than the model needs)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 8 * weights + (16 << 20)


def _valid_meta(meta: Any) -> bool:
    """What a run reads from an entry's metadata has the shape robench wrote: finite seconds,
    and a defense's metrics as rows with step, metric and value (anything else is a miss)."""
    if not isinstance(meta, dict):
        return False
    seconds = meta.get("seconds")
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return False
    rows = meta.get("metrics", [])
    return isinstance(rows, list) and all(
        isinstance(r, dict) and {"step", "metric", "value"} <= r.keys()
        and isinstance(r["value"], int | float) for r in rows)


#: environment variables that choose the CPU kernels torch trains with
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR")


def trained_with(model: nn.Module) -> dict[str, Any]:
    """Where and how ``model`` was trained: what can make the same configuration's weights
    differ in their last bits (the thread count as the entry is saved, in the process that
    trained it: a Ray task sets its own; the CPU kernels torch picked, since AVX2 and AVX-512
    kernels train different weights from the same code, data and threads: benchmarks/RESULTS.md,
    "Two cells at a time on 2 cores")."""
    param = next(model.parameters(), None)
    device = param.device.type if param is not None else "cpu"
    how: dict[str, Any] = {
        "device": device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "arch": platform.machine(), "memory_format": model_memory_format(model)}
    if device == "cpu":
        # ATen's kernel level and the settings that cap it or oneDNN's; oneDNN's own choice
        # for a CPU is not exposed, so two CPUs at one level may still differ
        how["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        how["cpu_kernel_settings"] = {name: os.environ[name] for name in KERNEL_SETTINGS
                                      if name in os.environ}
    return how


def provenance_text(meta: dict[str, Any]) -> str:
    """How a cache entry was trained, for the run log (older entries did not record it). An
    entry may come from another machine's cache: each field is shown printable and short."""
    how = meta.get("trained_with")
    if not isinstance(how, dict):
        return "trained where: not recorded"

    def inert(value: object, limit: int = 40) -> str:
        return "".join(c if c.isprintable() else "?" for c in str(value))[:limit]

    def shown(key: str) -> str:
        return inert(how.get(key))

    layout = f", {shown('memory_format')} weights" if "memory_format" in how else ""
    kernels = f", {shown('cpu_capability')} CPU kernels" if "cpu_capability" in how else ""
    settings = how.get("cpu_kernel_settings")
    if isinstance(settings, dict) and settings:
        kernels += f" ({inert(' '.join(f'{k}={v}' for k, v in settings.items()), 60)})"
    return (f"trained on {shown('device')} ({shown('arch')}), {shown('torch_threads')} torch "
            f"threads, torch {shown('torch')}{layout}{kernels}")


def _is_key(stem: str) -> bool:
    return len(stem) == 32 and all(c in "0123456789abcdef" for c in stem)
