"""Checks that compare attacks with each other on one defense, within one threat model.

From Carlini et al. 2019, "On Evaluating Adversarial Robustness" (arXiv 1902.06705): accuracy
monotone in eps, iterative <= single-step, unbounded attacks reach ~0 %, more iterations and
restarts change little, independent implementations agree; and from AutoAttack's flags
(Croce & Hein 2020): a black-box or transfer attack beating the white-box ones means masked
gradients. Which attack is which comes from its plugin's traits (``robench.traits``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from robench.attacks import Attack
from robench.checks.paired import TOL, Paired
from robench.checks.registry import FAIL, WARN, register
from robench.eps import eps_text
from robench.results import eps_mask
from robench.traits import plugin_of

FGSM_MONOTONE_TOL = 0.005
LARGE_EPS = 0.5       # at eps >= 0.5 any MNIST image can be turned into a uniform grey one
# at eps >= 0.5 the best an honest model can keep is what a constant (grey) image gets: the
# largest class share, 11.4 % on MNIST's test set; 15 % leaves room for sampling noise
LARGE_EPS_MAX_ACC = 0.15

SINGLE_STEP_MONOTONE = register(
    "single_step_monotone", WARN,
    "FGSM-like accuracy rises with eps: catastrophic overfitting or gradient masking")
ITERATIVE_LE_SINGLE_STEP = register(
    "iterative_le_single_step", WARN,
    "an iterative attack (PGD) leaves more accuracy than a single step: gradient masking or a "
    "misconfigured iterative attack")
ENSEMBLE_LE_ITERATIVE = register(
    "ensemble_le_iterative", WARN,
    "the ensemble (AutoAttack) is weaker than an iterative attack: a misconfigured or reduced "
    "ensemble")
BLACKBOX_NOT_STRONGER = register(
    "blackbox_not_stronger", WARN,
    "a black-box attack beats the gradient attacks: masked gradients, or a gradient attack too "
    "weak; the white-box numbers overstate robustness")
TRANSFER_NOT_STRONGER = register(
    "transfer_not_stronger", WARN,
    "examples crafted on another model beat every white-box attack on this one: masked "
    "gradients; the white-box numbers overstate robustness")
LARGE_EPS_REACHES_ZERO = register(
    "large_eps_reaches_zero", FAIL,
    "accuracy survives an eps that can turn any image grey: the defense is broken (masked "
    "gradients), not robust")
CONVERGED = register(
    "converged", WARN,
    "more steps or restarts still change accuracy: the attack has not converged, so its number "
    "is an upper bound")
# a warning beyond the plugin's tolerance; a failure when the backend must agree exactly
BACKEND_AGREE = register(
    "backend_agree", WARN,
    "an independent implementation (torchattacks, ART) disagrees with robench's own beyond "
    "tolerance: one of them is wrong")


def single_step_monotone(defense: str, native: pd.DataFrame) -> list[dict[str, Any]]:
    """A single-step attack's accuracy must not rise with eps (``native`` rows only)."""
    out = []
    for label, curve in native[native["family"] == "single_step"].groupby("attack"):
        curve = curve.sort_values("eps")
        rises = curve["robust_acc"].diff().fillna(0)
        worst = float(rises.max())
        out.append(SINGLE_STEP_MONOTONE.row(
            defense, worst > FGSM_MONOTONE_TOL,
            f"largest rise with eps {100 * worst:+.2f} pp (tolerance "
            f"{100 * FGSM_MONOTONE_TOL:.1f} pp)", on=f"[{label}]"))
    return out


