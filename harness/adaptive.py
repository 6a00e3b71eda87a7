"""Escalation (``adaptive: auto``, docs/adaptive.md): which adaptive variants of a suite's
gradient attacks a plan adds, for which defenses, and why.

Decided up front from what each defense declares, never from a check that happened to fire.
The gradient attacks are those of the ``single_step``, ``iterative`` and ``ensemble`` families
(fgsm, rfgsm, pgd, bim, autoattack). A defense with ``has_surrogate`` gets the BPDA variant
(``robench.attacks.bpda``: PGD through its differentiable surrogate) of the suite's ``pgd``
entries that apply to it; BPDA is PGD, so every other gradient attack gets a note saying it has
no BPDA variant and its number stays an upper bound. A defense with ``randomized`` gets the EOT
variant (the same attack with ``eot_samples``) of every gradient attack whose params accept
``eot_samples`` (a note where they refuse it: autoattack's version fast). A defense with both
gets BPDA with ``eot_samples``. Each variant keeps its attack's eps, image limit and role (an
``eval`` attack's variant joins the worst case; a ``check``'s stays a check) and is restricted
to the defenses it was added for. What could not be added is said (``Escalation.notes``).

This module only chooses: ``robench.plan`` resolves the variants into ordinary attack entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from robench.attacks import ATTACKS, Attack, AttackParams

#: the attack a surrogate-declaring defense is escalated to
BPDA = "bpda"
#: the params key of an EOT variant (gradients averaged over that many stochastic passes)
EOT_KEY = "eot_samples"
#: the families whose attacks follow the defended model's input gradients, so a defense that
#: masks them can fool them (``robench.attacks.base.Family``)
GRADIENT_FAMILIES = ("single_step", "iterative", "ensemble")


class _AttackLike(Protocol):
    """A resolved attack entry (``robench.plan.AttackSpec``), read-only."""

    @property
    def label(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def plugin(self) -> type[Attack]: ...
    @property
    def params(self) -> AttackParams: ...
    @property
    def eps(self) -> tuple[float, ...]: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def defenses(self) -> tuple[str, ...] | None: ...


class _DefenseLike(Protocol):
    """A resolved defense entry (``robench.plan.DefenseSpec``), read-only."""

    @property
    def label(self) -> str: ...
    @property
    def randomized(self) -> bool: ...
    @property
    def has_surrogate(self) -> bool: ...


@dataclass(frozen=True)
class Variant:
    """One adaptive attack entry: ``name`` with ``params`` at the eps, limit and role of the
    suite attack ``of`` (its index), on ``defenses`` only; ``reason`` says why."""

    of: int
    name: str
    params: AttackParams
    label: str
    defenses: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Escalation:
    variants: list[Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what was not added, and why


def _why(surrogate: bool, randomized: bool) -> str:
    parts = (["a differentiable surrogate (has_surrogate)"] if surrogate else []) \
        + (["randomness (randomized)"] if randomized else [])
    return " and ".join(parts)


def _bpda_of() -> str | None:
    """The attack BPDA is the variant of (its ``random_starts_of``: ``pgd``), None when no
    ``bpda`` is installed."""
    return ATTACKS.get(BPDA).random_starts_of if BPDA in ATTACKS else None


def _variant_params(attack: _AttackLike, surrogate: bool, randomized: bool,
                    eot_samples: int) -> tuple[str, AttackParams | None, str]:
    """The variant's attack name and params, or None with why it cannot be built."""
    if surrogate:
        base = _bpda_of()
        if base is None:
            return BPDA, None, f"{BPDA} is not installed"
        if attack.name != base:
            return BPDA, None, f"{BPDA} is {base.upper()}"
    name = BPDA if surrogate else attack.name
    plugin = ATTACKS.get(name)
    raw = attack.params.model_dump(mode="json")
    if surrogate:
        raw.pop("backend", None)  # BPDA runs robench's own loop (the surrogate is robench's)
    if randomized:
        if EOT_KEY not in plugin.Params.model_fields:
            return name, None, f"{name} takes no {EOT_KEY}"
        raw[EOT_KEY] = eot_samples
    try:
        return name, plugin.Params.model_validate(raw), ""
    except ValidationError as err:
        if surrogate:
            return name, None, f"{attack.name}'s params are not {name}'s"
        why = str(err.errors()[0].get("msg", "")).removeprefix("Value error, ")
        return name, None, f"its params refuse {EOT_KEY} > 1 ({why})"


def _label(attack: _AttackLike, surrogate: bool, randomized: bool, eot_samples: int) -> str:
    eot = f"eot={eot_samples}" if randomized else ""
    if surrogate:
        return f"{BPDA}[of={attack.label}{',' + eot if eot else ''}]"
    return f"{attack.label}[{eot}]"


def _applies(attack: _AttackLike, defense: str) -> bool:
    return attack.defenses is None or defense in attack.defenses


