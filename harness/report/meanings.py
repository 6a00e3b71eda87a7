"""What each check means, in one line, for the report's failures-and-warnings table.

``CHECK_MEANING`` maps a check family (the check name before ``[`` or ``@``) to the sentence the
report prints beside a check that did not pass; ``STATUS_RANK`` orders statuses, failures first.
"""

from __future__ import annotations

import re

STATUS_RANK = {"fail": 0, "warn": 1, "pass": 2}

#: what a check that did not pass means, by check family (the name before ``[`` or ``@``)
CHECK_MEANING = {
    "robust_le_clean": "robust accuracy above clean accuracy is impossible (robust = correct "
                       "before and after): a bookkeeping or data bug",
    "rows_match_outcomes": "a results row disagrees with its per-image outcomes: the table was "
                           "edited or mixed with another run",
    "eps0_equals_clean": "eps 0 changes accuracy: the attack path alters unperturbed inputs "
                         "(randomness, preprocessing or a bug)",
    "single_step_monotone": "FGSM-like accuracy rises with eps: catastrophic overfitting or "
                            "gradient masking",
    "iterative_le_single_step": "an iterative attack (PGD) leaves more accuracy than a single "
                                "step: gradient masking or a misconfigured iterative attack",
    "ensemble_le_iterative": "the ensemble (AutoAttack) is weaker than an iterative attack: "
                             "a misconfigured or reduced ensemble",
    "blackbox_not_stronger": "a black-box attack beats the gradient attacks: masked gradients, "
                             "or a gradient attack too weak; the white-box numbers overstate "
                             "robustness",
    "transfer_not_stronger": "examples crafted on another model beat every white-box attack on "
                             "this one: masked gradients; the white-box numbers overstate "
                             "robustness",
    "large_eps_reaches_zero": "accuracy survives an eps that can turn any image grey: the "
                              "defense is broken (masked gradients), not robust",
    "converged": "more steps or restarts still change accuracy: the attack has not converged, "
                 "so its number is an upper bound",
    "backend_agree": "an independent implementation (torchattacks, ART) disagrees with "
                     "robench's own beyond tolerance: one of them is wrong",
    "input_gradients": "input gradients are zero, non-finite or not measured: gradient "
                       "attacks may fail silently (shattered gradients)",
    "deterministic_output": "two forward passes differ: a randomised defense needs EOT attacks",
    "logit_output": "outputs look like probabilities: gradients through softmax can vanish",
    "clean_accuracy": "clean accuracy below 50 %: robust accuracy of a near-chance model means "
                      "nothing",
    "reduced_variant_labelled": "a weaker variant of a published attack feeds the worst case "
                                "under the standard attack's name",
    "bounds_hold": "an attack broke an image a verifier certified (attack accuracy below "
                   "verified accuracy): the attack, the verifier or the model plumbing is wrong",
}


def check_meaning(name: str) -> str:
    """The one-line explanation of a check name (its family: the name before ``[`` / ``@``)."""
    family = re.split(r"[\[@]", str(name), maxsplit=1)[0]
    return CHECK_MEANING.get(family, "")