def ordering(defense: str, rows: pd.DataFrame, weaker: str, stronger: str, paired: Paired
             ) -> list[dict[str, Any]]:
    """Attacks of the ``stronger`` family must not leave more accuracy than the ``weaker``
    (``iterative_le_single_step`` or ``ensemble_le_iterative``)."""
    check = {("single_step", "iterative"): ITERATIVE_LE_SINGLE_STEP,
             ("iterative", "ensemble"): ENSEMBLE_LE_ITERATIVE}[(weaker, stronger)]
    weak = rows[rows["family"] == weaker]
    strong = rows[rows["family"] == stronger]
    if weak.empty or strong.empty:
        return []
    worst, detail = 0.0, ""
    compared = 0
    for _, s in strong.iterrows():
        for _, w in weak[eps_mask(weak["eps"], s["eps"])].iterrows():
            compared += 1
            acc_s, acc_w, tol, where = paired.accuracies(s, w)
            excess = acc_s - acc_w - tol
            if excess > worst:
                worst = excess
                detail = (f"{s['attack']}@{eps_text(s['eps'])} = {acc_s:.3f} > "
                          f"{w['attack']}@{eps_text(w['eps'])} = {acc_w:.3f}{where} "
                          f"(tolerance {100 * tol:.1f} pp)")
    if not compared:
        return []
    return [check.row(defense, worst > 0, detail or f"{stronger} <= {weaker} at all {compared} "
                      "shared eps (+tolerance)")]


