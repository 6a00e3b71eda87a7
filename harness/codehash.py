"""Code-aware reuse: a hash of the source code that produced a model or a result cell.

``code_hash(obj, ...)`` hashes the source files of the modules that define the given objects
and, transitively, of every module of the same top-level packages (``robench`` and a
third-party plugin's own package) that those modules import: every ``import`` and
``from ... import`` statement in their source (inside functions too; relative imports
resolved), plus the modules defining the classes and functions in their globals. A package's
``__init__`` contributes what it defines and re-exports, not the submodules it imports only to
register plugins, so editing one attack file changes the hash of that attack's cells only.

Over-approximation is safe (a recomputation); under-approximation is not, so plugins that look
other plugins up by name at run time declare them (``Defense.code_dependencies``). A module
that cannot change a number (messages, progress bars, name lookup) says so with
``AFFECTS_RESULTS = False``: it is neither hashed nor followed, so rewording an error message
does not invalidate every cached model (such a module must stay free of anything that changes
a result).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
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
    name = getattr(value if inspect.isclass(value) or callable(value) else type(value),
                   "__module__", None)
    return sys.modules.get(name) if isinstance(name, str) else None


def _top(name: str) -> str:
    return name.split(".")[0]


def _load(name: str) -> ModuleType | None:
    try:
        return sys.modules.get(name) or importlib.import_module(name)
    except Exception:  # noqa: BLE001 - an optional import that fails is not code we run
        return None


def _imported_names(module: ModuleType) -> list[str]:
    """Module names imported anywhere in the module's source (absolute, resolved). A package
    importing its own submodules as modules (``from pkg import sub``: plugin registration) is
    left out; names imported from them (``from pkg.sub import thing``) are kept."""
    source = _source(module)
    try:
        tree = ast.parse(source) if source is not None else None
    except (SyntaxError, ValueError):
        tree = None
    if tree is None:
        return []
    is_package = hasattr(module, "__path__")
    package = module.__name__ if is_package else module.__name__.rpartition(".")[0]
    own = module.__name__ + "."
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from pkg import mod`` imports a module; ``from mod import name`` its module
                if _load(sub) is not None and sub in sys.modules:
                    if not (is_package and sub.startswith(own)):
                        names.append(sub)
                else:
                    names.append(base)
    return names


def _uses(module: ModuleType, tops: frozenset[str]) -> list[ModuleType]:
    found = [_load(name) for name in _imported_names(module) if _top(name) in tops]
    found += [_module_of(v) for v in vars(module).values() if not isinstance(v, ModuleType)]
    return [dep for dep in found
            if dep is not None and dep is not module and _top(dep.__name__) in tops
            and getattr(dep, "AFFECTS_RESULTS", True)]


def modules_used(objects: Iterable[object]) -> list[ModuleType]:
    """The modules defining ``objects`` and every same-package module they use."""
    roots = []
    for obj in objects:
        module = _module_of(obj)
        if module is None or module.__name__ == "builtins":
            raise TypeError(f"code_hash needs modules, classes or functions (got {obj!r})")
        roots.append(module)
    tops = frozenset({_OWN, *(_top(m.__name__) for m in roots)})
    seen: dict[str, ModuleType] = {}
    stack = list(roots)
    while stack:
        module = stack.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        stack.extend(_uses(module, tops))
    return [seen[name] for name in sorted(seen)]


def _source(module: ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not Path(path).is_file():
        return None
    return _read(path, *_stamp(path))[1]


def _stamp(path: str) -> tuple[int, int]:
    st = Path(path).stat()
    return st.st_mtime_ns, st.st_size


@cache
def _read(path: str, mtime_ns: int, size: int) -> tuple[str, str]:
    """(sha256, text) of a source file; keyed by its mtime and size, so an edit is seen."""
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), data.decode("utf-8", errors="replace")


def code_hash(*objects: object) -> str:
    """A short hash of the source of ``objects``' modules and the modules they use.

    A module without a source file (a class typed into a REPL or notebook) is hashed by the
    source of the given object itself when ``inspect`` can find it, else by its name only.
    """
    digest = hashlib.sha256()
    for module in modules_used(objects):
        path = getattr(module, "__file__", None)
        if path and Path(path).is_file():
            digest.update(f"{module.__name__}\0{_read(path, *_stamp(path))[0]}\0".encode())
        else:
            digest.update(f"{module.__name__}\0<no file>\0".encode())
    for obj in objects:
        if not getattr(_module_of(obj), "__file__", None):
            try:
                digest.update(inspect.getsource(obj).encode())  # type: ignore[arg-type]
            except (OSError, TypeError):
                pass
    return digest.hexdigest()[:16]
