"""Time estimates: the work of every stage of a plan, and a calibration that prices it.

The cost model counts image passes (``robench.work.Work``): baseline training is ``epochs x
training images`` forward+backward passes; a defense costs what it declares
(``Defense.cost``); an attack cell costs ``images x work_per_image`` (the attack's
``budget`` of input gradients or queries; once for a sweep when the attack
``shares_work_across_eps``) plus a forward pass per image and eps to score its examples. On a
randomized defense every pass is a vote: ``gaussian_noise`` classifies ``votes`` noisy copies per
pass and is scored over ``eval_samples`` passes (``pass_multipliers``, read from the params of
a defense that declares ``randomized``), so its cells cost that many classifier passes; EOT's
``eot_samples`` is in the attack's ``work_per_image``, and the ``smoothing`` verifier counts its
n0 + n base-classifier passes itself (``COUNTS_BASE_PASSES``). These rules live here, not on
the plugins' classes, so pricing a cell never changes a result's code hash.
``calibrate`` times one training step, one input gradient and one forward pass of the
suite's model on a batch of the suite's data on this machine, so ``Calibration.seconds``
turns work into seconds.

``Attack.work_per_image`` is an upper bound: attacks that stop spending steps on images they
already fooled (PGD's and BIM's active set, Square's queries) and AutoAttack's components that
run only on the images the earlier ones left robust take less, how much less depending on how
robust the defended model is. ``attack_work_range`` scales the upper bound by ``SAVINGS``: per
built-in attack, the share of its upper bound its cells took in the committed
``results/fgsm_lenet`` run (lowest, mean and highest over its 17 defenses, each priced against
the same defense's single-step attacks, which save nothing; benchmarks/eta.py --fit). A
third-party attack saves nothing: its range is its upper bound.

For defenses it is an estimate that can fall short: a plugin's ``cost``
counts its main passes, not every per-batch extra (SCRUB's teacher forward passes make it
take about twice its estimate; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from robench.data import Split
from robench.engine import prepare_model
from robench.evaluation import EVAL_BATCH_SIZE
from robench.plan import AttackSpec, BaselineSpec, DefenseSpec, Plan
from robench.training import TrainConfig
from robench.work import NO_WORK, Work

#: estimates only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False

#: share of the upper bound an attack's cells take: (lowest, typical, highest), by registry
#: name; PGD and BIM only with their active set (``early_stop``). Fitted on the committed
#: results/fgsm_lenet (benchmarks/eta.py --fit): lowest, mean and highest over its 17
#: defenses, a mix of broken (lowest) and robust (highest) ones. The highest share exceeds 1
#: where a robust model's cells took longer than their upper bound priced by single-step
#: cells: per-step work the unit count misses (APGD's checks, restarts' bookkeeping). The
#: highest is never below 1: a fully robust model takes the whole upper bound (BIM at one
#: eps; its sweep over several shares their first steps, ``robench.attacks.bim``, so its
#: fitted highest, 0.62, is below 1). BIM's shares are from its cells after that change, all
#: three seeds; the others from seed 0 before it.
SAVINGS: dict[str, tuple[float, float, float]] = {
    "pgd": (0.23, 0.60, 1.0),
    "bim": (0.27, 0.41, 1.0),
    "autoattack": (0.016, 0.25, 1.25),
    "square": (0.034, 0.26, 1.0),
    "transfer": (0.002, 0.10, 1.56),
}
NO_SAVING = (1.0, 1.0, 1.0)

#: what a pass costs inside a run over what the calibration's bare call costs (projection,
#: clamping, active-set indexing, scoring and bookkeeping around each gradient; the fastest
#: of repeated calls): whole cold suites took 1.79-2.08x the bare-call estimate (fgsm_lenet,
#: smoothing_mnist, backends, unlearning_methods; their mean, leave-one-out error <= 11 %;
#: benchmarks/RESULTS.md, "ETA against actual"; partly in-sample: SAVINGS was fitted on
#: fgsm_lenet). Applied on an idle CPU only (not measured on CUDA; a busy machine's rule
#: below was fitted without it).
LOOP_OVERHEAD = 1.96
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


def pass_multipliers(defense: DefenseSpec | None) -> tuple[int, int]:
    """(classifier passes per pass of the defended model, passes the evaluation votes over)
    of a defense, from its resolved params: a defense that declares ``randomized`` and has a
    ``votes`` param classifies that many noisy copies per pass (``gaussian_noise``), and one
    with an ``eval_samples`` param is scored by a vote over that many passes; (1, 1) for a
    deterministic defense or none. A third-party randomized defense that names these params
    otherwise is priced as one pass (an underestimate the plan cannot see)."""
    if defense is None or not defense.randomized:
        return 1, 1
    return (_count(getattr(defense.params, "votes", 1)),
            _count(getattr(defense.params, "eval_samples", 1)))


def _count(value: object) -> int:
    """A pass count from a plugin's param: a positive integer, else 1 (None, 0, "auto")."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


