"""Time estimates: the work of every stage of a plan, and a calibration that prices it.

The cost model counts image passes (``robench.work.Work``): baseline training is ``epochs x
training images`` forward+backward passes; a defense costs what it declares
(``Defense.cost``); an attack cell costs ``images x work_per_image`` (the attack's
``budget`` of input gradients or queries; once for a sweep when the attack
``shares_work_across_eps``) plus a forward pass per image and eps to score its examples.
``calibrate`` times one training step, one input gradient and one forward pass of the
suite's model on a batch of the suite's data on this machine, so ``Calibration.seconds``
turns work into seconds.

For attacks the model is an upper bound: attacks that stop spending steps on images they
already fooled and AutoAttack's components that run only on the images the earlier ones left
robust take less. For defenses it is an estimate that can fall short: a plugin's ``cost``
counts its main passes, not every per-batch extra (SCRUB's teacher forward passes make it
take about twice its estimate; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from robench.data import Split
from robench.evaluation import EVAL_BATCH_SIZE
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.training import TrainConfig
from robench.work import NO_WORK, Work

#: estimates only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False

#: each calibration measurement repeats until it has run this long (or ``MAX_REPEATS`` times)
CALIBRATION_SECONDS = 0.5
MAX_REPEATS = 50


# -- the work of each stage ------------------------------------------------------------------
def baseline_work(spec: BaselineSpec, n_train: int) -> Work:
    """Training the baseline: nothing when ``model.weights`` gives a checkpoint."""
    if spec.weights is not None:
        return NO_WORK
    return Work(train=spec.train.epochs * n_train)


def defense_work(spec: DefenseSpec, train_config: TrainConfig, n_train: int,
                 n_validation: int) -> Work:
    """Applying a defense: what the plugin declares (``Defense.cost``)."""
    return spec.plugin.cost(spec.params, train_config, n_train, n_validation)


def images_attacked(spec: AttackSpec, n_eval: int) -> int:
    """How many evaluation images an attack entry attacks (its ``limit``, else all)."""
    return min(spec.limit, n_eval) if spec.limit is not None else n_eval


def attack_work(spec: AttackSpec, n_images: int, eps: Sequence[float]) -> Work:
    """Attacking ``n_images`` at these eps: one clean forward, then per eps the attack (none at
    eps 0, except for a verifier, which bounds every eps) and a forward of its examples. An
    attack that shares work across eps pays its passes once for the sweep."""
    if not eps:
        return NO_WORK
    verifier = spec.plugin.family == "verifier"
    per_eps = [spec.plugin.work_per_image(spec.params, e) for e in eps if verifier or e > 0]
    if spec.plugin.shares_work_across_eps and per_eps:
        per_eps = [max(per_eps, key=lambda w: w.units)]
    attacked = sum(per_eps, NO_WORK)
    return attacked.scaled(n_images) + Work(forward=(len(eps) + 1) * n_images)


def suite_work(plan: Plan, n_train: int, n_validation: int, n_eval: int) -> Work:
    """Everything a run of ``plan`` would do from scratch, over all its seeds (the same work
    for every seed: seeds change random draws, not sizes)."""
    train_config = plan.suite.train
    attacks = sum((attack_work(a, images_attacked(a, n_eval), a.eps) for a in plan.attacks),
                  NO_WORK)
    per_seed = baseline_work(plan.baseline, n_train) + sum(
        (defense_work(d, train_config, n_train, n_validation) + attacks
         for d in plan.defenses), NO_WORK)
    return per_seed.scaled(len(plan.seeds))


# -- calibration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Seconds per image pass of each kind, measured on this machine."""

    per_pass: Work          # seconds per image: training step, input gradient, forward
    device: str
    threads: int
    train_batch: int
    eval_batch: int

    def seconds(self, work: Work) -> float:
        p = self.per_pass
        return work.train * p.train + work.grad * p.grad + work.forward * p.forward


def calibrate(plan: Plan, train: Split, evaluation: Split, num_classes: int,
              device: torch.device) -> Calibration:
    """Time the suite's model on a batch of the suite's data (a few seconds). The model is a
    fresh one (the calibration never touches the cache or the caller's random stream)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = plan.baseline.build(num_classes).to(device)
        train_batch = min(plan.suite.train.batch_size, len(train))
        x_train, y_train = (t[:train_batch].to(device) for t in (train.images, train.labels))
        eval_batch = min(EVAL_BATCH_SIZE, len(evaluation))
        x_eval, y_eval = (t[:eval_batch].to(device) for t in
                          (evaluation.images, evaluation.labels))
        per_pass = Work(
            train=_per_image(lambda: _train_step(model, x_train, y_train), train_batch, device),
            grad=_per_image(lambda: _input_gradient(model, x_eval, y_eval), eval_batch, device),
            forward=_per_image(lambda: _forward(model, x_eval), eval_batch, device))
    return Calibration(per_pass, str(device), torch.get_num_threads(), train_batch, eval_batch)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.eval()
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.inference_mode():
        model(x)


def _per_image(step: Callable[[], None], batch: int, device: torch.device) -> float:
    """Seconds per image of ``step`` on a batch: one warm-up call, then repeated calls until
    ``CALIBRATION_SECONDS`` have passed; the median call counts (the machine as loaded now)."""
    if batch == 0:
        return 0.0
    step()
    times: list[float] = []
    while sum(times) < CALIBRATION_SECONDS and len(times) < MAX_REPEATS:
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: a duration at the precision an estimate has."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return "< 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


__all__ = ["Calibration", "attack_work", "baseline_work", "calibrate",
           "defense_work", "duration_text", "images_attacked", "suite_work"]
