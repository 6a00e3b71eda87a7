"""The tie between proofs and attacks: no attack may break an image a verifier certified.

Attacks bound robust accuracy from above, verifiers from below, so on the same images every
attack at a verifier's eps must leave every certified image correct (``bounds_hold``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from robench.checks.paired import TOL, Paired, cell_key, tolerance
from robench.checks.registry import FAIL, WARN, register
from robench.eps import eps_text
from robench.results import eps_mask
from robench.traits import plugin_of

BOUND_ROLE = "bound"  # a verifier's rows (robench.plan): a lower bound, not an attack

BOUNDS_HOLD = register(
    "bounds_hold", FAIL,
    "an attack broke an image a verifier certified (attack accuracy below verified accuracy): "
    "the attack, the verifier or the model plumbing is wrong")


def bounds_hold(defense: str, rows: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    """No attack may break an image a verifier certified.

    A verifier's accuracy is a lower bound and an attack's an upper bound on the true robust
    accuracy, so on the same images every attack at the same eps (sanity-check attacks too)
    must leave every certified image correct. With per-image outcomes a single certified image
    that an attack breaks fails the check (no tolerance: it means a bug in the attack, the
    verifier or the model plumbing); without, an attack's accuracy below the verified one fails
    (on different image subsets, beyond two standard errors of sampling noise)."""
    is_bound = (rows["family"] == "verifier") | (rows["role"] == BOUND_ROLE)
    bounds, attacks = rows[is_bound], rows[~is_bound]
    out = []
    for label, cells in bounds.groupby("attack", sort=False):
        problems, compared = [], 0
        for _, b in cells.iterrows():
            for _, a in attacks[eps_mask(attacks["eps"], b["eps"])].iterrows():
                compared += 1
                problem = _beats_bound(a, b, paired)
                if problem:
                    problems.append(problem)
        if not compared:
            continue
        names = cells["attack_name"] if "attack_name" in cells else []
        if problems and any(getattr(plugin_of(str(n)), "probabilistic", False) for n in names):
            out.append(BOUNDS_HOLD.row(
                defense, True, "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)"
                                                          if len(problems) > 3 else "")
                + f": {label} certifies the smoothed classifier with probability 1 - alpha per "
                "image (infinite votes), the attack is scored by a finite vote, so this "
                "need not be a bug", on=f"[{label}]", severity=WARN))
            continue
        out.append(BOUNDS_HOLD.row(
            defense, bool(problems),
            "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)"
                                       if len(problems) > 3 else "")
            if problems else f"every attack >= verified accuracy in all "
            f"{compared} comparisons at shared eps", on=f"[{label}]"))
    return out


def _beats_bound(attack: pd.Series, bound: pd.Series, paired: Paired) -> str:
    """Why ``attack`` contradicts the verifier row ``bound`` ("" when it does not)."""
    eps = eps_text(bound["eps"])
    ka, kb = cell_key(attack), cell_key(bound)
    if ka in paired.robust and kb in paired.robust:
        robust, certified = paired.robust[ka].align(paired.robust[kb], join="inner")
        broken = int((certified & ~robust).sum())
        if len(robust) and broken:
            return (f"{attack['attack']}@{eps} breaks {broken} of the "
                    f"{int(certified.sum())} images {bound['attack']} certified "
                    f"(on {len(robust)} common images)")
        if len(robust):
            return ""
    tol = 1e-12 if int(attack["n"]) == int(bound["n"]) else tolerance(attack, bound) - TOL
    acc_a, acc_b = float(attack["robust_acc"]), float(bound["robust_acc"])
    if acc_a < acc_b - tol:
        return (f"{attack['attack']}@{eps} = {acc_a:.3f} < verified {bound['attack']}@{eps} "
                f"= {acc_b:.3f} (tolerance {100 * tol:.1f} pp)")
    return ""
