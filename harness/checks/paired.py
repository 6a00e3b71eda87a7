"""Two cells' accuracies on the same images, and the tolerance their comparison allows.

Accuracies of attacks on the *same* images differ only by attack randomness, so ``TOL`` = 1 pp;
when one side was evaluated on a subset of ``n`` images (``limit``) we add two binomial
standard errors, 2*sqrt(p(1-p)/n), for sampling noise (``tolerance``).
"""

from __future__ import annotations

import math

import pandas as pd

from robench.eps import canonical_eps
from robench.outcomes import RobustPerImage

TOL = 0.01            # 1 pp between attacks on the same images


class Paired:
    """Accuracies of two cells compared on the same images when per-image outcomes exist.

    With outcomes, two attacks are compared on the images both evaluated (no sampling noise:
    the tolerance is ``TOL``, attack randomness only); without, on their own image sets with
    two binomial standard errors added for the smaller set (``tolerance``)."""

    def __init__(self, outcomes: RobustPerImage | None, seed: int | None = None) -> None:
        """The cells of ``seed`` (of every seed when None: a table without a seed column)."""
        self.available = outcomes is not None  # a run with outcomes has them for every row
        self.robust: dict[tuple[str, str, float], pd.Series] = {}
        for (d, a, e, s), robust in (outcomes.cells.items() if outcomes is not None else ()):
            if seed is None or s == seed:
                old = self.robust.get((d, a, e))
                self.robust[(d, a, e)] = robust if old is None else pd.concat([old, robust])

    def series(self, row: pd.Series) -> pd.Series | None:
        """Robust (correct before and after) per image of one results row, if outcomes exist."""
        return self.robust.get(cell_key(row))

    def accuracies(self, a: pd.Series, b: pd.Series) -> tuple[float, float, float, str]:
        """(acc of a, acc of b, tolerance, "on N common images" or "")."""
        ka, kb = cell_key(a), cell_key(b)
        if ka in self.robust and kb in self.robust:
            x, y = self.robust[ka].align(self.robust[kb], join="inner")
            if len(x):
                return float(x.mean()), float(y.mean()), TOL, f" on {len(x)} common images"
        return float(a["robust_acc"]), float(b["robust_acc"]), tolerance(a, b), ""


def cell_key(row: pd.Series) -> tuple[str, str, float]:
    """(defense, attack label, eps) of a results row: the key of its per-image outcomes."""
    return (str(row["defense"]), str(row["attack"]), canonical_eps(row["eps"]))


def tolerance(a: pd.Series, b: pd.Series) -> float:
    """TOL plus sampling noise when the two rows were measured on different numbers of images."""
    if int(a["n"]) == int(b["n"]):
        return TOL
    small = a if a["n"] < b["n"] else b
    p = float(small["robust_acc"])
    return TOL + 2 * math.sqrt(max(p * (1 - p), 1e-4) / float(small["n"]))
