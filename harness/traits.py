"""What a results row's attack is: its plugin, its family and its threat model (norm).

Nothing downstream of a run tests an attack's name: each row's attack plugin is looked up by
``attack_name`` and asked for its traits (``family``, ``budget``, ``backend_tolerance``; see
``robench.attacks.base``), so a third-party attack is treated like the built-ins of its family.
The checks and the leaderboard both read rows through these helpers.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from robench.attacks import ATTACKS, Attack
from robench.attacks.base import DEFAULT_NORM
from robench.errors import UserError
from robench.json_input import loads


def plugin_of(attack_name: str) -> type[Attack] | None:
    """The installed attack plugin of a results row, or None (a row from elsewhere, or a
    plugin that is installed but broken)."""
    try:
        return ATTACKS.get(attack_name)
    except UserError:
        return None


def with_traits(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` plus a ``family`` column (the attack plugin's trait; "" when unknown) and a
    ``norm`` column (the ``norm`` of the row's attack params; ``linf`` when it has none)."""
    families = {name: getattr(plugin_of(str(name)), "family", "")
                for name in results["attack_name"].unique()}
    params = results["attack_params"] if "attack_params" in results else pd.Series(
        "", index=results.index)
    return results.assign(family=results["attack_name"].map(families),
                          norm=params.map(norm_of_params))


def norm_of_params(params_json: Any) -> str:
    """The threat model of a row's canonical attack params (``linf`` unless they say ``l2``)."""
    try:
        params = loads(str(params_json))
    except ValueError:
        return DEFAULT_NORM
    if not isinstance(params, dict):
        return DEFAULT_NORM
    nested = params.get("attack_params")  # a transfer attack: its crafting attack's norm
    norm = params.get("norm", nested.get("norm") if isinstance(nested, dict) else None)
    return norm if isinstance(norm, str) else DEFAULT_NORM
