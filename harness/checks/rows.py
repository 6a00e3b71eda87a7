"""Checks of a defense's rows on their own: each row against its clean accuracy, its per-image
outcomes and its label, and the defense's clean accuracy against chance."""

from __future__ import annotations

from typing import Any

import pandas as pd

from robench.checks.paired import Paired
from robench.checks.registry import FAIL, register
from robench.eps import eps_text
from robench.traits import plugin_of

MIN_CLEAN_ACC = 0.5   # below this, robust accuracy says nothing (a constant model gets ~10 %)
#: the eps-0 drop a randomized defense attacked with EOT may show (another draw of its vote)
RANDOM_EPS0_DROP = 0.02

ROBUST_LE_CLEAN = register(
    "robust_le_clean", FAIL,
    "robust accuracy above clean accuracy is impossible (robust = correct before and after): "
    "a bookkeeping or data bug")
ROWS_MATCH_OUTCOMES = register(
    "rows_match_outcomes", FAIL,
    "a results row disagrees with its per-image outcomes: the table was edited or mixed with "
    "another run")
EPS0_EQUALS_CLEAN = register(
    "eps0_equals_clean", FAIL,
    "eps 0 changes accuracy: the attack path alters unperturbed inputs (randomness, "
    "preprocessing or a bug)")
REDUCED_VARIANT_LABELLED = register(
    "reduced_variant_labelled", FAIL,
    "a weaker variant of a published attack feeds the worst case under the standard attack's "
    "name")
CLEAN_ACCURACY = register(
    "clean_accuracy", FAIL,
    "clean accuracy below 50 %: robust accuracy of a near-chance model means nothing")


def robust_le_clean(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """No row may have robust accuracy above clean accuracy. robench's own rows satisfy this by
    construction (robust = correct before and after); it catches tables from elsewhere or
    edited by hand."""
    above = rows[rows["robust_acc"] > rows["clean_acc"] + 1e-12]
    return [ROBUST_LE_CLEAN.row(
        defense, bool(len(above)),
        f"{len(above)} of {len(rows)} rows have robust accuracy above clean accuracy "
        "(robust means correct before and after the attack)")]


def rows_match_outcomes(defense: str, rows: pd.DataFrame, paired: Paired
                        ) -> list[dict[str, Any]]:
    """Every row with per-image outcomes must say what they say (n and robust accuracy)."""
    if not paired.available:
        return []
    checked, wrong = 0, []
    for _, row in rows.iterrows():
        checked += 1
        robust = paired.series(row)
        if robust is None:
            wrong.append(f"{row['attack']}@{eps_text(row['eps'])} (no outcomes)")
            continue
        if len(robust) != int(row["n"]) or abs(float(robust.mean()) - float(row["robust_acc"])) \
                > 1e-9:
            wrong.append(f"{row['attack']}@{eps_text(row['eps'])}")
    return [ROWS_MATCH_OUTCOMES.row(
        defense, bool(wrong), f"{len(wrong)} of {checked} rows differ from their per-image "
        "outcomes" + (f" ({', '.join(wrong[:4])})" if wrong else ""))]


def eps0_equals_clean(defense: str, rows: pd.DataFrame, random_with_eot: bool = False
                      ) -> list[dict[str, Any]]:
    """An eps-0 row (through the attack and a fresh forward pass) must equal clean accuracy.

    A deterministic verifier's eps-0 row is checked too (at eps 0 it certifies exactly the
    correctly classified images); a probabilistic one's (``Verifier.probabilistic``:
    ``smoothing``) is not: CERTIFY abstains on some correctly classified images, so its
    certified accuracy at radius 0 is below clean accuracy by definition.

    ``random_with_eot``: the defense's forward pass is random (its diagnostics) and the suite
    attacks it with EOT (``deterministic_output`` passes). Then the eps-0 pass is another draw
    of its prediction, and an image correct on the first draw can be wrong on the second by
    chance: the randomness this check exists to reveal is declared and accounted for, so a
    drop of at most ``RANDOM_EPS0_DROP`` passes, its size stated; a larger one fails (a
    prediction that flips that many correct images between two draws is not scored
    reliably by one)."""
    zero_eps = rows[rows["eps"] == 0]
    if "attack_name" in zero_eps:
        zero_eps = zero_eps[~zero_eps["attack_name"].map(_probabilistic).astype(bool)]
    if zero_eps.empty:
        return []
    bad = zero_eps[zero_eps["robust_acc"] != zero_eps["clean_acc"]]
    detail = f"{len(bad)} of {len(zero_eps)} eps-0 rows differ from clean accuracy"
    if random_with_eot and len(bad):
        drops = bad["clean_acc"] - bad["robust_acc"]
        drop = ", ".join(f"{r['attack']} {100 * d:.1f} pp"
                         for (_, r), d in zip(bad.iterrows(), drops, strict=True))
        return [EPS0_EQUALS_CLEAN.row(
            defense, bool((drops.abs() > RANDOM_EPS0_DROP).any()),
            f"{detail} ({drop}): the defense's forward pass is random and attacked with EOT, "
            f"so the eps-0 pass is another draw of its prediction (at most "
            f"{100 * RANDOM_EPS0_DROP:g} pp allowed)")]
    return [EPS0_EQUALS_CLEAN.row(defense, bool(len(bad)), detail)]


def _probabilistic(name: Any) -> bool:
    plugin = plugin_of(str(name))
    return bool(getattr(plugin, "probabilistic", False))


def reduced_variants(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """A weaker variant of a published attack (``Attack.reduced_variant``, e.g. a
    10-iteration AutoAttack) must say so in its label wherever it feeds the worst case."""
    hidden = []
    for (name, label, params), _ in rows[rows["role"] != "check"].groupby(
            ["attack_name", "attack", "attack_params"], sort=False):
        plugin = plugin_of(str(name))
        if plugin is None or not isinstance(params, str):
            continue
        try:
            marker = plugin.reduced_variant(plugin.Params.model_validate_json(params))
        except ValueError:
            continue
        if marker and marker not in str(label):
            hidden.append(f"{label} is {name} with {marker}")
    if not hidden:
        return []
    return [REDUCED_VARIANT_LABELLED.row(
        defense, True, "; ".join(hidden) + ": a reduced variant feeds the worst case under the "
        "name of the standard attack")]


def clean_accuracy(defense: str, clean: float) -> list[dict[str, Any]]:
    """A model near chance: its robust accuracy means nothing (reported only when it fires)."""
    if clean >= MIN_CLEAN_ACC:
        return []
    return [CLEAN_ACCURACY.row(
        defense, True, f"clean accuracy {clean:.3f} < {MIN_CLEAN_ACC}: the model is near chance, "
        "its robust accuracy means nothing")]
