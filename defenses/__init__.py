"""Defense plugins (installed as ``robench.defenses``). Importing this package registers the
built-in defenses; third-party defenses register through the ``robench.defenses`` entry point."""

from robench.defenses import (  # noqa: F401  (registers the built-ins)
    adversarial_training,
    bit_depth,
    certified_training,
    gaussian_noise,
    none,
    unlearning,
)
from robench.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
)

__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseParams", "DefenseResult"]
