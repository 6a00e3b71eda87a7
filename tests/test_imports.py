"""Every robench module imports: the fast lane (``pytest -m 'not slow'``) skips the end-to-end
tests, so this is what still catches a module that no longer imports."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

#: robench's subpackages live in their own folders (attacks/, defenses/; see pyproject's
#: package-dir), so walking robench's own folder does not reach them
ROOTS = ("robench", "robench.attacks", "robench.defenses")


def all_modules() -> list[str]:
    names = set(ROOTS)
    for root in ROOTS:
        package = importlib.import_module(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, root + "."))
    return sorted(names)


MODULES = all_modules()


def test_every_package_is_walked():
    for name in ("robench.cli", "robench.attacks.fgsm", "robench.defenses.unlearning"):
        assert name in MODULES, name


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)

