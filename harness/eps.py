"""eps values: canonicalised once when a suite is loaded, compared and printed one way.

Perturbation budgets are rounded to ``EPS_DECIMALS`` decimals at load, so 8/255 typed in two
ways is one value; CSV files carry enough digits (``FLOAT_FORMAT``) that an eps read back from
results.csv equals the canonical value exactly, so resume recognises its cells.
"""

from __future__ import annotations

import math

EPS_DECIMALS = 9
#: float format of every CSV robench writes: round-trips any canonical eps exactly
FLOAT_FORMAT = "%.10g"


def canonical_eps(value: float) -> float:
    """The canonical form of an eps (rounded to ``EPS_DECIMALS`` decimals)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"eps must be a finite number (got {value!r})")
    canonical = round(value, EPS_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    if value != 0 and canonical == 0:
        raise ValueError(f"eps {value!r} is below the resolution 1e-{EPS_DECIMALS}")
    return canonical


def same_eps(a: float, b: float) -> bool:
    """Whether two eps values are the same budget (after canonicalisation)."""
    return canonical_eps(a) == canonical_eps(b)


def eps_text(value: float) -> str:
    """Short, exact text of an eps for labels and column names (``0.1``, ``0.031372549``)."""
    return f"{canonical_eps(value):.{EPS_DECIMALS}g}"
