"""The documentation against the code: the names the plugin guides tell you to use exist on the
real classes, every relative link leads to a file, the documented checks and result columns are
the ones robench emits, and the README stays a short page for users (CI runs its test
command)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from robench.attacks import Attack
from robench.attacks import base as attack_base
from robench.checks import CHECKS
from robench.defenses import DefenseContext
from robench.results import RESULT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def prose(text: str) -> str:
    """The markdown without its fenced code blocks."""
    return FENCE.sub("", text)


def table_after(text: str, header: str) -> list[str]:
    """The body rows of the markdown table whose header row starts with ``header``."""
    start = text.index(header)
    rows = text[start:].split("\n\n")[0].splitlines()
    return [row for row in rows[2:] if row.startswith("|")]


def first_cell_names(rows: list[str]) -> list[str]:
    """Every backticked name in the first column of ``rows``, without call arguments."""
    names = []
    for row in rows:
        for code in re.findall(r"`([^`]+)`", row.split("|")[1]):
            names.append(code.split("(")[0].strip())
    return names


# -- the defense guide ---------------------------------------------------------------------

def context_names(doc: str) -> set[str]:
    """Every ``ctx.<name>`` in the guide and every name in its DefenseContext field table."""
    names = set(re.findall(r"\bctx\.([A-Za-z_]\w*)", doc))
    names |= set(first_cell_names(table_after(doc, "| field | type | meaning |")))
    return names


def missing_on_context(names: set[str]) -> set[str]:
    fields = {f.name for f in dataclasses.fields(DefenseContext)}
    return {n for n in names if n not in fields and not callable(getattr(DefenseContext, n, None))}


def test_defense_guide_names_only_real_context_fields():
    names = context_names(text_of(DOCS / "adding_a_defense.md"))
    assert {"model", "train", "validation", "seed", "log_metric", "metrics"} <= names
    assert not missing_on_context(names), missing_on_context(names)


def test_a_context_field_the_class_lacks_is_caught():
    doc = text_of(DOCS / "adding_a_defense.md")
    assert missing_on_context(context_names(doc + "\nMonitor on `ctx.test`.\n")) == {"test"}
    in_table = doc.replace("| `validation` | `Split` |", "| `test` | `Split` |")
    assert in_table != doc and missing_on_context(context_names(in_table)) == {"test"}


# -- the attack guide ----------------------------------------------------------------------

def attack_names(doc: str) -> tuple[set[str], set[str]]:
    """Names the guide gives the Attack base (``Attack.x``, ``self.x``, the piece table's
    entries), and the helpers it names from ``robench.attacks.base``."""
    on_attack = set(re.findall(r"\bAttack\.([A-Za-z_]\w*)", doc))
    on_attack |= set(re.findall(r"\bself\.([A-Za-z_]\w*)", prose(doc)))
    helpers = set()
    for name in first_cell_names(table_after(doc, "| piece | what it is |")):
        name = name.removeprefix("Attack.").removeprefix("self.")
        (helpers if name in {"input_gradient", "project"} else on_attack).add(name)
    return on_attack, helpers


def missing_on_attack(on_attack: set[str], helpers: set[str]) -> set[str]:
    attack = Attack(torch.nn.Linear(2, 2))  # instance attributes (model, seed, ...) too
    missing = {n for n in on_attack if not hasattr(attack, n)}
    return missing | {n for n in helpers if not hasattr(attack_base, n)}


def test_attack_guide_names_only_real_attack_members():
    on_attack, helpers = attack_names(text_of(DOCS / "adding_an_attack.md"))
    assert {"perturb", "family", "budget", "Params", "model", "seed"} <= on_attack
    assert helpers == {"input_gradient", "project"}
    assert not missing_on_attack(on_attack, helpers), missing_on_attack(on_attack, helpers)


def test_an_attack_member_the_base_lacks_is_caught():
    doc = text_of(DOCS / "adding_an_attack.md") + "\nThe base also owns `Attack.targeted_map`.\n"
    assert missing_on_attack(*attack_names(doc)) == {"targeted_map"}


# -- links, the README, and what the reference pages list -------------------------------------

def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file(page):
    broken = []
    for target in LINK.findall(prose(text_of(page))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or a heading of the same page
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, broken


def test_a_broken_link_is_caught():
    assert LINK.findall("see [the page](docs/no_such_page.md#top)") == ["docs/no_such_page.md#top"]


def test_readme_is_short_and_starts_with_install_run_and_test():
    lines = text_of(README).splitlines()
    assert len(lines) <= 250, len(lines)
    head = "\n".join(lines[:20])
    for command in ('pip install -e ".[test]"', "robench run suites/fgsm_lenet.yaml",
                    'pytest -q -m "not slow"'):
        assert command in head, command
    # CI (.ci/run) runs the README's test command, exactly: `pytest -q` on two xdist workers
    command = "pytest -q -n 2 --dist worksteal"
    assert re.search(rf"^{command}(\s+#.*)?$", head, re.M)
    assert re.search(rf"^{command}$", text_of(REPO / ".ci" / "run"), re.M)


def test_every_documented_check_family_has_a_meaning():
    rows = table_after(text_of(DOCS / "checks.md"), "| check (name in `checks.csv`)")
    names = {name for row in rows for name in re.findall(r"`([a-z_0-9]+)", row.split("|")[1])}
    # every name robench.checks can emit is registered (tests/test_check_registry.py)
    registered = {name for name in CHECKS.names() if CHECKS.get(name).meaning}
    assert len(names) >= 12 and names <= registered, names - registered


def test_every_result_column_is_documented():
    doc = text_of(DOCS / "outputs.md")
    section = doc.split("## `results.csv` columns")[1].split("\n## ")[0]
    documented = set(first_cell_names(table_after(section, "| column | type | meaning |")))
    assert documented == set(RESULT_COLUMNS), set(RESULT_COLUMNS) ^ documented
