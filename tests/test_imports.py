"""robench's modules: every one imports (the fast lane, ``pytest -m 'not slow'``, skips the
end-to-end tests, so this is what still catches a module that no longer imports), and the module
graph has no import circle: every ``import`` and ``from ... import`` in the source of every
robench module (inside functions and ``TYPE_CHECKING`` blocks too), read from the files. A circle
would make a module's meaning depend on which of the two was imported first; the executors and
the recorder meet through protocols (``robench.executors.base``) for that reason."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

from .conftest import REPO

#: robench's subpackages live in their own folders (attacks/, defenses/; see pyproject's
#: package-dir), so walking robench's own folder does not reach them
ROOTS = ("robench", "robench.attacks", "robench.defenses")
#: the source folders pyproject installs under the robench namespace
SOURCE_FOLDERS = ("harness", "attacks", "defenses")


def all_modules() -> list[str]:
    names = set(ROOTS)
    for root in ROOTS:
        package = importlib.import_module(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, root + "."))
    return sorted(names)


MODULES = all_modules()


def modules() -> dict[str, Path]:
    """Every robench module name and its source file."""
    found = {}
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        found[name] = Path(spec.origin)
    return found


def test_every_package_is_walked():
    for name in ("robench.cli", "robench.attacks.fgsm", "robench.defenses.unlearning",
                 "robench.checks.run", "robench.report.html", "robench.outdir.folder",
                 "robench.executors.serial"):
        assert name in MODULES, name


def test_every_source_file_is_an_installed_module():
    """A .py file in a folder pyproject does not list as a package would not be installed."""
    installed = {path.resolve() for path in modules().values()}
    sources = {p.resolve() for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*.py")}
    assert sources <= installed, sorted(map(str, sources - installed))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The robench modules ``name`` (at ``path``) imports."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)  # a submodule, or a name of ``base``
    return {m for m in found if m in known and m != name}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_scan_sees_robench_modules_and_their_imports():
    known = modules()
    assert {"robench.runner", "robench.recorder", "robench.tasks",
            "robench.executors.serial", "robench.attacks.fgsm"} <= set(known)
    runner = imports("robench.runner", known["robench.runner"], known)
    assert {"robench.recorder", "robench.executors", "robench.tasks"} <= runner


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_robench_modules():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert circles(graph) == []


def test_no_module_imports_another_modules_private_names():
    known = modules()
    offenders = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robench"):
                offenders += [f"{name}: from {node.module} import {alias.name}"
                              for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offenders == []
