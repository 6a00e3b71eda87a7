"""The one batching/evaluation loop: clean accuracy and robust accuracy of a model under an
attack at every eps of a sweep. Every attack plugin goes through here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from robench.attacks.base import Attack
from robench.data import Split
from robench.progress import Reporter
from robench.training import predict

EVAL_BATCH_SIZE = 1000


@dataclass
class AttackOutcome:
    """Counts for one (attack, eps) cell over ``n`` images."""

    eps: float
    n: int
    clean_correct: int
    robust_correct: int
    fooled: int  # images correct before the attack and wrong after it
    seconds: float

    @property
    def clean_acc(self) -> float:
        return self.clean_correct / self.n

    @property
    def robust_acc(self) -> float:
        return self.robust_correct / self.n

    @property
    def attack_success_rate(self) -> float:
        # over the images the model classified correctly before the attack
        return self.fooled / self.clean_correct if self.clean_correct else float("nan")


def evaluate_attack(model: nn.Module, attack: Attack, eps_list: Sequence[float], data: Split,
                    batch_size: int = EVAL_BATCH_SIZE, reporter: Reporter | None = None,
                    desc: str = "attack") -> list[AttackOutcome]:
    """Attack ``data`` at every eps; returns one outcome per eps, in order.

    Timing: each eps is charged the time to craft and classify its examples. When the attack
    shares work across the sweep (FGSM's single gradient), the sweep's total time is split
    evenly across its eps so the per-row seconds add up to the real total.
    """
    reporter = reporter or Reporter(quiet=True)
    eps_list = [float(e) for e in eps_list]
    n = len(data)
    clean_correct = 0
    robust = [0] * len(eps_list)
    fooled = [0] * len(eps_list)
    seconds = [0.0] * len(eps_list)
    steps = (n + batch_size - 1) // batch_size
    with reporter.progress(total=steps, desc=desc) as bar:
        for start in range(0, n, batch_size):
            x = data.images[start:start + batch_size]
            y = data.labels[start:start + batch_size]
            clean_ok = predict(model, x) == y
            clean_correct += int(clean_ok.sum())
            sweep = attack.sweep(x, y, eps_list)
            for i in range(len(eps_list)):
                t0 = time.perf_counter()
                eps, x_adv = next(sweep)
                # eps 0 leaves x unchanged (the base class guarantees it): reuse the clean pass
                adv_ok = clean_ok if eps == 0 else predict(model, x_adv) == y
                seconds[i] += time.perf_counter() - t0
                robust[i] += int(adv_ok.sum())
                fooled[i] += int((clean_ok & ~adv_ok).sum())
            bar.update(1)
    if attack.shares_work_across_eps:
        seconds = [sum(seconds) / len(seconds)] * len(seconds)
    return [AttackOutcome(eps, n, clean_correct, robust[i], fooled[i], seconds[i])
            for i, eps in enumerate(eps_list)]


__all__ = ["AttackOutcome", "evaluate_attack"]
