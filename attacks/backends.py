"""Run fgsm/pgd through a reference library instead of robench's own maths.

Used by ``backend: torchattacks | art`` so one suite can cross-check implementations on the
same model and inputs. ART is always given the true labels: without ``y`` it attacks the
model's predicted labels and reports a higher accuracy.

``params.norm`` (``linf`` or ``l2``) picks the library's attack: torchattacks ``PGD`` /
``PGDL2`` (it has no L2 FGSM; the fgsm params refuse that pairing), ART ``norm=np.inf`` / ``2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from robench.attacks.base import own_rng
from robench.models import output_classes


def run_backend(attack: str, backend: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                eps: float, params: Any, seed: int) -> torch.Tensor:
    if backend == "torchattacks":
        return _torchattacks(attack, model, x, y, eps, params, seed)
    if backend == "art":
        return _art(attack, model, x, y, eps, params, seed)
    raise ValueError(f"unknown backend {backend!r}")


def _torchattacks(attack: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  params: Any, seed: int) -> torch.Tensor:
    import torchattacks

    norm = getattr(params, "norm", "linf")
    if attack == "fgsm":
        if norm != "linf":
            raise ValueError("torchattacks has no L2 FGSM")
        atk = torchattacks.FGSM(model, eps=eps)
    elif norm == "l2":
        atk = torchattacks.PGDL2(model, eps=eps, alpha=params.alpha, steps=params.steps,
                                 random_start=params.random_start)
    else:
        atk = torchattacks.PGD(model, eps=eps, alpha=params.alpha, steps=params.steps,
                               random_start=params.random_start)
    atk.set_device(x.device)
    # torchattacks draws its random start from the global generator: seed it for repeatability
    with own_rng(x.device):
        torch.manual_seed(seed)
        return atk(x, y)


def _art(attack: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         params: Any, seed: int) -> torch.Tensor:
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=output_classes(model, x), clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    batch = int(x.shape[0])
    norm = 2 if getattr(params, "norm", "linf") == "l2" else np.inf
    if attack == "fgsm":
        atk = FastGradientMethod(classifier, norm=norm, eps=eps, batch_size=batch)
    else:
        atk = ProjectedGradientDescent(
            classifier, norm=norm, eps=eps, eps_step=params.alpha, max_iter=params.steps,
            num_random_init=1 if params.random_start else 0, batch_size=batch, verbose=False,
        )
    np.random.seed(seed % 2**32)  # ART draws its random start from numpy's global generator
    x_np = x.detach().cpu().numpy()
    x_adv = atk.generate(x=x_np, y=y.detach().cpu().numpy())  # true labels, always
    return torch.from_numpy(x_adv).to(device=x.device, dtype=x.dtype)