#: verifiers (by registry name) whose ``work_per_image`` counts passes of a defended model's
#: base classifier, which they sample themselves (``smoothing``: n0 + n noisy passes), so a
#: randomized defense's ``votes`` does not multiply them
COUNTS_BASE_PASSES: frozenset[str] = frozenset({"smoothing"})


def counts_base_passes(spec: AttackSpec) -> bool:
    """Whether this attack entry's work already counts base-classifier passes."""
    return spec.name in COUNTS_BASE_PASSES


def scoring_work(spec: AttackSpec, n_images: int, eps: Sequence[float],
                 defense: DefenseSpec | None = None) -> Work:
    """The forward passes that score a cell: the clean images and, per eps, the examples (a
    verifier certifies instead of crafting examples: the clean images only), each a vote of
    ``eval_samples`` passes of ``votes`` classifier passes on a randomized defense
    (``pass_multipliers``)."""
    if not eps:
        return NO_WORK
    copies, votes = pass_multipliers(defense)
    passes = 1 if spec.plugin.family == "verifier" else len(eps) + 1
    return Work(forward=passes * n_images * copies * votes)


def attack_work(spec: AttackSpec, n_images: int, eps: Sequence[float],
                defense: DefenseSpec | None = None) -> Work:
    """Attacking ``n_images`` at these eps on ``defense``'s model: the attack at each eps (none
    at eps 0, except for a verifier, which bounds every eps), plus the scoring passes
    (``scoring_work``). An attack that shares work across eps pays its passes once for the
    sweep. Each of the attack's passes costs the defense's ``votes`` classifier passes
    (``pass_multipliers``; EOT's ``eot_samples`` is in ``work_per_image``), except an attack
    that counts the base classifier's passes itself (``COUNTS_BASE_PASSES``: smoothing's n0 + n)."""
    if not eps:
        return NO_WORK
    verifier = spec.plugin.family == "verifier"
    per_eps = [spec.plugin.work_per_image(spec.params, e) for e in eps if verifier or e > 0]
    if spec.plugin.shares_work_across_eps and per_eps:
        per_eps = [max(per_eps, key=lambda w: w.units)]
    # transfer crafts on its source model, not on ``defense``'s: priced as one pass each
    # (a randomized source's votes are not counted)
    copies = (1 if counts_base_passes(spec) or spec.name == "transfer"
              else pass_multipliers(defense)[0])
    attacked = sum(per_eps, NO_WORK)
    return attacked.scaled(n_images * copies) + scoring_work(spec, n_images, eps, defense)


def passes_text(spec: AttackSpec, eps: Sequence[float],
                defense: DefenseSpec | None = None) -> str:
    """The classifier passes one image costs in a cell sweep (upper bound), e.g. ``10 260
    forward passes per image``: what ``robench plan`` states for a randomized defense or a
    sampling verifier, where the count is far above an attack's usual budget."""
    work = attack_work(spec, 1, eps, defense)
    parts = [f"{work.grad:,.0f} gradient".replace(",", " ")] if work.grad else []
    parts.append(f"{work.forward:,.0f} forward".replace(",", " "))
    return " + ".join(parts) + " passes per image"


