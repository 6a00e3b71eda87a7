"""Square Attack: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020 (arXiv 1912.00049). L-infinity,
score-based black-box: it never reads gradients, so it is the reference for spotting gradient
masking (a black-box attack beating white-box ones is a red flag). torchattacks' implementation
(torchattacks/attacks/square.py), with ``norm: linf`` (default) or ``l2`` (its ``norm='L2'``
square/stripe updates).
"""

from __future__ import annotations

import torch
from pydantic import Field

from robench.attacks.base import ATTACKS, TORCHATTACKS_NORM, Attack, AttackParams, Norm, own_rng


class SquareParams(AttackParams):
    n_queries: int = Field(5000, ge=1)
    p_init: float = Field(0.8, gt=0, le=1)
    restarts: int = Field(1, ge=1)
    norm: Norm = "linf"


@ATTACKS.register("square")
class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020): black-box random search, L-inf or L2."""

    Params = SquareParams
    family = "black_box"
    label_params = ("norm",)

    @classmethod
    def budget(cls, params: SquareParams) -> int:
        return params.n_queries * params.restarts

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        p = self.params
        attack = torchattacks.Square(self.model, norm=TORCHATTACKS_NORM[p.norm], eps=eps,
                                     n_queries=p.n_queries,
                                     n_restarts=p.restarts, p_init=p.p_init, seed=self.seed)
        with own_rng(x.device):  # torchattacks' Square reseeds the global generator
            return attack(x, y)
