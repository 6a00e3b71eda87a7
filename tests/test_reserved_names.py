"""Labels and keys that would be read as something else are refused when the suite is loaded:
labels that collide with a column the leaderboard or report generates (``verified@0.1`` from
an attack labelled ``verified``), labels with invisible or line-breaking characters (a bidi
override shows a label as another), and merge keys that make YAML drop a value silently. Each
case: the real CLI, exit code 2, one line naming the file and key, nothing written."""

from __future__ import annotations

import pytest
import yaml

from robench.column_names import RESERVED_LABELS, reserved_label_reason
from robench.results import RESULT_COLUMNS

GOOD = {
    "name": "names",
    "device": "cpu",
    "data": {"dataset": "mnist", "eval_limit": 50},
    "train": {"epochs": 0},
    "defenses": [{"name": "none"}],
    "attacks": [{"name": "fgsm", "eps": [0.1]}, {"name": "pgd", "eps": [0.1],
                                                 "params": {"steps": 2}}],
}


def with_label(section: str, index: int, label: str, extra: list | None = None) -> str:
    """GOOD with ``label`` (YAML double-quoted text: ``\\N`` is NEL, ``\\L`` U+2028, ``\\P``
    U+2029; written raw, YAML itself folds those line breaks into spaces) on one entry."""
    suite = yaml.safe_load(yaml.safe_dump(GOOD))
    suite[section].extend(extra or [])
    suite[section][index]["label"] = "LABEL"
    return yaml.safe_dump(suite).replace("LABEL", f'"{label}"')


IBP = [{"name": "ibp", "eps": [0.1]}]
LABEL_CASES = [
    # id, suite text, key path named
    ("verified_with_ibp", with_label("attacks", 0, "verified", IBP), "attacks[0].label"),
    ("verified_without_ibp", with_label("attacks", 0, "verified"), "attacks[0].label"),
    ("verified_prefix", with_label("attacks", 1, "verified_pgd", IBP), "attacks[1].label"),
    ("worst", with_label("attacks", 1, "worst"), "attacks[1].label"),
    ("worst_lo", with_label("attacks", 1, "worst_lo"), "attacks[1].label"),
    ("clean_acc", with_label("attacks", 0, "clean_acc"), "attacks[0].label"),
    ("p_vs_none", with_label("attacks", 0, "p_vs_none"), "attacks[0].label"),
    ("result_column_robust_acc", with_label("attacks", 0, "robust_acc"), "attacks[0].label"),
    ("upper_case_verified", with_label("attacks", 0, "Verified"), "attacks[0].label"),
    ("defense_verified", with_label("defenses", 0, "verified"), "defenses[0].label"),
    ("defense_worst_n", with_label("defenses", 0, "worst_n"), "defenses[0].label"),
    ("defense_rlo", with_label("defenses", 0, "\\u202Eenon"), "defenses[0].label"),
    ("attack_line_separator", with_label("attacks", 1, "pgd\\Lx"), "attacks[1].label"),
    ("attack_paragraph_separator", with_label("attacks", 1, "pgd\\Px"), "attacks[1].label"),
    ("attack_nel", with_label("attacks", 0, "fgsm\\Nx"), "attacks[0].label"),
    ("attack_lri", with_label("attacks", 0, "\\u2066fgsm\\u2069"), "attacks[0].label"),
    ("attack_lrm", with_label("attacks", 0, "fgsm\\u200E"), "attacks[0].label"),
    ("attack_arabic_mark", with_label("attacks", 0, "fg\\u061Csm"), "attacks[0].label"),
    ("attack_zero_width_space", with_label("attacks", 0, "fg\\u200Bsm"), "attacks[0].label"),
]

BASE = """\
name: merges
device: cpu
data: {dataset: mnist, eval_limit: 50}
train: {epochs: 0}
attacks:
  - name: fgsm
    eps: [0.1]
"""
MERGE_CASES = [
    # id, suite text, fragments of the message
    ("two_merge_keys_flow", BASE + "  - name: pgd\n    eps: [0.1]\n    params: &p {steps: 2}\n"
     "  - name: pgd\n    eps: [0.2]\n    params: {<<: *p, <<: {steps: 3}}\n",
     ["line 13", "'<<' appears twice"]),
    ("two_merge_keys_block", BASE + "  - name: pgd\n    eps: [0.1]\n    params: &p {steps: 2}\n"
     "  - name: pgd\n    eps: [0.2]\n    params:\n      <<: *p\n      <<: {steps: 3}\n",
     ["line 15", "'<<' appears twice (also at line 14)"]),
    ("key_merged_from_two_mappings", BASE + "  - name: pgd\n    eps: [0.1]\n"
     "    params: &p {steps: 2}\n  - name: pgd\n    eps: [0.2]\n"
     "    params: {<<: [*p, {steps: 3}]}\n", ["'steps' is merged in from two mappings"]),
    ("key_merged_twice_nested", BASE + "  - name: pgd\n    eps: [0.1]\n"
     "    params: &p {steps: 2}\n  - name: pgd\n    eps: [0.2]\n"
     "    params: &q {<<: *p, alpha: 0.1}\n  - name: pgd\n    eps: [0.3]\n"
     "    params: {<<: [*q, *p]}\n", ["'steps' is merged in from two mappings"]),
]


