"""Column-wise helpers for robench's tables (results, outcomes) as pandas objects.

An outcome table holds millions of rows (one per image, cell and eps) and a handful of
distinct eps values: deciding ``same_eps`` once per distinct value keeps a filter a hash
lookup instead of a Python call per row: the leaderboard filters once per defense and eps,
and a Python call per row of a full suite's outcomes costs seconds per filter.
"""

from __future__ import annotations

import pandas as pd

from robench.eps import same_eps


def eps_mask(values: pd.Series, eps: float) -> pd.Series:
    """A boolean mask of the entries of an eps column that are the budget ``eps``."""
    verdict = {value: same_eps(value, eps) for value in pd.unique(values)}
    return values.map(verdict).astype(bool)