def states_passes(spec: AttackSpec, defense: DefenseSpec | None) -> bool:
    """Whether ``robench plan`` states the passes per image of this cell: on a defense whose
    passes are votes over copies, or for an attack that samples the classifier itself."""
    return counts_base_passes(spec) or pass_multipliers(defense) != (1, 1)


def savings(spec: AttackSpec, defense: DefenseSpec | None = None) -> tuple[float, float, float]:
    """(lowest, typical, highest) share of its upper bound an attack entry's cells take. PGD
    and BIM save only with their active set, which a randomized defense's model turns off
    (``robench.attacks.active``: two passes differ, so every image gets the plain loop)."""
    randomized = defense is not None and defense.randomized
    if spec.name in ("pgd", "bim") and (
            randomized or not getattr(spec.params, "early_stop", False)):
        return NO_SAVING
    return SAVINGS.get(spec.name, NO_SAVING) if spec.plugin.__module__.startswith(
        "robench.attacks.") else NO_SAVING


@dataclass(frozen=True)
class WorkRange:
    """The work of a stage: lowest, typical and highest (equal where nothing is saved)."""

    low: Work
    typical: Work
    high: Work

    def __add__(self, other: object) -> WorkRange:
        if not isinstance(other, WorkRange):
            return NotImplemented
        return WorkRange(self.low + other.low, self.typical + other.typical,
                         self.high + other.high)

    def __radd__(self, other: object) -> WorkRange:
        return self if other == 0 else self.__add__(other)

    @classmethod
    def exact(cls, work: Work) -> WorkRange:
        return cls(work, work, work)


def attack_work_range(spec: AttackSpec, n_images: int, eps: Sequence[float],
                      defense: DefenseSpec | None = None) -> WorkRange:
    """``attack_work`` with the attack's measured savings (``SAVINGS``) applied to its attack
    passes; the forward passes that score the examples are always paid."""
    upper = attack_work(spec, n_images, eps, defense)
    if upper == NO_WORK:
        return WorkRange.exact(NO_WORK)
    scoring = scoring_work(spec, n_images, eps, defense)
    attacked = upper - scoring
    low, typical, high = (attacked.scaled(f) + scoring for f in savings(spec, defense))
    return WorkRange(low, typical, high)


def expected_attack_work(spec: AttackSpec, n_images: int, eps: Sequence[float],
                         defense: DefenseSpec | None = None) -> Work:
    """The typical work of an attack entry's cells (the run's progress bar counts this)."""
    return attack_work_range(spec, n_images, eps, defense).typical


def suite_work(plan: Plan, n_train: int, n_validation: int, n_eval: int) -> Work:
    """Everything a run of ``plan`` would do from scratch, over all its seeds (the same work
    for every seed: seeds change random draws, not sizes); attacks at their typical work."""
    train_config = plan.suite.train
    per_seed = baseline_work(plan.baseline, n_train) + sum(
        (defense_work(d, train_config, n_train, n_validation) for d in plan.defenses), NO_WORK)
    per_seed += sum((expected_attack_work(a, images_attacked(a, n_eval), a.eps, d)
                     for d, a in plan.pairs()), NO_WORK)
    return per_seed.scaled(len(plan.seeds))


