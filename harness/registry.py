"""One small generic registry used for datasets, models, attacks, defenses and unlearning methods.

A registry is a dict plus a decorator placed next to each plugin (timm style). Names are explicit,
duplicates raise, a registered class must derive from the registry's base class, unknown names
get a "did you mean" and the list of known names, and third-party packages add plugins through
an entry-point group (lm-evaluation-harness style). A third-party plugin that fails to load
(any exception at import but Ctrl-C, not a class of the right base, a built-in's name) is set
aside with its reason: every other plugin and command keeps working, and only a suite that names
it fails. A plugin that changes the working folder while it is imported has it changed back.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import suppress
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from robench.errors import UserError

#: name lookup only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps registered names to plugin objects (usually classes).

    Args:
        kind: human name of what is registered ("attack", "defense", ...), used in messages.
        entry_point_group: optional ``importlib.metadata`` entry-point group scanned lazily
            the first time the registry is read.
        base: if given, every registered object must be a subclass of it.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 base: type | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.base = base
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None
        #: third-party plugins that could not be loaded: name -> one-line reason
        self.broken: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@ATTACKS.register("fgsm")`` above the plugin class or function."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if self.base is not None and not (inspect.isclass(obj) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} {name!r} must be a subclass of "
                            f"{self.base.__module__}.{self.base.__qualname__} (got {obj!r})")
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered by {existing!r}")
        self._entries[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        if self.entry_point_group is None:  # no group: nothing to scan
            return
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                # a built-in or an already-imported plugin wins; no silent overwrite
                self.broken[ep.name] = (f"entry point {ep.value!r} re-registers the existing "
                                        f"{self.kind} {ep.name!r}; ignored")
                continue
            before = set(self._entries)
            cwd = _working_folder()
            try:
                # Loading the module runs its @register decorator; a bare object is added.
                obj = ep.load()
                if ep.name not in self._entries:
                    self.add(ep.name, obj)
            except KeyboardInterrupt:  # Ctrl-C (and SIGTERM, see robench.cli) stops robench
                raise
            except BaseException as err:  # noqa: BLE001 - foreign code: any failure is its own
                for name in set(self._entries) - before:  # half-registered: not usable
                    del self._entries[name]
                self.broken[ep.name] = (f"entry point {ep.value!r} failed to load "
                                        f"({type(err).__name__}: {_short(err)})")
            finally:
                _restore_working_folder(cwd)

    def get(self, name: str) -> T:
        """Return the plugin registered as ``name``; unknown names raise a UserError."""
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            if name in self.broken:
                raise UserError(f"{self.kind} {name!r} is installed but unusable: "
                                f"{self.broken[name]}") from None
            raise UserError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}"

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries or name in self.broken

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_entry_points()
        for name in sorted(self._entries):
            yield name, self._entries[name]


def _working_folder() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the folder was removed: nothing to put back
        return None


def _restore_working_folder(cwd: str | None) -> None:
    """Undo a plugin's ``os.chdir`` at import: plugins load lazily, at the first lookup, so a
    changed working folder would move whichever relative paths robench resolves later (the
    default results folder, a suite's relative data.root, $ROBENCH_CACHE_DIR) depending on
    when that lookup happened."""
    if cwd is None:
        return
    try:
        if os.getcwd() == cwd:
            return
    except OSError:
        pass
    with suppress(OSError):
        os.chdir(cwd)


def describe(obj: object) -> str:
    """First line of a plugin's docstring: the one-line description ``robench list`` shows."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _short(err: Any, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."
