"""``robench verify``'s re-attack: a seeded random sample of each cell's images attacked again
on the same model, with the cell's seed and the images named (``Attack.set_images``), and the
per-image outcomes compared with outcomes.parquet.

**The sample.** Per (seed, attack) of the plan, ``k = min(N, n)`` of the ``n`` images of the
attack's cells, drawn with ``derive_seed(verify seed, "verify", "sample", run seed, attack
label)``: the same images for every defense and every eps of the attack (an eps sweep is one
attack over the images, as in the run; a transfer attack crafts its examples once). The
cells' own image ids are the suite's evaluation images (``head(limit)`` of the evaluation
split); a cell whose stored ids are others is named, not re-attacked.

**Which attacks repeat image by image.** robench's native attacks draw every random start
per image from ``(attack seed, eps, draw, image id)`` (``Attack.uniform_noise``), so an image
gets the same start in any batch: FGSM, R+FGSM, PGD and BIM (active set included: an image
stops on its own logits and the final whole-batch check only resumes images that are not
fooled), transfer (its crafting attack is native), and the verifiers (IBP, CROWN: no
randomness). Their outcomes must be identical (tolerance 0) on the device and thread count
the run recorded. AutoAttack and Square (torchattacks' components reseed the global
generator and draw for the whole batch; AutoAttack's later components attack only the images
the earlier ones left) and the ``torchattacks``/``art`` backends draw per batch: an image
attacked in another batch gets other random numbers. Their differing images are counted and
allowed up to ``BATCH_TOLERANCE`` of the sample per cell (re-running a whole 1000-image
AutoAttack cell costs minutes).

**A randomized defense** (its forward pass is random, e.g. ``gaussian_noise``'s vote) gives
an image another outcome on another draw by design, however the image is batched, so no
count of differences is "right". Its cells are tested instead: the stored and the re-attacked
outcome of an image are two draws of the same random procedure, so among the images whose
outcomes differ, "stored correct, now wrong" and "stored wrong, now correct" are equally
likely. An exact two-sided sign test (``robench.stats.mcnemar_exact``) on those counts, for
the clean and for the attacked outcome (the smaller p doubled: Bonferroni over the two), gives
each cell a p; ``robench.verify_run`` adjusts them with Holm over all randomized cells of the
run and flags a cell whose adjusted p is below ``RANDOMIZED_ALPHA``. This detects a shift of a
cell's accuracy (a stored number that its procedure does not reproduce), not one changed
image: a cell needs at least 7 changed images, all one way, to be flagged, and more when the run
has several randomized cells (Holm: ``least_flagged``); a swap that keeps both accuracies
passes.

**Another device or thread count.** Float sums in another order change logits in the last
bits; an image within that of a tie between two classes can flip. Then every cell allows
``DEVICE_TOLERANCE`` of its sample (at least one image), and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from robench.data import Split
from robench.eps import canonical_eps
from robench.outcomes import Cell, CellOutcomes
from robench.plan import AttackSpec, DefenseSpec
from robench.progress import Reporter
from robench.seeds import derive_seed
from robench.stats import mcnemar_exact
from robench.tasks import run_attack_cells
from robench.verify_tables import cell_name

#: images re-attacked per cell by default: the flagship (561 cells) in about 5 minutes on
#: 2 CPU cores (benchmarks/RESULTS.md, "robench verify")
DEFAULT_SAMPLE = 50
#: share of a cell's sample that may differ for an attack whose random draws are per batch
BATCH_TOLERANCE = 0.10
#: share of a cell's sample (at least one image) that may differ on another device or thread
#: count than the run recorded
DEVICE_TOLERANCE = 0.01
#: family-wise error rate of the sign tests of a randomized defense's cells (Holm over them)
RANDOMIZED_ALPHA = 0.05
#: the ``why`` of a randomized defense's cells
RANDOM_FORWARD = "the model's forward pass is random"


def batch_dependence(spec: AttackSpec, randomized_model: bool) -> str | None:
    """Why the outcomes of ``spec`` depend on the batch an image is attacked in (None: they
    do not: its random draws are per image)."""
    if randomized_model:
        return RANDOM_FORWARD
    if spec.backend != "native":
        return f"the {spec.backend} backend draws its random numbers per batch"
    if spec.plugin.family in ("ensemble", "black_box"):
        return "its components draw random numbers per batch (torchattacks)"
    return None


def randomized(model: nn.Module, data: Split, declared: bool = False) -> bool:
    """Whether the model's forward pass is random: ``declared`` (the defense plugin's
    ``randomized``), else two forward passes of the same images give other logits (a probe
    that can miss a vote that happens to be unanimous on its images: hence the declaration
    first)."""
    if declared:
        return True
    x = data.images[:64]
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def sample_positions(n: int, k: int, verify_seed: int, run_seed: int, attack: str
                     ) -> np.ndarray:
    """``k`` of the positions ``0..n-1``, seeded, in increasing (evaluation) order."""
    rng = np.random.default_rng(derive_seed(verify_seed, "verify", "sample", run_seed, attack))
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


@dataclass
class CellCheck:
    """One cell's re-attack: its name, images re-attacked, images that differ, the differences
    it allows and why; a randomized defense's cell is judged by its sign test's ``p`` (after
    Holm: ``p_adjusted``) instead of a count."""

    name: str
    images: int
    differ: int
    allowed: int
    why: str | None
    first: list[int] = field(default_factory=list)   # image ids of the first differences
    p: float | None = None              # the sign test's p (randomized defenses only)
    p_adjusted: float | None = None     # ``p`` after Holm over the run's randomized cells
    turns: str = ""                     # how the changed images changed (randomized only)

    @property
    def judged_p(self) -> float | None:
        """The p the cell is judged by: Holm-adjusted once ``judge_randomized`` has run."""
        return self.p if self.p_adjusted is None else self.p_adjusted

    @property
    def ok(self) -> bool:
        judged = self.judged_p
        return judged >= RANDOMIZED_ALPHA if judged is not None else self.differ <= self.allowed


def turn_counts(stored: np.ndarray, now: np.ndarray) -> tuple[int, int]:
    """(stored correct and now wrong, stored wrong and now correct) of boolean outcomes."""
    return int((stored & ~now).sum()), int((~stored & now).sum())


def sign_test_p(stored_clean: np.ndarray, stored_adv: np.ndarray, clean: np.ndarray,
                adv: np.ndarray) -> float:
    """The randomized cell's p (see the module): the exact two-sided sign test on the images
    whose clean, and whose attacked, outcome changed direction, the smaller p doubled."""
    p = [mcnemar_exact(*turn_counts(old, new))
         for old, new in ((stored_clean, clean), (stored_adv, adv))]
    return min(1.0, 2 * min(p))


def turns_text(stored_clean: np.ndarray, stored_adv: np.ndarray, clean: np.ndarray,
               adv: np.ndarray) -> str:
    """``clean: 0 became correct, 9 wrong; attacked: ...``: the counts the sign test reads."""
    parts = []
    for name, old, new in (("clean", stored_clean, clean), ("attacked", stored_adv, adv)):
        wrong, right = turn_counts(old, new)
        parts.append(f"{name}: {right} became correct, {wrong} wrong")
    return "; ".join(parts)


def least_flagged(cells: int, alpha: float = RANDOMIZED_ALPHA) -> int:
    """The fewest changed images, all one way, that can flag a randomized cell among
    ``cells`` (Holm multiplies the smallest p by ``cells``; a one-way split of ``k`` has
    two-sided p ``2 * 2^-k``, doubled for the two outcomes)."""
    k = 1
    while cells * 4 * 0.5 ** k >= alpha:
        k += 1
    return k


def allowed_differences(k: int, batch_why: str | None, other_machine: bool) -> int:
    """How many of ``k`` re-attacked images may differ (see the module)."""
    allowed = 0
    if batch_why is not None:
        allowed = math.floor(BATCH_TOLERANCE * k)
    if other_machine:
        allowed = max(allowed, math.ceil(DEVICE_TOLERANCE * k))
    return allowed


def reattack(spec: AttackSpec, defense: str, seed: int, model: nn.Module,
             source: nn.Module | None, data: Split,
             blocks: dict[Cell, CellOutcomes], sample: int,
             verify_seed: int, other_machine: bool, randomized_model: bool,
             defense_spec: DefenseSpec | None = None) -> tuple[list[CellCheck], list[str]]:
    """Re-attack the sample of the cells of ``spec`` on ``defense``'s ``model`` (``data``: the
    run's evaluation split); the cells' checks, and problem lines for cells that could not be
    re-attacked. Cells absent from ``blocks`` (an unfinished run) are skipped."""
    cells = [(e, blocks.get((defense, spec.label, canonical_eps(e), seed))) for e in spec.eps]
    present = [(e, b) for e, b in cells if b is not None]
    if not present:
        return [], []
    images = data.head(spec.limit)
    expected = images.ids.cpu().numpy()
    problems, usable = [], []
    for eps, block in present:
        if not np.array_equal(block.image, expected):
            problems.append(f"{cell_name(defense, spec.label, eps, seed)}: its images are not "
                            "the suite's evaluation images (not re-attacked)")
        else:
            usable.append((eps, block))
    if not usable:
        return [], problems
    positions = sample_positions(len(expected), sample, verify_seed, seed, spec.label)
    subset = images.subset(torch.as_tensor(positions, dtype=torch.long,
                                           device=images.images.device))
    outcomes = run_attack_cells(spec, model, source, [e for e, _ in usable], subset,
                                Reporter(quiet=True), desc=f"verify {defense} / {spec.label}",
                                defense=defense_spec)
    why = batch_dependence(spec, randomized_model)
    allowed = allowed_differences(len(positions), why, other_machine)
    checks = []
    for (eps, block), outcome in zip(usable, outcomes, strict=True):
        clean = block.clean_correct[positions].astype(bool)
        adv = block.adv_correct[positions].astype(bool)
        clean_now = outcome.clean_ok.numpy().astype(bool)
        adv_now = outcome.adv_ok.numpy().astype(bool)
        wrong = (clean_now != clean) | (adv_now != adv)
        ids = expected[positions][wrong]
        p = sign_test_p(clean, adv, clean_now, adv_now) if randomized_model else None
        turns = turns_text(clean, adv, clean_now, adv_now) if randomized_model else ""
        checks.append(CellCheck(cell_name(defense, spec.label, eps, seed), len(positions),
                                int(wrong.sum()), allowed, why, [int(i) for i in ids[:5]], p,
                                turns=turns))
    return checks, problems


def difference_line(check: CellCheck) -> str:
    """The problem line of a cell whose re-attack differs by more than it allows."""
    ids = ", ".join(map(str, check.first)) + (", ..." if check.differ > len(check.first) else "")
    if check.p is not None:
        return (f"{check.name}: {check.differ} of {check.images} re-attacked images differ from "
                f"outcomes.parquet, mostly one way ({check.turns}; sign test p = "
                f"{check.p:.2g}, Holm-adjusted {check.judged_p:.2g} < {RANDOMIZED_ALPHA:g}; "
                f"{check.why}); images {ids}")
    allowed = f" (allowed {check.allowed}: {check.why})" if check.allowed else ""
    return (f"{check.name}: {check.differ} of {check.images} re-attacked images differ from "
            f"outcomes.parquet{allowed}; images {ids}")


__all__ = ["BATCH_TOLERANCE", "DEFAULT_SAMPLE", "DEVICE_TOLERANCE", "RANDOMIZED_ALPHA",
           "RANDOM_FORWARD", "CellCheck", "allowed_differences", "batch_dependence",
           "difference_line", "least_flagged", "randomized", "reattack", "sample_positions",
           "sign_test_p", "turn_counts", "turns_text"]