def blackbox(defense: str, rows: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    """A black-box attack must not break images every gradient attack leaves robust (a
    warning, as in AutoAttack's flags: masked gradients, or a gradient attack too weak)."""
    square = rows[rows["family"] == "black_box"]
    # pure gradient attacks only: an ensemble (AutoAttack) itself ends with a black-box attack
    white = rows[rows["family"].isin(["single_step", "iterative"]) & (rows["role"] != "check")]
    out = []
    for _, s in square.iterrows():
        same = white[eps_mask(white["eps"], s["eps"])]
        if same.empty:
            continue
        at = f"@{eps_text(s['eps'])}"
        per_image = _only_blackbox_breaks(paired, s, same)
        if per_image is not None:
            k, n, names = per_image
            masked = k > TOL * n
            out.append(BLACKBOX_NOT_STRONGER.row(
                defense, masked,
                f"{s['attack']} breaks {k} of {n} common images that every gradient "
                f"attack ({names}) leaves robust (tolerance {100 * TOL:.1f} % of "
                "the images)" + (" (masked gradients or a weak gradient attack?)"
                                 if masked else ""), on=at))
            continue
        best = same.loc[same["robust_acc"].idxmin()]
        acc_s, acc_best, tol, where = paired.accuracies(s, best)
        masked = acc_s < acc_best - tol
        out.append(BLACKBOX_NOT_STRONGER.row(
            defense, masked,
            f"{s['attack']} {acc_s:.3f} vs best gradient attack {best['attack']} "
            f"{acc_best:.3f}{where} (tolerance {100 * tol:.1f} pp)"
            + (" (masked gradients or a weak gradient attack?)" if masked else ""), on=at))
    return out


def _only_blackbox_breaks(paired: Paired, square: pd.Series, white: pd.DataFrame
                          ) -> tuple[int, int, str] | None:
    """(images the black-box attack breaks that every gradient attack leaves robust, common
    images, gradient attacks) from per-image outcomes; None without them."""
    s = paired.series(square)
    got = [paired.series(w) for _, w in white.iterrows()]
    others = [o for o in got if o is not None]
    if s is None or len(others) < len(got):
        return None
    common = s.index
    for o in others:
        common = common.intersection(o.index)
    if not len(common):
        return None
    survive = pd.concat([o.reindex(common) for o in others], axis=1).all(axis=1)
    broken = int((survive & ~s.reindex(common)).sum())
    return broken, len(common), ", ".join(map(str, white["attack"]))


def transfer(defense: str, rows: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    """A transfer attack (crafted on another model, never reading this one's gradients) that
    beats every white-box attack at its eps on the same images: this model's gradients are
    masked, so its white-box numbers overstate its robustness (Tramèr et al. 2018, Athalye et
    al. 2018). A warning, like ``blackbox``."""
    white = rows[rows["family"].isin(["single_step", "iterative", "ensemble"])
                 & (rows["role"] != "check")]
    out = []
    for _, t in rows[rows["family"] == "transfer"].iterrows():
        same = white[eps_mask(white["eps"], t["eps"])]
        if same.empty or not t["eps"]:
            continue
        best = same.loc[same["robust_acc"].idxmin()]
        acc_t, acc_best, tol, where = paired.accuracies(t, best)
        masked = acc_t < acc_best - tol
        out.append(TRANSFER_NOT_STRONGER.row(
            defense, masked,
            f"{t['attack']} {acc_t:.3f} vs best white-box attack {best['attack']} "
            f"{acc_best:.3f}{where} (tolerance {100 * tol:.1f} pp)"
            + (" (masked gradients: the white-box numbers overstate robustness)"
               if masked else ""), on=f"[{t['attack']}]@{eps_text(t['eps'])}"))
    return out


def large_eps(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Iterative and ensemble attacks at an L-inf eps >= ``LARGE_EPS`` must reach ~0 %."""
    big = rows[rows["family"].isin(["iterative", "ensemble"]) & (rows["eps"] >= LARGE_EPS)]
    out = []
    for _, r in big.iterrows():
        ok = float(r["robust_acc"]) <= LARGE_EPS_MAX_ACC
        out.append(LARGE_EPS_REACHES_ZERO.row(
            defense, not ok,
            f"{r['attack']} accuracy {r['robust_acc']:.3f} at eps {eps_text(r['eps'])} "
            f"(must be <= {LARGE_EPS_MAX_ACC:.2f}; a defense that survives this is "
            "broken, not robust)", on=f"@{eps_text(r['eps'])}"))
    return out


def stability(defense: str, iterative: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    """More steps / restarts should change little: variants of one iterative attack plugin at
    equal eps, compared by the plugin's ``budget`` trait."""
    out = []
    for (name, eps), same in iterative.groupby(["attack_name", "eps"]):
        if same["attack"].nunique() < 2:
            continue
        plugin = plugin_of(str(name))
        budget = same["attack_params"].map(lambda text, plugin=plugin: _budget(plugin, text))
        if budget.isna().any():
            continue
        weakest, strongest = same.loc[budget.idxmin()], same.loc[budget.idxmax()]
        acc_weak, acc_strong, tol, where = paired.accuracies(weakest, strongest)
        tol += TOL  # two random attacks: their randomness adds up
        change = acc_weak - acc_strong
        out.append(CONVERGED.row(
            defense, abs(change) > tol,
            f"{weakest['attack']} {acc_weak:.3f} vs {strongest['attack']} "
            f"{acc_strong:.3f}{where} (tolerance {100 * tol:.1f} pp)",
            # named by the weaker attack's label: the column that is an upper bound when it
            # warns (``pgd`` for PGD-40 vs pgd_100x3; ``bpda[of=pgd]`` for its BPDA variants)
            on=f"[{weakest['attack']}]@{eps_text(eps)}"))
    return out


def _budget(plugin: type[Attack], params_json: Any) -> float:
    try:
        return float(plugin.budget(plugin.Params.model_validate_json(str(params_json))))
    except ValueError:  # pydantic's ValidationError is a ValueError: not this plugin's params
        return float("nan")


def backends(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """A reference implementation must agree with robench's own within the plugin's
    ``backend_tolerance`` (0: exactly, else a failed check)."""
    out = []
    for name, same in rows.groupby("attack_name", sort=False):
        plugin = plugin_of(str(name))
        if plugin is None or same["backend"].nunique() < 2 or "native" not in set(
                same["backend"]):
            continue
        for backend in sorted(set(same["backend"]) - {"native"}):
            if backend not in plugin.backend_tolerance:
                continue
            tol = plugin.backend_tolerance[backend]
            exact = tol == 0
            worst = 0.0
            for _, group in same.groupby("eps"):
                a = group[group["backend"] == "native"]["robust_acc"]
                b = group[group["backend"] == backend]["robust_acc"]
                if len(a) and len(b):
                    worst = max(worst, abs(float(a.iloc[0]) - float(b.iloc[0])))
            out.append(BACKEND_AGREE.row(
                defense, worst > tol + 1e-12,
                f"largest |native - {backend}| {100 * worst:.2f} pp "
                f"(tolerance {100 * tol:.1f} pp)", on=f"[{name}:{backend}]",
                severity=FAIL if exact else None))
    return out
