"""Content-addressed cache of trained and defended model weights.

The key is a hash of everything that determines the weights (dataset, model, training and
defense configuration, seed, robench and torch versions), so re-running a finished suite
recomputes nothing and changing one defense's params recomputes only that defense. Weights are
stored with ``torch.save(state_dict)`` in a per-user cache folder (never in the repository) and
read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
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
            model.load_state_dict(blob["state_dict"])
        except Exception:  # a corrupt or incompatible entry is a miss, never a crash
            return None
        return json.loads(blob.get("meta", "{}"))

    def save(self, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            torch.save({"state_dict": state, "meta": json.dumps(meta, default=str)}, tmp)
            os.replace(tmp, self._path(key))
        finally:
            Path(tmp).unlink(missing_ok=True)