# -- calibration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Seconds per image pass of each kind, measured on this machine. On a busy machine
    (``busy``) the passes were timed on one thread, and a run on ``threads`` idle threads may
    take down to ``1 / threads`` of that: the low end of every range."""

    per_pass: Work          # seconds per image: training step, input gradient, forward
    device: str
    threads: int
    train_batch: int
    eval_batch: int
    load: float = 0.0       # the 1-minute load average before calibrating
    cores: int = 1
    busy: bool = False

    def seconds(self, work: Work) -> float:
        p = self.per_pass
        return work.train * p.train + work.grad * p.grad + work.forward * p.forward

    def seconds_range(self, work: WorkRange) -> tuple[float, float, float]:
        """(lowest, typical, highest) seconds of ``work`` on an idle machine. Timed on one
        thread (busy), the typical value assumes the run's threads speed up the attack passes
        (batches of 1000 images) in proportion and training steps (small batches) not at all,
        as the committed fgsm_lenet run did against a one-thread calibration; the lowest that
        they speed up everything, the highest nothing."""
        if not self.busy:
            return (self.seconds(work.low), self.seconds(work.typical),
                    self.seconds(work.high))
        n = self.threads
        p = self.per_pass
        typical = (work.typical.train * p.train
                   + (work.typical.grad * p.grad + work.typical.forward * p.forward) / n)
        return self.seconds(work.low) / n, typical, self.seconds(work.high)

    def busy_text(self) -> str | None:
        """One line saying the machine is busy, or None when it is not."""
        if not self.busy:
            return None
        return (f"the machine is busy (load {self.load:.1f} on {self.cores} cores): the "
                "estimate assumes an idle machine (timed on one thread, the fastest of "
                "repeated calls)")


def machine_load() -> tuple[float, int]:
    """The 1-minute load average and the number of cores (load 0 where there is none)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        load = 0.0
    return load, os.cpu_count() or 1


def calibrate(plan: Plan, train: Split, evaluation: Split, num_classes: int,
              device: torch.device) -> Calibration:
    """Time the suite's model on a batch of the suite's data (a few seconds). The model is a
    fresh one (the calibration never touches the cache or the caller's random stream), in the
    memory format a run uses on ``device`` (``robench.engine``). On a
    busy CPU (load average at least the number of cores) the passes are timed on one thread:
    threads that wait for each other's cores would price the estimate on the contention."""
    load, cores = machine_load()
    busy = device.type == "cpu" and load >= cores
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = prepare_model(plan.baseline.build(num_classes).to(device), device)
        train_batch = min(plan.suite.train.batch_size, len(train))
        x_train, y_train = (t[:train_batch].to(device) for t in (train.images, train.labels))
        eval_batch = min(EVAL_BATCH_SIZE, len(evaluation))
        x_eval, y_eval = (t[:eval_batch].to(device) for t in
                          (evaluation.images, evaluation.labels))
        if busy:
            torch.set_num_threads(1)
        try:
            per_pass = Work(
                train=_per_image(lambda: _train_step(model, x_train, y_train), train_batch,
                                 device),
                grad=_per_image(lambda: _input_gradient(model, x_eval, y_eval), eval_batch,
                                device),
                forward=_per_image(lambda: _forward(model, x_eval), eval_batch, device))
            # fitted on idle CPU runs; a busy machine's one-thread rule was fitted without it
            if device.type == "cpu" and not busy:
                per_pass = per_pass.scaled(LOOP_OVERHEAD)
        finally:
            torch.set_num_threads(threads)
    return Calibration(per_pass, str(device), threads, train_batch, eval_batch, load, cores,
                       busy)


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
    ``CALIBRATION_SECONDS`` have passed; the fastest call counts (the one least slowed by
    other processes: the estimate is for an idle machine)."""
    if batch == 0:
        return 0.0
    step()
    times: list[float] = []
    while not times or (sum(times) < CALIBRATION_SECONDS and len(times) < MAX_REPEATS):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times) / batch


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


def range_text(low: float, typical: float, high: float) -> str:
    """``42 s`` where the range is one value, else ``1 min 10 s (40 s - 3 min 00 s)``."""
    text = duration_text(typical)
    if duration_text(low) == duration_text(high):
        return text
    return f"{text} ({duration_text(low)} - {duration_text(high)})"


__all__ = ["LOOP_OVERHEAD", "NO_SAVING", "SAVINGS", "Calibration", "WorkRange", "attack_work",
           "attack_work_range", "baseline_work", "calibrate", "defense_work", "duration_text",
           "expected_attack_work", "images_attacked", "machine_load", "pass_multipliers",
           "passes_text", "range_text", "savings", "scoring_work", "states_passes", "suite_work"]
