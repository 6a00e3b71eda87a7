"""Unlearning: the seed paper's FGSM defense (``unlearning``) and the unlearning methods it can
use, each a plugin of ``UNLEARNING_METHODS``. Importing this package registers the built-ins."""

from robench.defenses.unlearning import (  # noqa: F401  (registers the built-ins)
    finetune,
    l1_sparse,
    neggrad,
    neggrad_plus,
    random_label,
    salun,
    scrub,
    ssd,
)
from robench.defenses.unlearning.defense import UnlearningDefense, UnlearningDefenseParams
from robench.defenses.unlearning.method import (
    UNLEARNING_METHODS,
    LoopParams,
    Pass,
    UnlearningData,
    UnlearningMethod,
    UnlearningParams,
)

__all__ = ["UNLEARNING_METHODS", "LoopParams", "Pass", "UnlearningData", "UnlearningDefense",
           "UnlearningDefenseParams", "UnlearningMethod", "UnlearningParams"]
