"""The undefended baseline."""

from __future__ import annotations

from typing import Any

from robench.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult
from robench.training import TrainConfig
from robench.work import Work


@DEFENSES.register("none")
class NoDefense(Defense):
    """No defense: the trained baseline model itself."""

    cacheable = False

    @classmethod
    def cost(cls, params: Any, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        return Work()  # the baseline itself

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        return DefenseResult(model=ctx.model, metrics=ctx.metrics)
