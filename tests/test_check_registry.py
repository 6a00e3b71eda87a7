"""The registry of sanity checks: every check robench emits is registered with its severity and
meaning, names are unique, and one status order serves the checks and the report."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest

from robench.checks import (
    CHECKS,
    FAIL,
    PASS,
    STATUSES,
    WARN,
    Check,
    check_meaning,
    complete_checks,
    family_of,
    run_checks,
    summarise,
    worst,
    worst_first,
)
from robench.checks.registry import register
from robench.report import problem_rows

from .conftest import REPO

#: the only findings whose status differs from their check's severity
OTHER_SEVERITY = {("backend_agree", FAIL),     # a backend that must agree exactly
                  ("input_gradients", WARN)}   # gradients not measured


def _row(attack, name, eps, acc, **extra):
    params = extra.pop("params", {})
    return {"defense": "d", "attack": attack, "attack_name": name, "eps": eps, "robust_acc": acc,
            "clean_acc": 0.4, "n": 100, "backend": "native", "role": "eval",
            "attack_params": json.dumps(params), **extra}


def _everything() -> pd.DataFrame:
    """Every check's findings: a near-chance model whose attacks contradict each other, run
    once with per-image outcomes and once with diagnostics that flag its outputs."""
    table = pd.DataFrame([
        _row("fgsm", "fgsm", 0.0, 0.4), _row("fgsm", "fgsm", 0.1, 0.2),
        _row("fgsm", "fgsm", 0.2, 0.3),                                # rises with eps
        _row("fgsm", "fgsm", 0.1, 0.25, backend="torchattacks"),
        _row("pgd", "pgd", 0.1, 0.35, params={"steps": 10}),
        _row("pgd[steps=100]", "pgd", 0.1, 0.1, params={"steps": 100}),
        _row("pgd[norm=l2]", "pgd", 1.0, 0.3, params={"norm": "l2", "alpha": 0.1}),
        _row("pgd[norm=l2,steps=100]", "pgd", 1.0, 0.1, params={"norm": "l2", "alpha": 0.1,
                                                               "steps": 100}),
        _row("autoattack", "autoattack", 0.1, 0.38, params={"version": "fast"}),
        _row("square", "square", 0.1, 0.05),
        _row("transfer", "transfer", 0.1, 0.01),
        _row("pgd_big", "pgd", 0.5, 0.3, role="check"),
        _row("ibp", "ibp", 0.1, 0.2, role="bound"),
    ])
    diagnostics = {"d": {"zero_grad_fraction": 0.5, "nonfinite_grad_fraction": 0.0,
                         "random_output": 1.0, "softmax_output": 1.0}}
    outcomes = pd.DataFrame({"defense": "d", "attack": "pgd", "eps": 0.1, "seed": 0,
                             "image": np.arange(100), "clean_correct": True,
                             "adv_correct": np.arange(100) < 35})
    # and a planned cell without its row (``complete``, given the run's plan)
    incomplete = pd.DataFrame(complete_checks(table, {("d", "pgd", 0.3, 0)}))
    return pd.concat([run_checks(table, diagnostics), run_checks(table, outcomes=outcomes),
                      incomplete])


def test_every_emitted_check_is_registered_and_every_registered_check_is_emitted():
    checks = _everything()
    families = set(checks["check"].map(family_of))
    assert families == set(CHECKS.names()), families ^ set(CHECKS.names())
    assert {c for c in checks["check"] if "[norm=l2]" in c}  # suffixed names too


def test_findings_have_their_checks_severity():
    for row in _everything().itertuples(index=False):
        family = family_of(row.check)
        assert row.status in STATUSES
        assert row.status in (PASS, CHECKS.get(family).severity) or (
            family, row.status) in OTHER_SEVERITY, row
    assert set(_everything()["status"]) == {PASS, WARN, FAIL}


def test_every_check_has_a_severity_and_a_meaning():
    assert len(CHECKS.names()) >= 17
    for name, check in CHECKS.items():
        assert check.name == name and check.severity in (WARN, FAIL)
        assert check.meaning.strip() and check_meaning(f"{name}[x]@0.1") == check.meaning
    assert check_meaning("not_a_robench_check") == ""


def test_the_docs_state_each_checks_severity():
    readme = (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
    table = readme[readme.index("| check (name in `checks.csv`)"):]
    table = table[:table.index("\n\n")]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`([a-z_0-9]+)", cells[0]):
            assert CHECKS.get(name).severity == cells[-1], line


def test_a_name_registered_twice_is_refused():
    before = CHECKS.get("converged")
    with pytest.raises(ValueError, match="already registered"):
        register("converged", WARN, "another meaning")
    assert CHECKS.get("converged") is before


@pytest.mark.parametrize(("severity", "meaning"), [(PASS, "fires as a pass"), (WARN, " "),
                                                   ("error", "unknown status")])
def test_a_check_needs_a_severity_and_a_meaning(severity, meaning):
    with pytest.raises(ValueError):
        Check("new_check", severity, meaning)
    assert "new_check" not in CHECKS


def test_one_status_order_for_checks_and_report():
    assert sorted(STATUSES, key=worst_first) == [FAIL, WARN, PASS]
    assert worst_first("unknown") > worst_first(PASS)
    for a, b in itertools.product(STATUSES, repeat=2):
        assert worst([a, b]) == min([a, b], key=worst_first)
    checks = pd.DataFrame({"defense": ["x", "y", "y", "z"], "check": ["c1", "c2", "c3", "c4"],
                           "status": [WARN, PASS, FAIL, WARN], "detail": ["a", "b", "c", "d"]})
    summary = summarise(checks).set_index("defense")["status"].to_dict()
    assert summary == {"x": WARN, "y": FAIL, "z": WARN}
    shown = problem_rows(checks, ["x", "y", "z"])   # the report: failures first
    assert [r["status"] for r in shown] == [FAIL, WARN, WARN]
    assert shown[0]["defense"] == "y" and shown[0]["status"] == summary["y"]


@pytest.mark.parametrize("name", ["bad[name", "bad@0.3", " padded", "Upper", "dash-ed", ""])
def test_a_check_name_is_one_family_of_checks_csv(name):
    """A name the report could not map back to its meaning is refused."""
    with pytest.raises(ValueError, match="lower-case"):
        Check(name, WARN, "a meaning")


@pytest.mark.parametrize("on", ["-v2", "x", " [pgd]"])
def test_a_suffix_keeps_the_family(on):
    with pytest.raises(ValueError, match="suffix"):
        CHECKS.get("converged").row("none", True, "detail", on=on)
    row = CHECKS.get("converged").row("none", True, "detail", on="[pgd]@0.3")
    assert check_meaning(row["check"]) == CHECKS.get("converged").meaning
