"""Seed derivation: the one place a seed for a part of a run is made from the suite seed.

A part of a run is named by labels (``derive_seed(seed, "attack", "pgd")``), never by its
position in the suite, so reordering a suite's entries changes no number. The same labels
always give the same seed on every machine (a hash, not Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

import torch

#: derived seeds fit torch's and numpy's generators (numpy takes < 2**32)
SEED_BITS = 31


def derive_seed(seed: int, *labels: object) -> int:
    """The seed of the part of a run named by ``labels``; with no labels, ``seed`` itself."""
    if not labels:
        return int(seed)
    text = "\x1f".join([str(int(seed)), *map(str, labels)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**SEED_BITS


def generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, *labels)`` (CPU: the same
    draws on every device)."""
    return torch.Generator().manual_seed(derive_seed(seed, *labels))