def _already_listed(attacks: Sequence[_AttackLike], name: str, params: AttackParams,
                    source: _AttackLike, defense: str) -> bool:
    """The suite itself already runs this variant on ``defense`` (same params, limit, eps)."""
    text = params.model_dump_json()
    return any(a.name == name and a.params.model_dump_json() == text and a.limit == source.limit
               and set(source.eps) <= set(a.eps) and _applies(a, defense) for a in attacks)


def escalate(attacks: Sequence[_AttackLike], defenses: Sequence[_DefenseLike],
             eot_samples: int) -> Escalation:
    """The adaptive variants ``adaptive: auto`` adds to a plan with these resolved attack and
    defense entries (``eot_samples``: the suite's ``adaptive_eot_samples``)."""
    out = Escalation()
    kinds: dict[tuple[bool, bool], list[str]] = {}
    for d in defenses:
        surrogate, randomized = d.has_surrogate, d.randomized
        if surrogate or randomized:
            kinds.setdefault((surrogate, randomized), []).append(d.label)
    for (surrogate, randomized), labels in kinds.items():
        for i, attack in enumerate(attacks):
            own_eot = int(getattr(attack.params, EOT_KEY, 1))
            if attack.plugin.family not in GRADIENT_FAMILIES or attack.plugin.random_starts_of \
                    or (own_eot > 1 and not surrogate):
                continue  # not a gradient attack of its own, or already adaptive
            # an EOT attack on a surrogate defense still follows the defense's own gradient
            # (zero for a vote): its BPDA variant keeps the larger number of samples
            k = max(eot_samples, own_eot)
            targets = [d for d in labels if _applies(attack, d)]
            if not targets:
                continue
            name, params, problem = _variant_params(attack, surrogate, randomized, k)
            if params is None:
                kind = "BPDA" if surrogate else "EOT"
                out.notes.append(f"no {kind} variant of {attack.label} for "
                                 f"{', '.join(targets)}: {problem}; {attack.label}'s own "
                                 "number stays an upper bound")
                continue
            targets = [d for d in targets
                       if not _already_listed(attacks, name, params, attack, d)]
            if not targets:
                continue
            what = name if name != attack.name else f"{attack.label} with {EOT_KEY}"
            out.variants.append(Variant(
                i, name, params, _label(attack, surrogate, randomized, k),
                tuple(targets),
                f"{what} (variant of {attack.label}) for {', '.join(targets)}: "
                f"{'it declares' if len(targets) == 1 else 'they declare'} "
                f"{_why(surrogate, randomized)}"))
    return out


#: what an empty cell of an attack restricted to other defenses shows (not a missing cell)
NOT_RUN = "not run"


def restricted_attacks(run: Any) -> dict[str, list[str]]:
    """Per restricted attack label of run.json ``run``: the defenses it ran on ({} when none
    is restricted, or the record is absent or damaged: completeness says so)."""
    planned = run.get("planned") if isinstance(run, dict) else None
    only = planned.get("only") if isinstance(planned, dict) else None
    if not isinstance(only, dict):
        return {}
    return {str(a): [str(d) for d in on] for a, on in only.items() if isinstance(on, list)}


def run_notes(run: Any) -> list[str]:
    """One line per adaptive attack of run.json ``run`` (which, for which defenses, why), per
    variant escalation could not add, and per restricted attack (where it was not run)."""
    planned = run.get("planned") if isinstance(run, dict) else None
    if not isinstance(planned, dict):
        return []
    adaptive = planned.get("adaptive")
    adaptive = adaptive if isinstance(adaptive, dict) else {}
    notes = [f"adaptive: {label}: {why}" for label, why in adaptive.items()]
    skipped = planned.get("adaptive_notes")
    notes += [f"adaptive: {n}" for n in (skipped if isinstance(skipped, list) else [])]
    notes += [f"{label} runs on {', '.join(on)} only (its other cells: {NOT_RUN}, not missing)"
              for label, on in restricted_attacks(run).items() if label not in adaptive]
    if any(label in adaptive for label in restricted_attacks(run)):
        notes.append(f"an adaptive attack runs only on the defenses named (its other cells: "
                     f"{NOT_RUN}, not missing)")
    return notes


def mark_not_run(shown: Any, only: dict[str, list[str]]) -> Any:
    """A leaderboard as shown (``attack@eps`` columns, a ``defense`` column) with the cells of
    restricted attacks on other defenses reading ``NOT_RUN``."""
    for column in shown.columns:
        attack = str(column).rsplit("@", 1)[0] if "@" in str(column) else None
        if attack in only:
            other = ~shown["defense"].astype(str).isin(only[attack])
            shown.loc[other, column] = NOT_RUN
    return shown


__all__ = ["BPDA", "EOT_KEY", "GRADIENT_FAMILIES", "NOT_RUN", "Escalation", "Variant", "escalate",
           "mark_not_run", "restricted_attacks", "run_notes"]