def assert_refused(result, suite, out, fragments: list[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"robench: error: {suite}: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case_id,text,key", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_bad_label_refused_by_run(tmp_path, robench_cli, case_id, text, key):
    suite = tmp_path / "suite.yaml"
    suite.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    result = robench_cli("run", str(suite), "--out", str(out))
    assert_refused(result, suite, out, [f"{suite}: {key}:"])
    hidden = case_id.startswith("attack_") or case_id == "defense_rlo"
    assert ("invisible characters (U+" in result.stderr) == hidden, result.stderr
    assert ("the leaderboard" in result.stderr) != hidden, result.stderr


@pytest.mark.parametrize("case_id,text,fragments", MERGE_CASES, ids=[c[0] for c in MERGE_CASES])
def test_ambiguous_merge_refused(tmp_path, robench_cli, case_id, text, fragments):
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    out = tmp_path / "out"
    result = robench_cli("run", str(suite), "--out", str(out))
    assert_refused(result, suite, out, fragments)


def test_plan_names_the_reserved_label(tmp_path, robench_cli):
    suite = tmp_path / "suite.yaml"
    suite.write_text(with_label("attacks", 0, "verified", IBP))
    result = robench_cli("plan", str(suite), "--no-calibrate")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"robench: error: {suite}: attacks[0].label: must not start with 'verified' (the "
        "leaderboard's verified@eps columns: a verifier's certified accuracy); choose another "
        "label (got 'verified')"]


def test_merge_with_an_explicit_override_still_works(tmp_path, robench_cli):
    # YAML's defaults-and-override idiom, used by the shipped unlearning suites
    suite = tmp_path / "suite.yaml"
    suite.write_text(BASE + "  - name: pgd\n    eps: [0.1]\n    params: &p {steps: 2}\n"
                     "  - name: pgd\n    label: pgd3\n    eps: [0.1]\n"
                     "    params: {<<: *p, steps: 3}\n")
    result = robench_cli("plan", str(suite), "--no-calibrate")
    assert result.returncode == 0, result.stderr


def test_one_list_of_reserved_names():
    # every column the leaderboard, the report and results.csv generate is reserved, and the
    # generated prefixes are refused whatever follows them
    from robench.report.columns import FIXED

    assert FIXED <= RESERVED_LABELS
    assert set(RESULT_COLUMNS) <= RESERVED_LABELS
    assert {"worst", "worst_lo", "worst_hi", "verified"} <= RESERVED_LABELS
    for label in ("verified", "verified@x", "VERIFIED_pgd", "Worst", "clean_acc", "seed"):
        assert reserved_label_reason(label), label
    for label in ("pgd40", "at:fgsm", "unlearning[attack=pgd]", "worstcase_pgd", "verifier"):
        assert reserved_label_reason(label) is None, label


# Legal merges through a shared (anchored) node that itself merges and overrides: PyYAML's
# flatten rewrites that node in place when another mapping merges it, so a check reading the
# node afterwards saw its merged keys as explicit ones ("'steps' appears twice").
SHARED_MERGES = [
    ("override_in_shared_node",
     "base: &base {steps: 10, eps: 1}\na: {b: &mid {<<: *base, steps: 40}}\nc: {<<: *mid}\n"),
    ("chain_of_overrides",
     "base: &base {steps: 10, eps: 1}\nm1: &m1 {<<: *base, steps: 20}\n"
     "m2: &m2 {<<: *m1, eps: 2}\nx: {<<: *m2}\ny: {<<: *m2, steps: 30}\nz: {<<: *m1}\n"),
    ("shared_node_in_a_list",
     "base: &base {steps: 10, eps: 1}\nl: [{k: &mid {<<: *base, steps: 40}}, {<<: *mid}]\n"
     "c: {<<: [*mid], alpha: 2}\n"),
    ("shared_node_block_style",
     "base: &base\n  steps: 10\n  eps: 1\nmid: &mid\n  <<: *base\n  steps: 40\n"
     "outer:\n  inner:\n    <<: *mid\n    eps: 3\n  again:\n    <<: *mid\n"),
    ("merged_list_then_override",
     "p: &p {steps: 1}\nq: &q {eps: 2}\nr: &r {<<: [*p, *q], steps: 5}\ns: {<<: *r}\n"
     "t: {<<: [*r], eps: 7}\n"),
]


@pytest.mark.parametrize("case_id,text", SHARED_MERGES, ids=[c[0] for c in SHARED_MERGES])
def test_merging_a_node_that_merges_reads_as_yaml_does(case_id, text):
    from robench.suite_yaml import read_suite_yaml

    assert read_suite_yaml(text, "s.yaml") == yaml.safe_load(text)


@pytest.mark.parametrize("text,fragment", [
    # still refused when the shared node is flattened by another mapping first
    ("p: &p {steps: 2}\nm: &m {<<: *p, <<: {steps: 3}}\nc: {<<: *m}\n", "'<<' appears twice"),
    ("c: {<<: &m {<<: [{steps: 2}, {steps: 3}]}}\nd: {<<: *m}\n",
     "'steps' is merged in from two mappings"),
    ("m: &m {steps: 1, steps: 2}\nc: {<<: *m}\n", "'steps' appears twice"),
])
def test_ambiguous_merge_in_a_shared_node_still_refused(text, fragment):
    from robench.errors import UserError
    from robench.suite_yaml import read_suite_yaml

    with pytest.raises(UserError, match=fragment):
        read_suite_yaml(text, "s.yaml")

