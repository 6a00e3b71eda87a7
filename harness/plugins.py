"""Every plugin registry, with the built-ins imported (so they are registered)."""

from __future__ import annotations

from robench.registry import Registry


def all_registries() -> list[tuple[str, Registry]]:
    from robench.attacks import ATTACKS
    from robench.data import DATASETS
    from robench.defenses import DEFENSES
    from robench.defenses.unlearning import UNLEARNING_METHODS
    from robench.models import MODELS

    return [("datasets", DATASETS), ("models", MODELS), ("defenses", DEFENSES),
            ("attacks", ATTACKS), ("unlearning methods", UNLEARNING_METHODS)]
