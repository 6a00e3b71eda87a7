"""What a check is: a name, the status it gives when it fires, and what that means.

Every check ``robench.checks`` can emit is made with ``register`` and lives in ``CHECKS`` (a
``robench.registry.Registry``: a name registered twice is an error). A row of ``checks.csv``
is named after its check, optionally followed by what it was run on (``converged[pgd]@0.3``);
``family_of`` gives the registered name back. The one order of statuses, ``STATUSES``, serves
both the verdict of a defense (``worst``) and the report's "failures first" (``worst_first``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from robench.registry import Registry

Status = Literal["pass", "warn", "fail"]
PASS: Status = "pass"
WARN: Status = "warn"
FAIL: Status = "fail"
#: the one order of statuses, best to worst
STATUSES: tuple[Status, ...] = (PASS, WARN, FAIL)


def worst(statuses: Iterable[str]) -> str:
    """The worst of some statuses (the first of the worst when several are equal)."""
    return max(statuses, key=STATUSES.index)


def worst_first(status: str) -> int:
    """Sort key: failures first, then warnings, then passes; anything else last."""
    rank: dict[str, int] = {s: i for i, s in enumerate(reversed(STATUSES))}
    return rank.get(status, len(rank))


@dataclass(frozen=True)
class Check:
    """One sanity check: its ``name`` (the family of its rows in ``checks.csv``), the status
    it gives by default when it fires (``severity``: warn or fail; ``Check.row`` may give the
    other where the check's own code says why) and a one-sentence ``meaning`` the
    report shows beside every finding that did not pass."""

    name: str
    severity: Status
    meaning: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"check {self.name!r}: a name is lower-case letters, digits and _ "
                             "(``family_of`` must give it back from every checks.csv name)")
        if self.severity not in (WARN, FAIL):
            raise ValueError(f"check {self.name!r}: severity must be warn or fail, "
                             f"not {self.severity!r}")
        if not self.meaning.strip():
            raise ValueError(f"check {self.name!r} needs a meaning")

    def row(self, defense: str, fired: bool, detail: str, *, on: str = "",
            severity: Status | None = None) -> dict[str, Any]:
        """A ``checks.csv`` row: this check's severity (or ``severity``) when it ``fired``,
        else pass; ``on`` is appended to the name (``"[pgd]@0.3"``: it starts with ``[`` or
        ``@``, so that ``family_of`` gives this check back)."""
        if on and on[0] not in "[@":
            raise ValueError(f"check {self.name!r}: a suffix starts with [ or @ (got {on!r})")
        status = (severity or self.severity) if fired else PASS
        return {"defense": defense, "check": self.name + on, "status": status, "detail": detail}


CHECKS: Registry[Check] = Registry("check")


def register(name: str, severity: Status, meaning: str) -> Check:
    """Make a check and add it to ``CHECKS`` (a second check of the same name is refused)."""
    check = Check(name, severity, meaning)
    CHECKS.add(name, check)
    return check


def family_of(name: str) -> str:
    """The registered check of a ``checks.csv`` name: the part before ``[`` or ``@``."""
    return re.split(r"[\[@]", str(name), maxsplit=1)[0]


def check_meaning(name: str) -> str:
    """The one-line explanation of a ``checks.csv`` name ("" for a check robench lacks)."""
    family = family_of(name)
    return CHECKS.get(family).meaning if family in CHECKS else ""
