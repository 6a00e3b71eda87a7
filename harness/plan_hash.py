"""Code hashes at plan time, without importing third-party packages nothing has imported yet.

``robench.codehash`` is itself part of every code hash, so it cannot change without
invalidating every stored result; this module wraps it instead. The wrapper swaps codehash's
module loader for one that follows only packages already imported (``codehash._load`` is the
one seam it offers), under a re-entrant lock, and restores it afterwards.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

from robench import codehash

_HASHING = threading.RLock()  # re-entrant: a module loaded while hashing may hash code too
_PLAIN_LOAD = codehash._load
_tops: tuple[int, frozenset[str]] = (0, frozenset())


def _imported_tops() -> frozenset[str]:
    """Top-level names of every imported module (``a`` of ``a.b`` even when ``a`` itself is
    not in sys.modules: a module loaded from a file under a dotted name)."""
    global _tops
    if _tops[0] != len(sys.modules):
        _tops = (len(sys.modules), frozenset(m.partition(".")[0] for m in list(sys.modules)))
    return _tops[1]


def _load_if_package_imported(name: str) -> ModuleType | None:
    """``codehash._load`` for a name whose top-level package is imported already, else None."""
    return _PLAIN_LOAD(name) if name.partition(".")[0] in _imported_tops() else None


# codehash follows the module of every function in its globals: as robench.plan's, this
# stand-in would add plan and all it imports to every hash; as codehash's own it adds nothing
_load_if_package_imported.__module__ = codehash.__name__


def code_hash(*objects: object) -> str:
    """``robench.codehash.code_hash``, without importing packages nothing has imported yet.

    To tell ``from X import Y`` (a name) from ``from X import module``, code hashing loads
    ``X.Y``; for a third-party package that imports it whole (``attacks/backends.py``'s
    ``from art...``: ART and scipy, tens of MB of resident memory for every run, ART cells or
    not).
    Only ``robench``'s and the hashed objects' own top-level packages are followed, and those
    are imported (the objects live in them), so a name whose top-level package is not imported
    is never followed whatever its load gives: here it is not loaded. Only codehash's own
    lookups are affected; the modules it does load import what they import as usual.
    ``tests/test_codehash.py`` checks that the hashes equal the plain ones. (``robench.codehash``
    itself is part of every code hash, which is why this lives apart from it.)"""
    with _HASHING:
        previous, codehash._load = codehash._load, _load_if_package_imported
        try:
            return codehash.code_hash(*objects)
        finally:
            codehash._load = previous
