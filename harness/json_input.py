"""JSON from files robench reads (run.json, diagnostics.json, a shipped model's header, a
row's params): parsed with every failure a ``ValueError``.

``json.loads`` raises ``RecursionError`` on an array or object nested deeper than the
interpreter's recursion limit (``[`` 100 000 times is a 200 kB file), and ``MemoryError``
when the parsed value does not fit; both would escape the readers' ``ValueError`` handling as
a traceback. Here they become a ``ValueError`` saying what was wrong, so each reader's
one-line ``UserError`` names the file as for any other damaged JSON. Not a depth cap: what
parses today parses the same.
"""

from __future__ import annotations

import json
from typing import Any

NESTED = "JSON nested too deeply to read"
TOO_LARGE = "JSON too large to read"


class UnreadableJSON(ValueError):
    """Well-formed or not, JSON that cannot be parsed here (``NESTED``, ``TOO_LARGE``)."""


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``; a ``ValueError`` (``json.JSONDecodeError``, a non-UTF-8 byte:
    ``UnicodeDecodeError``, or nesting or size beyond what can be parsed) otherwise."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableJSON(NESTED) from None
    except MemoryError:
        raise UnreadableJSON(TOO_LARGE) from None


__all__ = ["NESTED", "TOO_LARGE", "UnreadableJSON", "loads"]
