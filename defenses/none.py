"""The undefended baseline."""

from __future__ import annotations

from robench.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult


@DEFENSES.register("none")
class NoDefense(Defense):
    """No defense: the trained baseline model itself."""

    cacheable = False

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        return DefenseResult(model=ctx.model, metrics=ctx.metrics)
