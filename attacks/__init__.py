"""Attack plugins (installed as ``robench.attacks``). Importing this package registers the
built-in attacks; third-party attacks register through the ``robench.attacks`` entry point."""

from robench.attacks import (  # noqa: F401  (registers the built-ins)
    autoattack,
    bim,
    bpda,
    crown,
    fgsm,
    ibp,
    pgd,
    rfgsm,
    smoothing,
    square,
    transfer,
)
from robench.attacks.base import ATTACKS, Attack, AttackParams

__all__ = ["ATTACKS", "Attack", "AttackParams", "create_attack"]


def create_attack(name: str, model, params: dict | None = None, seed: int = 0) -> Attack:
    """Build a registered attack by name; ``params`` are validated by its schema."""
    cls = ATTACKS.get(name)
    return cls(model, cls.Params(**(params or {})), seed=seed)
