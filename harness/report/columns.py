"""The leaderboard's columns, read once into typed records: what each column of the board holds.

``robench.leaderboard`` names its columns by convention, and the report consumes any board that
follows it:

- ``<attack>@<eps>``: accuracy under one attack at one eps (kind ``attack``), and
  ``<attack>_mean``: its mean over the sweep's eps > 0 (kind ``attack_mean``);
- ``worst@<eps>`` (or ``worst`` without eps): the worst case (kind ``worst``), with its interval
  ``worst@<eps>_lo`` / ``_hi`` (kinds ``worst_lo`` / ``worst_hi``);
- ``verified…``: a verifier's certified accuracy (kind ``verified``);
- the fixed columns in ``FIXED`` (rank, defense, clean accuracy, status, ``p_vs_none``, …);
- anything else is kind ``other``, shown as is.

``BoardColumns.of(board)`` parses every name once; the rest of the report reads the records
(``attacks``, ``worst``, ``verified``) and never the names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, cast

import pandas as pd

from robench.column_names import FIXED_COLUMNS, VERIFIED, WORST

ColumnKind = Literal["fixed", "attack", "attack_mean", "worst", "worst_lo", "worst_hi",
                     "verified", "other"]

#: columns with a fixed name and meaning (the summary, ranks and the worst case's statistics)
FIXED = FIXED_COLUMNS
_SIDES: dict[str, ColumnKind] = {"": "worst", "_lo": "worst_lo", "_hi": "worst_hi"}


def eps_value(text: str) -> float | None:
    """The eps an eps text spells, when it is a finite number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class BoardColumn:
    """One leaderboard column and what it holds."""
    name: str
    kind: ColumnKind
    attack: str = ""            # kinds attack, attack_mean: the attack's label
    eps_text: str = ""          # kinds attack, worst*: the eps as the name spells it
    eps: float | None = None    # eps_text as a finite number (None: not one, or no eps)


def _worst_parts(name: str) -> tuple[str, str] | None:
    """(eps text, side) of a worst-case column name (``worst``, ``worst@0.3``,
    ``worst@0.3_lo``, ``worst_hi``; side is "", "_lo" or "_hi"), None for any other name."""
    if not name.startswith(WORST):
        return None
    rest = name.removeprefix(WORST)
    if rest in _SIDES:
        return "", rest
    if not rest.startswith("@") or len(rest) < 2:
        return None
    body = rest[1:]
    if len(body) > 3 and body[-3:] in ("_lo", "_hi"):
        return body[:-3], body[-3:]
    return body, ""


def classify(name: str) -> BoardColumn:
    """What a column holds, from its name alone (``attack_mean`` needs the whole board: see
    ``BoardColumns.of``)."""
    if name in FIXED:
        return BoardColumn(name, "fixed")
    worst = _worst_parts(name)
    if worst is not None:
        eps_text, side = worst
        return BoardColumn(name, _SIDES[side], eps_text=eps_text, eps=eps_value(eps_text))
    if name.startswith(VERIFIED):
        return BoardColumn(name, "verified")
    if "@" in name:
        label, eps_text = name.rsplit("@", 1)
        eps = eps_value(eps_text)
        if eps is not None:
            return BoardColumn(name, "attack", attack=label, eps_text=eps_text, eps=eps)
    return BoardColumn(name, "other")


@dataclass(frozen=True)
class AttackColumns:
    """One attack's columns: accuracy at each eps, ascending, and the mean over the sweep."""
    label: str
    eps: list[tuple[str, str]]          # (eps text, column), ascending in eps
    mean: str | None = None             # the ``<attack>_mean`` column, when present


@dataclass
class WorstCase:
    """The leaderboard's worst case at each eps it reports, with intervals where known."""
    eps: list[tuple[str, float]]                      # (eps text, eps) ascending
    column: dict[str, str]                            # eps text -> column
    lo: dict[str, str] = field(default_factory=dict)  # eps text -> column (when present)
    hi: dict[str, str] = field(default_factory=dict)

    @property
    def threat(self) -> str | None:
        """The eps text of the threat model (the largest eps), "" for a worst case without
        eps, None when the board has no worst case."""
        return self.eps[-1][0] if self.eps else (None if not self.column else "")


def _worst_case(columns: list[BoardColumn]) -> WorstCase:
    found: dict[str, dict[str, str]] = {}
    for column in columns:
        if column.kind in ("worst", "worst_lo", "worst_hi"):
            side = column.kind.removeprefix("worst")     # "", "_lo" or "_hi"
            found.setdefault(column.eps_text, {})[side] = column.name
    eps = sorted(((e, v) for e in found if "" in found[e]
                  and (v := eps_value(e)) is not None), key=lambda t: t[1])
    worst = WorstCase(eps=[(e, float(v)) for e, v in eps],
                      column={e: cols[""] for e, cols in found.items() if "" in cols})
    for e, cols in found.items():
        if "_lo" in cols and "_hi" in cols:
            worst.lo[e], worst.hi[e] = cols["_lo"], cols["_hi"]
    return worst


def _worst_kind(board: pd.DataFrame) -> str:
    kinds = set(board["worst_kind"].dropna()) if "worst_kind" in board else set()
    return "per image" if kinds == {"per image"} else "min over attacks"


@dataclass(frozen=True)
class BoardColumns:
    """Every column of one leaderboard, read once (``BoardColumns.of(board)``)."""
    columns: dict[str, BoardColumn]         # name -> column, in the board's order
    attacks: dict[str, AttackColumns]       # attack label -> its columns, in the board's order
    worst: WorstCase
    verified: list[str]                     # the ``verified…`` columns, in the board's order
    worst_kind: str                         # "per image" or "min over attacks"

    @classmethod
    def of(cls, board: pd.DataFrame) -> BoardColumns:
        """The columns of ``board`` (a frame as ``robench.leaderboard`` writes it)."""
        names = [str(c) for c in board.columns]
        parsed = {name: classify(name) for name in names}
        attacks: dict[str, AttackColumns] = {}
        for column in parsed.values():
            if column.kind == "attack":
                attacks.setdefault(column.attack, AttackColumns(column.attack, [])).eps.append(
                    (column.eps_text, column.name))
        for label, entry in attacks.items():
            # eps_value of an attack column's eps text is never None (classify)
            entry.eps.sort(key=lambda t: cast(float, eps_value(t[0])))
            mean = f"{label}_mean"
            if mean in parsed:
                attacks[label] = AttackColumns(label, entry.eps, mean)
                parsed[mean] = BoardColumn(mean, "attack_mean", attack=label)
        return cls(columns=parsed, attacks=attacks, worst=_worst_case(list(parsed.values())),
                   verified=[n for n in names if parsed[n].kind == "verified"],
                   worst_kind=_worst_kind(board))

    def __contains__(self, name: object) -> bool:
        return name in self.columns
