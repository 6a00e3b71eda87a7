"""Checks of a defended model itself, judged from the diagnostics the run measured
(``robench.diagnostics``): input gradients, randomness, softmax outputs (AutoAttack's flags,
Croce & Hein 2020)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from robench.checks.registry import FAIL, WARN, register
from robench.diagnostics import GRADIENT_SAMPLE
from robench.json_input import loads

# fails when the gradients are zero or non-finite; a warning when they were not measured
INPUT_GRADIENTS = register(
    "input_gradients", FAIL,
    "input gradients are zero, non-finite or not measured: gradient attacks may fail silently "
    "(shattered gradients)")
# a fail: gradient attacks on one noisy pass understate what an attacker averaging over the
# randomness achieves (Athalye et al. 2018, section 4.3), so without EOT the defense's robust
# accuracy is not evidence; with an EOT attack in the suite the randomness is accounted for
DETERMINISTIC_OUTPUT = register(
    "deterministic_output", FAIL,
    "two forward passes differ and no attack in the suite uses EOT (eot_samples > 1): the "
    "defense's robust accuracy overstates its robustness")
LOGIT_OUTPUT = register(
    "logit_output", WARN,
    "outputs look like probabilities: gradients through softmax can vanish")

#: the checks judged from the diagnostics (measured on the first seed's models only)
DIAGNOSTIC_CHECKS = (INPUT_GRADIENTS.name, DETERMINISTIC_OUTPUT.name, LOGIT_OUTPUT.name)


def eot_attacks(attack_params: Iterable[Any], labels: Iterable[Any]) -> list[str]:
    """The labels of the rows whose canonical attack params have ``eot_samples`` > 1."""
    found = []
    for params, label in zip(attack_params, labels, strict=True):
        try:
            value = loads(str(params))
        except ValueError:
            continue
        samples = value.get("eot_samples", 1) if isinstance(value, dict) else 1
        if isinstance(samples, int) and samples > 1:
            found.append(str(label))
    return list(dict.fromkeys(found))


def diagnostics(defense: str, diag: dict[str, float] | None,
                eot: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The model checks of one defense (``diag`` None: not measured, a warning); ``eot``: the
    labels of its attacks that use EOT."""
    if diag is None:
        return [INPUT_GRADIENTS.row(
            defense, True, "not measured (no diagnostics for this defense in "
            "diagnostics.json): gradient masking is not checked", severity=WARN)]
    zero, nonfinite = diag["zero_grad_fraction"], diag["nonfinite_grad_fraction"]
    sample = int(diag.get("sample", GRADIENT_SAMPLE))
    healthy = math.isfinite(zero + nonfinite) and zero + nonfinite <= 0.01
    out = [INPUT_GRADIENTS.row(
        defense, not healthy, f"{100 * zero:.1f}% of {sample} images have an all-zero input "
        f"gradient, {100 * nonfinite:.1f}% a non-finite one")]
    if diag["random_output"]:
        out.append(DETERMINISTIC_OUTPUT.row(
            defense, not eot, f"two forward passes differ; attacked with EOT by "
            f"{', '.join(eot)}" if eot else "two forward passes differ and no attack uses EOT "
            "(eot_samples > 1): a randomised defense needs EOT attacks"))
    if diag["softmax_output"]:
        out.append(LOGIT_OUTPUT.row(
            defense, True,
            "outputs look like probabilities: attacks on softmax outputs can vanish"))
    return out
