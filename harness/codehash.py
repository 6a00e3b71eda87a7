"""Code-aware reuse: a hash of the source code that produced a model or a result cell.

``code_hash(obj, ...)`` hashes the source files of the modules that define the given objects
and, transitively, of every module of the same top-level packages (``robench`` and a
third-party plugin's own package) that those modules use: the modules named in their globals,
and the modules that define the classes, functions and objects in their globals. A package's
``__init__`` contributes only what it defines or re-exports, not the submodules it imports to
register plugins, so editing one attack file changes the hash of that attack's cells only.
Over-approximation is safe (a recomputation); under-approximation is not, so plugins that
look other plugins up by name at run time declare them (``Defense.code_dependencies``).
A module that cannot change a number (messages, progress bars, name lookup) says so with
``AFFECTS_RESULTS = False``: it is neither hashed nor followed, so rewording an error message
does not invalidate every cached model.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from types import ModuleType

_OWN = "robench"


def _module_of(value: object) -> ModuleType | None:
    if isinstance(value, ModuleType):
        return value
    target = value if inspect.isclass(value) or callable(value) else type(value)
    name = getattr(target, "__module__", None)
    return sys.modules.get(name) if isinstance(name, str) else None


def _top(module: ModuleType) -> str:
    return module.__name__.split(".")[0]


def _uses(module: ModuleType, tops: frozenset[str]) -> list[ModuleType]:
    is_package = hasattr(module, "__path__")
    used = []
    for value in vars(module).values():
        if is_package and isinstance(value, ModuleType):
            continue  # a package imports its submodules to register them, not to use them
        dep = _module_of(value)
        if (dep is not None and dep is not module and _top(dep) in tops
                and getattr(dep, "AFFECTS_RESULTS", True)):
            used.append(dep)
    return used


def modules_used(objects: Iterable[object]) -> list[ModuleType]:
    """The modules defining ``objects`` and every same-package module they use, by name."""
    roots = [m for m in map(_module_of, objects) if m is not None]
    tops = frozenset({_OWN, *map(_top, roots)})
    seen: dict[str, ModuleType] = {}
    stack = list(roots)
    while stack:
        module = stack.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        stack.extend(_uses(module, tops))
    return [seen[name] for name in sorted(seen)]


@cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_hash(*objects: object) -> str:
    """A short hash of the source of ``objects``' modules and the modules they use."""
    digest = hashlib.sha256()
    for module in modules_used(objects):
        path = getattr(module, "__file__", None)
        if path and Path(path).is_file():
            digest.update(f"{module.__name__}\0{_file_digest(path)}\0".encode())
    return digest.hexdigest()[:16]
