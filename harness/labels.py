"""Labels of a suite's entries: the one name of each defense and attack in every table.

An explicit ``label`` wins; an unlabelled plugin listed once is named by its plugin name, and
one listed several times by the settings the user wrote that tell its entries apart
(``unlearning[method=ssd]``). Identical entries, colliding labels, overlong automatic labels
and automatic labels that spell a generated column (``robench.column_names``) or hold hidden
characters are ``UserError``s naming the entry; explicit labels were checked by the suite
schema (``robench.config``).
"""

from __future__ import annotations

import json
from typing import Any

from robench.config import hidden_or_reserved
from robench.errors import UserError

MAX_LABEL = 80


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, separators=(",", ":"))


def automatic_labels(name: str, raw: list[dict[str, Any]],
                     always: list[dict[str, Any]] | None = None) -> list[str]:
    """Labels for unlabelled entries of one plugin: the plugin name plus the settings the user
    wrote that tell its entries apart (none when it is listed once), plus ``always[i]``: the
    settings the plugin wants in every label (``Attack.label_params``, e.g. a reduced
    variant's ``version=fast``)."""
    flat = [_flat(r) for r in raw]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k, "\0"), sort_keys=True)
                                         for f in flat}) > 1] if len(raw) > 1 else []
    labels = []
    for i, f in enumerate(flat):
        pairs = {k: f[k] for k in differing if k in f}
        pairs.update((always or [{}] * len(raw))[i])
        shown = ",".join(f"{k}={_shown(v)}" for k, v in sorted(pairs.items()))
        labels.append(f"{name}[{shown}]" if shown else name)
    return labels


def unique_labels(entries: list[Any], raws: list[dict[str, Any]], identities: list[str],
                  section: str, source: str, always: list[dict[str, Any]] | None = None
                  ) -> list[str]:
    """Explicit or automatic labels; identical entries and colliding labels are errors."""
    first: dict[str, int] = {}
    for i, identity in enumerate(identities):
        if identity in first:
            hint = "merge their eps or give one a `label:`" if section == "attacks" else \
                "remove one"
            raise UserError(f"same plugin and settings as {section}[{first[identity]}]; {hint}",
                            where=f"{source}: {section}[{i}]")
        first[identity] = i
    labels: list[str] = [entry.label for entry in entries]
    unlabelled: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        if entry.label is None:
            unlabelled.setdefault(entry.name, []).append(i)
    for name, indices in unlabelled.items():
        forced = [(always or [{}] * len(entries))[i] for i in indices]
        for i, label in zip(indices, automatic_labels(name, [raws[i] for i in indices], forced),
                            strict=True):
            labels[i] = label
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        where = f"{source}: {section}[{i}]"
        if label in seen:
            raise UserError(f"label {label!r} is also the label of {section}[{seen[label]}]; "
                            "give one of them a distinct `label:`", where=where)
        if len(label) > MAX_LABEL:
            raise UserError(f"automatic label is longer than {MAX_LABEL} characters; "
                            "give this entry a `label:`", where=where)
        problem = hidden_or_reserved(label) if entries[i].label is None else None
        if problem is not None:  # a plugin or params value named like a generated column
            raise UserError(f"automatic label {label!r} {problem}; give this entry a `label:`",
                            where=where)
        seen[label] = i
    return labels
