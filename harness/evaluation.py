"""The one batching/evaluation loop: clean accuracy and robust accuracy of a model under an
attack at every eps of a sweep. Every attack plugin goes through here.

A randomized model (one that sets ``eval_samples`` k > 1, as the ``gaussian_noise`` defense's
does) is scored by a majority vote: its prediction on each image, clean and adversarial, is
the class most of k passes give (ties to the lower class), as a smoothed classifier's own
prediction is a vote; so an image counts robust when the majority of k passes classify both
the clean and the adversarial image correctly. Requiring every pass to be correct would score
the tail of the noise, not the classifier. A model without ``eval_samples`` (every
deterministic one) is predicted once, as before."""

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


def voted_predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels; for a model with ``eval_samples`` k > 1, the majority of k passes
    (ties to the lower class)."""
    samples = int(getattr(model, "eval_samples", 1))
    if samples == 1:
        return predict(model, x)
    votes = torch.stack([predict(model, x) for _ in range(samples)], dim=1)
    classes = int(votes.max()) + 1 if votes.numel() else 1
    counts = torch.zeros(votes.shape[0], classes, dtype=torch.long, device=votes.device)
    counts.scatter_add_(1, votes, torch.ones_like(votes))
    return counts.argmax(1)


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
            clean_parts.append((voted_predict(model, x) == y).cpu())
            # named images: per-image random draws (starts, smoothing's noise) repeat anywhere
            attack.set_images(data.ids[start:start + batch_size].tolist())
            if attack.family == "verifier":
                # a verifier proves instead of attacking: adv_ok is its certificate
                for i, eps in enumerate(eps_list):
                    t0 = time.perf_counter()
                    adv_parts[i].append(attack.certify(x, y, eps).cpu())
                    seconds[i] += time.perf_counter() - t0
                bar.update(1)
                continue
            sweep = attack.sweep(x, y, eps_list)
            for i in range(len(eps_list)):
                t0 = time.perf_counter()
                _, x_adv = next(sweep)
                adv_parts[i].append((voted_predict(model, x_adv) == y).cpu())
                seconds[i] += time.perf_counter() - t0
            bar.update(1)
    if attack.shares_work_across_eps:
        seconds = [sum(seconds) / len(seconds)] * len(seconds)
    clean_ok = torch.cat(clean_parts) if clean_parts else torch.zeros(0, dtype=torch.bool)
    return [AttackOutcome(eps, clean_ok, torch.cat(adv_parts[i]) if adv_parts[i]
                          else torch.zeros(0, dtype=torch.bool), seconds[i])
            for i, eps in enumerate(eps_list)]


__all__ = ["AttackOutcome", "evaluate_attack", "voted_predict"]
