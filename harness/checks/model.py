"""Checks of a defended model itself, judged from the diagnostics the run measured
(``robench.diagnostics``): input gradients, randomness, softmax outputs (AutoAttack's flags,
Croce & Hein 2020)."""

from __future__ import annotations

import math
from typing import Any

from robench.checks.registry import FAIL, WARN, register
from robench.diagnostics import GRADIENT_SAMPLE

# fails when the gradients are zero or non-finite; a warning when they were not measured
INPUT_GRADIENTS = register(
    "input_gradients", FAIL,
    "input gradients are zero, non-finite or not measured: gradient attacks may fail silently "
    "(shattered gradients)")
DETERMINISTIC_OUTPUT = register(
    "deterministic_output", WARN,
    "two forward passes differ: a randomised defense needs EOT attacks")
LOGIT_OUTPUT = register(
    "logit_output", WARN,
    "outputs look like probabilities: gradients through softmax can vanish")

#: the checks judged from the diagnostics (measured on the first seed's models only)
DIAGNOSTIC_CHECKS = (INPUT_GRADIENTS.name, DETERMINISTIC_OUTPUT.name, LOGIT_OUTPUT.name)


def diagnostics(defense: str, diag: dict[str, float] | None) -> list[dict[str, Any]]:
    """The model checks of one defense (``diag`` None: not measured, a warning)."""
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
            defense, True, "two forward passes differ: a randomised defense needs EOT attacks"))
    if diag["softmax_output"]:
        out.append(LOGIT_OUTPUT.row(
            defense, True,
            "outputs look like probabilities: attacks on softmax outputs can vanish"))
    return out
