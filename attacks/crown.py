"""CROWN: Zhang, Weng, Chen, Hsieh, Daniel, "Efficient Neural Network Robustness Certification
with General Activation Functions", NeurIPS 2018 (arXiv 1811.00866), through auto_LiRPA (Xu et
al. 2020, github.com/Verified-Intelligence/auto_LiRPA). A verifier (``robench.attacks.verifier``):
L-infinity, inputs in [0, 1]; linear relaxation bounds, tighter than IBP and slower.

auto_LiRPA is optional and not a robench dependency: its PyPI release (0.3) needs torch < 1.13,
the maintained version is only on GitHub. Without it, a suite naming ``crown`` stops before any
work with one line saying how to install it. The margin ``z_j - z_y`` is bounded directly with
auto_LiRPA's specification matrix ``C`` (rows ``e_j - e_y``, j != y), as its own examples do.
Params: ``method`` (auto_LiRPA's bound method, default ``CROWN``; ``CROWN-IBP`` and ``IBP``
also accepted), ``batch_size`` (memory cap, default 200 images per bound computation).

Not exercised by robench's tests (auto_LiRPA is not installed where they run): only the
missing-library message is.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from robench.attacks.base import ATTACKS, AttackParams
from robench.attacks.verifier import Verifier
from robench.errors import UserError

INSTALL_HINT = ("crown needs auto_LiRPA, which is not installed (its PyPI release needs "
                "torch < 1.13): pip install git+https://github.com/Verified-Intelligence/"
                "auto_LiRPA, or use the built-in `ibp` verifier")


def _auto_lirpa() -> Any:
    try:
        import auto_LiRPA
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return auto_LiRPA


class CrownParams(AttackParams):
    method: Literal["CROWN", "CROWN-IBP", "IBP"] = "CROWN"
    batch_size: int = Field(200, ge=1)


@ATTACKS.register("crown")
class Crown(Verifier):
    """CROWN bounds through auto_LiRPA (optional): verified accuracy, a lower bound."""

    Params = CrownParams

    @classmethod
    def check_model(cls, model: nn.Module, model_name: str, params: Any) -> None:
        _auto_lirpa()

    def margin_bounds(self, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor
                      ) -> torch.Tensor:
        lirpa = _auto_lirpa()
        from auto_LiRPA.perturbations import PerturbationLpNorm

        centre = (lo + hi) / 2
        bounded = getattr(self, "_bounded", None)
        if bounded is None:  # auto_LiRPA traces the model once; the input shape is all it needs
            bounded = self._bounded = lirpa.BoundedModule(
                self.model, torch.zeros_like(centre[:1]), device=str(centre.device))
        classes = self.num_classes(centre)
        eye = torch.eye(classes, device=centre.device)
        spec = eye[None] - eye[y][:, None]                      # (batch, K, K): e_j - e_y
        others = eye[y] == 0                                    # drop the j = y row
        spec = spec[others].reshape(len(y), classes - 1, classes)
        x = lirpa.BoundedTensor(centre, PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi))
        _, upper = bounded.compute_bounds(x=(x,), C=spec, method=self.params.method)
        full = torch.zeros(len(y), classes, device=centre.device, dtype=upper.dtype)
        full[others] = upper.reshape(-1)
        return full


__all__ = ["Crown", "CrownParams", "INSTALL_HINT"]
