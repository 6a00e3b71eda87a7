"""One small generic registry used for datasets, models, attacks, defenses and unlearning methods.

A registry is a dict plus a decorator placed next to each plugin (timm style). Names are explicit,
duplicates raise, unknown names get a "did you mean" and the list of known names, and third-party
packages add plugins through an entry-point group (lm-evaluation-harness style).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from robench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps registered names to plugin objects (usually classes).

    Args:
        kind: human name of what is registered ("attack", "defense", ...), used in messages.
        entry_point_group: optional ``importlib.metadata`` entry-point group scanned lazily
            the first time the registry is read.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@ATTACKS.register("fgsm")`` above the plugin class or function."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered by {existing!r}")
        self._entries[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                continue  # a built-in or an already-imported plugin wins; no silent overwrite
            # Loading the module runs its @register decorator; a bare object is added by name.
            obj = ep.load()
            if ep.name not in self._entries:
                self.add(ep.name, obj)

    def get(self, name: str) -> T:
        """Return the plugin registered as ``name``; unknown names raise a UserError."""
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}"

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_entry_points()
        for name in sorted(self._entries):
            yield name, self._entries[name]


def describe(obj: object) -> str:
    """First line of a plugin's docstring: the one-line description ``robench list`` shows."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
