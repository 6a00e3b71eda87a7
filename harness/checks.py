"""Sanity checks computed after every run, one verdict per (defense, check).

Modelled on AutoAttack's automatic flags (Croce & Hein 2020, fra31/auto-attack `flags_doc.md`:
randomness, softmax output, zero gradients, black-box beating white-box; a transfer attack
beating white-box ones likewise) and the checklist of Carlini et al. 2019, "On Evaluating
Adversarial Robustness" (arXiv 1902.06705): eps 0 = clean, accuracy monotone in eps,
iterative <= single-step, unbounded attacks reach ~0 %, more iterations/restarts change
little, independent implementations agree; and no attack breaks an image a verifier certified
(``bounds_hold``: attacks bound robust accuracy from above, verifiers from below).

Tolerances (fractions): accuracies of attacks on the *same* images differ only by attack
randomness, so ``TOL`` = 1 pp; when one side was evaluated on a subset of ``n`` images (``limit``)
we add two binomial standard errors, 2*sqrt(p(1-p)/n), for sampling noise.

Nothing here tests an attack's name: each row's attack plugin is looked up by ``attack_name``
and asked for its traits (``family``, ``budget``, ``backend_tolerance``; see
``robench.attacks.base``), so a third-party attack gets the checks of its family. Rows whose
plugin is not installed get only the checks that need no traits.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import torch
from torch import nn

from robench.attacks import ATTACKS, Attack
from robench.attacks.base import DEFAULT_NORM
from robench.columns import eps_mask
from robench.data import Split
from robench.eps import canonical_eps, eps_text
from robench.errors import UserError
from robench.models import eval_mode
from robench.outcomes import RobustPerImage

TOL = 0.01            # 1 pp between attacks on the same images
FGSM_MONOTONE_TOL = 0.005
LARGE_EPS = 0.5       # at eps >= 0.5 any MNIST image can be turned into a uniform grey one
# at eps >= 0.5 the best an honest model can keep is what a constant (grey) image gets: the
# largest class share, 11.4 % on MNIST's test set; 15 % leaves room for sampling noise
LARGE_EPS_MAX_ACC = 0.15
MIN_CLEAN_ACC = 0.5   # below this, robust accuracy says nothing (a constant model gets ~10 %)
GRADIENT_SAMPLE = 500
STATUS_ORDER = {"pass": 0, "warn": 1, "fail": 2}
BOUND_ROLE = "bound"  # a verifier's rows (robench.plan): a lower bound, not an attack


class Paired:
    """Accuracies of two cells compared on the same images when per-image outcomes exist.

    With outcomes, two attacks are compared on the images both evaluated (no sampling noise:
    the tolerance is ``TOL``, attack randomness only); without, on their own image sets with
    two binomial standard errors added for the smaller set (``_tol``)."""

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
        return self.robust.get((str(row["defense"]), str(row["attack"]),
                                canonical_eps(row["eps"])))

    def accuracies(self, a: pd.Series, b: pd.Series) -> tuple[float, float, float, str]:
        """(acc of a, acc of b, tolerance, "on N common images" or "")."""
        ka = (str(a["defense"]), str(a["attack"]), canonical_eps(a["eps"]))
        kb = (str(b["defense"]), str(b["attack"]), canonical_eps(b["eps"]))
        if ka in self.robust and kb in self.robust:
            x, y = self.robust[ka].align(self.robust[kb], join="inner")
            if len(x):
                return float(x.mean()), float(y.mean()), TOL, f" on {len(x)} common images"
        return float(a["robust_acc"]), float(b["robust_acc"]), _tol(a, b), ""


def _tol(a: pd.Series, b: pd.Series) -> float:
    """TOL plus sampling noise when the two rows were measured on different numbers of images."""
    if int(a["n"]) == int(b["n"]):
        return TOL
    small = a if a["n"] < b["n"] else b
    p = float(small["robust_acc"])
    return TOL + 2 * math.sqrt(max(p * (1 - p), 1e-4) / float(small["n"]))


#: what ``model_diagnostics`` measures (``sample``, the number of images, is optional)
DIAGNOSTIC_KEYS = ("zero_grad_fraction", "nonfinite_grad_fraction", "random_output",
                   "softmax_output")


def model_diagnostics(model: nn.Module, data: Split) -> dict[str, float]:
    """Gradient and output statistics of a model on a small sample (AutoAttack-style flags)."""
    x = data.images[:GRADIENT_SAMPLE].detach().clone().requires_grad_(True)
    y = data.labels[:GRADIENT_SAMPLE]
    with eval_mode(model):
        with torch.enable_grad():
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            again = model(x.detach())
    per_image = grad.flatten(1)
    finite = torch.isfinite(per_image).all(1)
    zero = finite & (per_image.abs().amax(1) == 0)
    probs_like = bool(((logits >= 0) & (logits <= 1)).all()) and bool(
        torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4))
    return {
        "sample": float(x.shape[0]),
        "zero_grad_fraction": zero.float().mean().item(),
        "nonfinite_grad_fraction": (~finite).float().mean().item(),
        "random_output": float(not torch.equal(logits.detach(), again)),
        "softmax_output": float(probs_like),
    }


def _row(defense: str, check: str, status: str, detail: str) -> dict[str, Any]:
    return {"defense": defense, "check": check, "status": status, "detail": detail}


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
        params = json.loads(str(params_json))
    except ValueError:
        return DEFAULT_NORM
    if not isinstance(params, dict):
        return DEFAULT_NORM
    nested = params.get("attack_params")  # a transfer attack: its crafting attack's norm
    norm = params.get("norm", nested.get("norm") if isinstance(nested, dict) else None)
    return norm if isinstance(norm, str) else DEFAULT_NORM


def _check_defense(defense: str, rows: pd.DataFrame, diag: dict[str, float] | None,
                   paired: Paired) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    clean = float(rows.loc[rows["n"].idxmax(), "clean_acc"])  # on the most images
    out += _reduced_variants(defense, rows)

    # robench's own rows satisfy this by construction (robust = correct before and after); it
    # catches tables from elsewhere or edited by hand
    above = rows[rows["robust_acc"] > rows["clean_acc"] + 1e-12]
    out.append(_row(defense, "robust_le_clean", "fail" if len(above) else "pass",
                    f"{len(above)} of {len(rows)} rows have robust accuracy above clean accuracy "
                    "(robust means correct before and after the attack)"))
    out += _rows_match_outcomes(defense, rows, paired)
    zero_eps = rows[rows["eps"] == 0]
    if not zero_eps.empty:
        bad = zero_eps[zero_eps["robust_acc"] != zero_eps["clean_acc"]]
        out.append(_row(defense, "eps0_equals_clean", "fail" if len(bad) else "pass",
                        f"{len(bad)} of {len(zero_eps)} eps-0 rows differ from clean accuracy"))

    # attacks are compared only within one threat model (an L2 eps is not an L-inf eps); the
    # checks of a non-default norm carry it in their name
    norms = rows["norm"] if "norm" in rows else pd.Series(DEFAULT_NORM, index=rows.index)
    for norm, of_norm in rows.groupby(norms, sort=False):
        found = _compare_attacks(defense, of_norm, paired, str(norm))
        if norm != DEFAULT_NORM:
            found = [{**r, "check": r["check"] if f"norm={norm}" in r["check"]
                      else f"{r['check']}[norm={norm}]"} for r in found]
        out += found
    if diag is not None:
        out += _diagnostics(defense, diag)
    else:
        out.append(_row(defense, "input_gradients", "warn",
                        "not measured (no diagnostics for this defense in diagnostics.json): "
                        "gradient masking is not checked"))
    if clean < MIN_CLEAN_ACC:
        out.append(_row(defense, "clean_accuracy", "fail",
                        f"clean accuracy {clean:.3f} < {MIN_CLEAN_ACC}: the model is near chance, "
                        "its robust accuracy means nothing"))
    return out


def _compare_attacks(defense: str, rows: pd.DataFrame, paired: Paired,
                     norm: str) -> list[dict[str, Any]]:
    """The checks that compare attacks (and eps) of one threat model ``norm``."""
    out: list[dict[str, Any]] = []
    native = rows[rows["backend"].fillna("native") == "native"]
    for label, curve in native[native["family"] == "single_step"].groupby("attack"):
        curve = curve.sort_values("eps")
        rises = curve["robust_acc"].diff().fillna(0)
        worst = float(rises.max())
        out.append(_row(defense, f"single_step_monotone[{label}]",
                        "warn" if worst > FGSM_MONOTONE_TOL else "pass",
                        f"largest rise with eps {100 * worst:+.2f} pp (tolerance "
                        f"{100 * FGSM_MONOTONE_TOL:.1f} pp)"))

    regular = native[native["role"] != "check"]
    out += _ordering(defense, regular, "single_step", "iterative", "iterative_le_single_step",
                     paired)
    out += _ordering(defense, regular, "iterative", "ensemble", "ensemble_le_iterative", paired)
    out += _blackbox(defense, rows, paired)
    out += _transfer(defense, rows, paired)
    if norm == DEFAULT_NORM:  # LARGE_EPS is an L-inf budget
        out += _large_eps(defense, rows)
    out += _stability(defense, native[native["family"] == "iterative"], paired)
    out += _backends(defense, rows)
    out += _bounds_hold(defense, rows, paired)
    return out


def _reduced_variants(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
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
    return [_row(defense, "reduced_variant_labelled", "fail",
                 "; ".join(hidden) + ": a reduced variant feeds the worst case under the name "
                 "of the standard attack")]


def _ordering(defense: str, rows: pd.DataFrame, weaker: str, stronger: str, name: str,
              paired: Paired) -> list[dict[str, Any]]:
    """Attacks of the ``stronger`` family must not leave more accuracy than the ``weaker``."""
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
    return [_row(defense, name, "warn" if worst > 0 else "pass",
                 detail or f"{stronger} <= {weaker} at all {compared} shared eps (+tolerance)")]


def _blackbox(defense: str, rows: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    square = rows[rows["family"] == "black_box"]
    # pure gradient attacks only: an ensemble (AutoAttack) itself ends with a black-box attack
    white = rows[rows["family"].isin(["single_step", "iterative"]) & (rows["role"] != "check")]
    out = []
    for _, s in square.iterrows():
        same = white[eps_mask(white["eps"], s["eps"])]
        if same.empty:
            continue
        per_image = _only_blackbox_breaks(paired, s, same)
        if per_image is not None:
            k, n, names = per_image
            masked = k > TOL * n
            out.append(_row(defense, f"blackbox_not_stronger@{eps_text(s['eps'])}",
                            "warn" if masked else "pass",
                            f"{s['attack']} breaks {k} of {n} common images that every gradient "
                            f"attack ({names}) leaves robust (tolerance {100 * TOL:.1f} % of "
                            "the images)" + (" (masked gradients or a weak gradient attack?)"
                                             if masked else "")))
            continue
        best = same.loc[same["robust_acc"].idxmin()]
        acc_s, acc_best, tol, where = paired.accuracies(s, best)
        masked = acc_s < acc_best - tol
        # a warning, as in AutoAttack's flags: masked gradients, or a gradient attack too weak
        out.append(_row(defense, f"blackbox_not_stronger@{eps_text(s['eps'])}",
                        "warn" if masked else "pass",
                        f"{s['attack']} {acc_s:.3f} vs best gradient attack {best['attack']} "
                        f"{acc_best:.3f}{where} (tolerance {100 * tol:.1f} pp)"
                        + (" (masked gradients or a weak gradient attack?)" if masked else "")))
    return out


def _rows_match_outcomes(defense: str, rows: pd.DataFrame, paired: Paired
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
    return [_row(defense, "rows_match_outcomes", "fail" if wrong else "pass",
                 f"{len(wrong)} of {checked} rows differ from their per-image outcomes"
                 + (f" ({', '.join(wrong[:4])})" if wrong else ""))]


def _only_blackbox_breaks(paired: Paired, square: pd.Series, white: pd.DataFrame
                          ) -> tuple[int, int, str] | None:
    """(images the black-box attack breaks that every gradient attack leaves robust, common
    images, gradient attacks) from per-image outcomes; None without them."""
    s = paired.series(square)
    others = [paired.series(w) for _, w in white.iterrows()]
    if s is None or any(o is None for o in others):
        return None
    common = s.index
    for o in others:
        common = common.intersection(o.index)
    if not len(common):
        return None
    survive = pd.concat([o.reindex(common) for o in others], axis=1).all(axis=1)
    broken = int((survive & ~s.reindex(common)).sum())
    return broken, len(common), ", ".join(map(str, white["attack"]))


def _transfer(defense: str, rows: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    """A transfer attack (crafted on another model, never reading this one's gradients) that
    beats every white-box attack at its eps on the same images: this model's gradients are
    masked, so its white-box numbers overstate its robustness (Tramèr et al. 2018, Athalye et
    al. 2018). A warning, like ``_blackbox``."""
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
        out.append(_row(defense, f"transfer_not_stronger[{t['attack']}]@{eps_text(t['eps'])}",
                        "warn" if masked else "pass",
                        f"{t['attack']} {acc_t:.3f} vs best white-box attack {best['attack']} "
                        f"{acc_best:.3f}{where} (tolerance {100 * tol:.1f} pp)"
                        + (" (masked gradients: the white-box numbers overstate robustness)"
                           if masked else "")))
    return out


def _large_eps(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    big = rows[rows["family"].isin(["iterative", "ensemble"]) & (rows["eps"] >= LARGE_EPS)]
    out = []
    for _, r in big.iterrows():
        ok = float(r["robust_acc"]) <= LARGE_EPS_MAX_ACC
        out.append(_row(defense, f"large_eps_reaches_zero@{eps_text(r['eps'])}",
                        "pass" if ok else "fail",
                        f"{r['attack']} accuracy {r['robust_acc']:.3f} at eps {eps_text(r['eps'])} "
                        f"(must be <= {LARGE_EPS_MAX_ACC:.2f}; a defense that survives this is "
                        "broken, not robust)"))
    return out


def _stability(defense: str, iterative: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
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
        out.append(_row(defense, f"converged[{name}]@{eps_text(eps)}",
                        "warn" if abs(change) > tol else "pass",
                        f"{weakest['attack']} {acc_weak:.3f} vs {strongest['attack']} "
                        f"{acc_strong:.3f}{where} (tolerance {100 * tol:.1f} pp)"))
    return out


def _budget(plugin: type[Attack], params_json: Any) -> float:
    try:
        return float(plugin.budget(plugin.Params.model_validate_json(str(params_json))))
    except ValueError:  # pydantic's ValidationError is a ValueError: not this plugin's params
        return float("nan")


def _backends(defense: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
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
            status = "pass" if worst <= tol + 1e-12 else ("fail" if exact else "warn")
            out.append(_row(defense, f"backend_agree[{name}:{backend}]", status,
                            f"largest |native - {backend}| {100 * worst:.2f} pp "
                            f"(tolerance {100 * tol:.1f} pp)"))
    return out


def _bounds_hold(defense: str, rows: pd.DataFrame, paired: Paired) -> list[dict[str, Any]]:
    """The tie between proofs and attacks: no attack may break an image a verifier certified.

    A verifier's accuracy is a lower bound and an attack's an upper bound on the true robust
    accuracy, so on the same images every attack at the same eps (sanity-check attacks too)
    must leave every certified image correct. With per-image outcomes a single certified image
    that an attack breaks fails the check (no tolerance: it means a bug in the attack, the
    verifier or the model plumbing); without, an attack's accuracy below the verified one fails
    (on different image subsets, beyond two standard errors of sampling noise)."""
    is_bound = (rows["family"] == "verifier") | (rows["role"] == BOUND_ROLE)
    bounds, attacks = rows[is_bound], rows[~is_bound]
    out = []
    for label, cells in bounds.groupby("attack", sort=False):
        problems, compared = [], 0
        for _, b in cells.iterrows():
            for _, a in attacks[eps_mask(attacks["eps"], b["eps"])].iterrows():
                compared += 1
                problem = _beats_bound(a, b, paired)
                if problem:
                    problems.append(problem)
        if not compared:
            continue
        out.append(_row(defense, f"bounds_hold[{label}]", "fail" if problems else "pass",
                        "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)"
                                                   if len(problems) > 3 else "")
                        if problems else f"every attack >= verified accuracy in all "
                        f"{compared} comparisons at shared eps"))
    return out


def _beats_bound(attack: pd.Series, bound: pd.Series, paired: Paired) -> str:
    """Why ``attack`` contradicts the verifier row ``bound`` ("" when it does not)."""
    eps = eps_text(bound["eps"])
    ka = (str(attack["defense"]), str(attack["attack"]), canonical_eps(attack["eps"]))
    kb = (str(bound["defense"]), str(bound["attack"]), canonical_eps(bound["eps"]))
    if ka in paired.robust and kb in paired.robust:
        robust, certified = paired.robust[ka].align(paired.robust[kb], join="inner")
        broken = int((certified & ~robust).sum())
        if len(robust) and broken:
            return (f"{attack['attack']}@{eps} breaks {broken} of the "
                    f"{int(certified.sum())} images {bound['attack']} certified "
                    f"(on {len(robust)} common images)")
        if len(robust):
            return ""
    tol = 1e-12 if int(attack["n"]) == int(bound["n"]) else _tol(attack, bound) - TOL
    acc_a, acc_b = float(attack["robust_acc"]), float(bound["robust_acc"])
    if acc_a < acc_b - tol:
        return (f"{attack['attack']}@{eps} = {acc_a:.3f} < verified {bound['attack']}@{eps} "
                f"= {acc_b:.3f} (tolerance {100 * tol:.1f} pp)")
    return ""


DIAGNOSTIC_CHECKS = ("input_gradients", "deterministic_output", "logit_output")


def _diagnostics(defense: str, diag: dict[str, float]) -> list[dict[str, Any]]:
    zero, nonfinite = diag["zero_grad_fraction"], diag["nonfinite_grad_fraction"]
    sample = int(diag.get("sample", GRADIENT_SAMPLE))
    healthy = math.isfinite(zero + nonfinite) and zero + nonfinite <= 0.01
    out = [_row(defense, "input_gradients", "pass" if healthy else "fail",
                f"{100 * zero:.1f}% of {sample} images have an all-zero input gradient, "
                f"{100 * nonfinite:.1f}% a non-finite one")]
    if diag["random_output"]:
        out.append(_row(defense, "deterministic_output", "warn",
                        "two forward passes differ: a randomised defense needs EOT attacks"))
    if diag["softmax_output"]:
        out.append(_row(defense, "logit_output", "warn",
                        "outputs look like probabilities: attacks on softmax outputs can vanish"))
    return out


def run_checks(results: pd.DataFrame, diagnostics: dict[str, dict[str, float]] | None = None,
               outcomes: pd.DataFrame | RobustPerImage | None = None) -> pd.DataFrame:
    """All checks for every defense in a results table (attack comparisons on the same images
    when per-image ``outcomes`` are given). With several seeds every check runs per seed (a
    seed's rows against that seed's outcomes) and names the seed in its detail."""
    diagnostics = diagnostics or {}
    rows: list[dict[str, Any]] = []
    defaults = {"backend": "native", "role": "eval"}
    results = with_traits(results.assign(**{c: results[c].fillna(v) if c in results else v
                                            for c, v in defaults.items()}))
    seeds = list(dict.fromkeys(results["seed"].astype(int))) if "seed" in results else [None]
    robust = RobustPerImage.of(outcomes)
    for seed in seeds:
        of_seed = results if seed is None else results[results["seed"] == seed]
        paired = Paired(robust, seed)
        found = []
        for defense, group in of_seed.groupby("defense", sort=False):
            # model diagnostics are measured on the first seed's models only
            diag = diagnostics.get(str(defense)) if seed == seeds[0] else None
            found += [r for r in _check_defense(str(defense), group, diag, paired)
                      if seed == seeds[0] or r["check"] not in DIAGNOSTIC_CHECKS]
        if len(seeds) > 1:
            found = [{**r, "detail": f"seed {seed}: {r['detail']}"} for r in found]
        rows += found
    return pd.DataFrame(rows, columns=["defense", "check", "status", "detail"])


def summarise(checks: pd.DataFrame) -> pd.DataFrame:
    """One status per defense (the worst of its checks) and the checks that did not pass."""
    records = []
    for defense, group in checks.groupby("defense", sort=False):
        worst = max(group["status"], key=STATUS_ORDER.__getitem__)
        # one name per check (several seeds repeat a check; checks.csv keeps each)
        reasons = list(dict.fromkeys(group[group["status"] != "pass"]["check"]))
        records.append({"defense": defense, "status": worst, "reason": "; ".join(reasons)})
    return pd.DataFrame(records, columns=["defense", "status", "reason"])
