"""Sanity checks computed after every run, one verdict per (defense, check).

Modelled on AutoAttack's automatic flags (Croce & Hein 2020, fra31/auto-attack `flags_doc.md`:
randomness, softmax output, zero gradients, black-box beating white-box; a transfer attack
beating white-box ones likewise) and the checklist of Carlini et al. 2019, "On Evaluating
Adversarial Robustness" (arXiv 1902.06705): eps 0 = clean, accuracy monotone in eps,
iterative <= single-step, unbounded attacks reach ~0 %, more iterations/restarts change
little, independent implementations agree; and no attack breaks an image a verifier certified
(``bounds_hold``: attacks bound robust accuracy from above, verifiers from below); and that
every planned cell has its row (``complete``: a stopped run ranks nothing it did not measure).

Every check is a ``Check`` in ``CHECKS`` (``registry``): its name, the status it gives when it
fires (warn or fail) and what that means. The checks are grouped by what they compare:
``rows`` (a row against itself, its outcomes, its label), ``between_attacks`` (attacks against
each other), ``bounds`` (attacks against verifiers) and ``model`` (the model's gradients and
outputs, measured during the run by ``robench.diagnostics``); ``run`` runs them all.

Nothing here tests an attack's name: each row's attack plugin is looked up by ``attack_name``
and asked for its traits (``robench.traits``), so a third-party attack gets the checks of its
family. Rows whose plugin is not installed get only the checks that need no traits.
"""

from robench.checks.between_attacks import FGSM_MONOTONE_TOL, LARGE_EPS, LARGE_EPS_MAX_ACC
from robench.checks.bounds import BOUND_ROLE
from robench.checks.complete import COMPLETE, complete_checks
from robench.checks.model import DIAGNOSTIC_CHECKS
from robench.checks.paired import TOL, Paired
from robench.checks.registry import (
    CHECKS,
    FAIL,
    PASS,
    STATUSES,
    WARN,
    Check,
    Status,
    check_meaning,
    family_of,
    worst,
    worst_first,
)
from robench.checks.rows import MIN_CLEAN_ACC
from robench.checks.run import run_checks, summarise

__all__ = [
    "BOUND_ROLE", "CHECKS", "COMPLETE", "DIAGNOSTIC_CHECKS", "FAIL", "FGSM_MONOTONE_TOL",
    "LARGE_EPS", "LARGE_EPS_MAX_ACC", "MIN_CLEAN_ACC", "PASS", "STATUSES", "TOL", "WARN", "Check",
    "Paired", "Status", "check_meaning", "complete_checks", "family_of", "run_checks",
    "summarise", "worst", "worst_first",
]
