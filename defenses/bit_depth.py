"""Bit-depth reduction, the "feature squeezing" of Xu, Evans, Qi, NDSS 2018 (arXiv 1704.01155).

Inputs are quantised to ``bits`` bits before the classifier. The rounding has a zero gradient
almost everywhere, so gradient attacks (FGSM, PGD) see no signal and the model *looks* robust:
a textbook case of obfuscated gradients (Athalye, Carlini, Wagner, ICML 2018). robench ships it
as a known-broken defense so that its checks (zero input gradients, black-box beating
white-box, accuracy surviving an eps-0.5 attack) can be seen to flag it.

It declares the straight-through surrogate of BPDA (Athalye et al. 2018, Section 4.1; the
``bpda`` attack): ``Quantize.surrogate()`` is the same classifier after
``x + (q(x) - x).detach()``, whose forward value is the quantised input and whose backward pass
is the identity. Athalye et al.'s reference (anishathalye/obfuscated-gradients,
``inputtransformations/robustml_attack.py`` with ``defense.py``'s ``defend_reduce``) quantises
outside the graph and applies the gradient at the quantised input to the unquantised one: the
same identity backward pass.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from robench.defenses.base import DEFENSES, Defense, DefenseContext, DefenseParams, DefenseResult
from robench.training import TrainConfig
from robench.work import Work


class Quantize(nn.Module):
    """Round inputs in [0, 1] to 2**bits levels, then classify."""

    def __init__(self, model: nn.Module, bits: int) -> None:
        super().__init__()
        self.model = model
        self.levels = 2**bits - 1

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.quantize(x))

    def surrogate(self) -> nn.Module:
        """The straight-through surrogate (BPDA): the same weights, identity backward pass."""
        return StraightThrough(self)


class StraightThrough(nn.Module):
    """``quantized``'s classifier on ``x + (q(x) - x).detach()``: the forward value is the
    quantised input, the gradient w.r.t. ``x`` passes through the rounding unchanged."""

    def __init__(self, quantized: Quantize) -> None:
        super().__init__()
        self.quantized = quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantized
        return q.model(x + (q.quantize(x) - x).detach())


class BitDepthParams(DefenseParams):
    bits: int = Field(1, ge=1, le=8)


@DEFENSES.register("bit_depth_reduction")
class BitDepthReduction(Defense):
    """Input bit-depth reduction (Xu et al. 2018): masks gradients; a known-broken defense."""

    Params = BitDepthParams
    cacheable = False  # wraps the baseline in a new architecture; costs nothing to rebuild
    has_surrogate = True  # Quantize.surrogate(): straight-through

    @classmethod
    def cost(cls, params: BitDepthParams, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        return Work()  # a wrapper: no pass over any data

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        return DefenseResult(model=Quantize(ctx.model, self.params.bits), metrics=ctx.metrics)
