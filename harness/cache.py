"""Content-addressed cache of trained and defended model weights.

The key is a hash of everything that determines the weights (dataset, model, training and
defense configuration, seed, robench version, and the hash of the source code that trains or
defends: ``robench.codehash``), so re-running a finished suite recomputes nothing, and changing
one defense's params or editing its file recomputes only that defense. Weights are
stored with ``torch.save(state_dict)`` in a per-user cache folder (never in the repository) and
read back with ``torch.load(..., weights_only=True)``.

Each entry records how it was trained (``trained_with``: device, torch threads, torch version,
CPU architecture), which the run log shows when the entry is reused. It is not part of the key, on
purpose: the same training on another thread count or device differs only in the order floats
are summed, so a cluster's entries serve a laptop; but the weights are then not bit-identical
to what this machine would train, so its numbers can differ slightly from a cold run's
(an example is in benchmarks/RESULTS.md), and the log says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from platformdirs import user_cache_dir
from torch import nn

CACHE_ENV = "ROBENCH_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(user_cache_dir("robench")) / "models")


def cache_key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def data_key(plan_key: str, data_hash: str) -> str:
    """A plan's cache key joined with the fingerprint of the data actually loaded (the runner
    stores under it; ``robench plan`` looks up the same key)."""
    return cache_key(plan=plan_key, data=data_hash)


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

    def load(self, key: str, model: nn.Module) -> dict[str, Any] | None:
        """Load weights into ``model``; returns the stored metadata, or None on a miss."""
        path = self._path(key)
        if not self.enabled or not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(blob.get("meta", "{}"))
            if not _valid_meta(meta):
                return None
            if not fits(blob["state_dict"], model):
                return None  # before copying: load_state_dict would copy what fits, then fail
            model.load_state_dict(blob["state_dict"])
        except Exception:  # a corrupt or incompatible entry is a miss, never a crash
            return None
        return meta

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

    def save(self, key: str, model: nn.Module, meta: dict[str, Any]) -> str | None:
        """Store the weights; returns None, or why they could not be stored (an unwritable or
        full cache folder costs only the reuse, never the run)."""
        if not self.enabled:
            return None
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.root)
            os.close(fd)
            meta = {**meta, "trained_with": trained_with(model)}
            torch.save({"state_dict": state, "meta": json.dumps(meta, default=str)}, tmp)
            os.replace(tmp, self._path(key))
        except (OSError, RuntimeError) as err:
            return f"model cache {self.root} is not writable ({err}); continuing without it"
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return None


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


def trained_with(model: nn.Module) -> dict[str, Any]:
    """Where and how ``model`` was trained: what can make the same configuration's weights
    differ in their last bits (the thread count as the entry is saved, in the process that
    trained it: a Ray task sets its own)."""
    param = next(model.parameters(), None)
    return {"device": param.device.type if param is not None else "cpu",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "arch": platform.machine()}


def provenance_text(meta: dict[str, Any]) -> str:
    """How a cache entry was trained, for the run log (older entries did not record it). An
    entry may come from another machine's cache: each field is shown printable and short."""
    how = meta.get("trained_with")
    if not isinstance(how, dict):
        return "trained where: not recorded"

    def shown(key: str) -> str:
        text = "".join(c if c.isprintable() else "?" for c in str(how.get(key)))
        return text[:40]

    return (f"trained on {shown('device')} ({shown('arch')}), {shown('torch_threads')} torch "
            f"threads, torch {shown('torch')}")


def _is_key(stem: str) -> bool:
    return len(stem) == 32 and all(c in "0123456789abcdef" for c in stem)
