"""The one batching/evaluation loop: clean accuracy and robust accuracy of a model under an
attack at every eps of a sweep. Every attack plugin goes through here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robench.attacks.base import Attack
from robench.data import Split
from robench.progress import Reporter
from robench.training import predict

EVAL_BATCH_SIZE = 1000


@dataclass
class AttackOutcome:
    """One (attack, eps) cell over ``n`` images, image by image.

    ``clean_ok[i]``: image i is classified correctly as given; ``adv_ok[i]``: correctly after
    the attack. An image is *robust* only if both hold (correct before and after, as RobustBench
    and AutoAttack count it): an image the model gets wrong is never robust, even if the attack
    happens to flip it to the right class.
    """

    eps: float
    clean_ok: torch.Tensor   # bool (n,), on the CPU
    adv_ok: torch.Tensor     # bool (n,), on the CPU
    seconds: float

    @property
    def n(self) -> int:
        return int(self.clean_ok.numel())

    @property
    def robust(self) -> torch.Tensor:
        return self.clean_ok & self.adv_ok

    @property
    def clean_acc(self) -> float:
        return int(self.clean_ok.sum()) / self.n

    @property
    def robust_acc(self) -> float:
        return int(self.robust.sum()) / self.n

    @property
    def attack_success_rate(self) -> float:
        """Share of the images correct before the attack that it makes wrong."""
        clean = int(self.clean_ok.sum())
        return int((self.clean_ok & ~self.adv_ok).sum()) / clean if clean else float("nan")


def evaluate_attack(model: nn.Module, attack: Attack, eps_list: Sequence[float], data: Split,
                    batch_size: int = EVAL_BATCH_SIZE, reporter: Reporter | None = None,
                    desc: str = "attack") -> list[AttackOutcome]:
    """Attack ``data`` at every eps; returns one outcome per eps, in order.

    Every eps goes through the attack and a fresh forward pass, eps 0 included, so a model
    whose predictions change between passes (randomness) shows up as eps 0 != clean. A plugin
    of the ``verifier`` family (``robench.attacks.verifier``) is asked for certificates
    instead: ``adv_ok`` is then "certified" (which implies correct).

    Timing: each eps is charged the time to craft and classify its examples. When the attack
    shares work across the sweep (FGSM's single gradient), the sweep's total time is split
    evenly across its eps so the per-row seconds add up to the real total.
    """
    reporter = reporter or Reporter(quiet=True)
    eps_list = [float(e) for e in eps_list]
    n = len(data)
    clean_parts: list[torch.Tensor] = []
    adv_parts: list[list[torch.Tensor]] = [[] for _ in eps_list]
    seconds = [0.0] * len(eps_list)
    steps = (n + batch_size - 1) // batch_size
    with reporter.progress(total=steps, desc=desc) as bar:
        for start in range(0, n, batch_size):
            x = data.images[start:start + batch_size]
            y = data.labels[start:start + batch_size]
            clean_parts.append((predict(model, x) == y).cpu())
            if attack.family == "verifier":
                # a verifier proves instead of attacking: adv_ok is its certificate
                for i, eps in enumerate(eps_list):
                    t0 = time.perf_counter()
                    adv_parts[i].append(attack.certify(x, y, eps).cpu())
                    seconds[i] += time.perf_counter() - t0
                bar.update(1)
                continue
            attack.set_images(data.ids[start:start + batch_size].tolist())
            sweep = attack.sweep(x, y, eps_list)
            for i in range(len(eps_list)):
                t0 = time.perf_counter()
                _, x_adv = next(sweep)
                adv_parts[i].append((predict(model, x_adv) == y).cpu())
                seconds[i] += time.perf_counter() - t0
            bar.update(1)
    if attack.shares_work_across_eps:
        seconds = [sum(seconds) / len(seconds)] * len(seconds)
    clean_ok = torch.cat(clean_parts) if clean_parts else torch.zeros(0, dtype=torch.bool)
    return [AttackOutcome(eps, clean_ok, torch.cat(adv_parts[i]) if adv_parts[i]
                          else torch.zeros(0, dtype=torch.bool), seconds[i])
            for i, eps in enumerate(eps_list)]


__all__ = ["AttackOutcome", "evaluate_attack"]
