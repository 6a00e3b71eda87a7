"""report.html and report.md: summary first, problems before passes, no <NA>/nan, labels escaped,
every defense shown; and, when Chromium is installed, nothing scrolls horizontally at 1400 px."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil

import pandas as pd
import pytest

from robench.checks import check_meaning, summarise
from robench.leaderboard import build_leaderboard, escape_markdown
from robench.outdir import OutputFolder
from robench.report import (
    DASH,
    BoardColumns,
    board_groups,
    pack_groups,
    rank_text,
    write_report,
)
from robench.report.columns import classify

from .conftest import REPO

EVIL = "<b>evil|def</b>"               # a defense label with HTML and a pipe
ODD_ATTACK = "pgd[steps=<5>|x]"        # an attack label with brackets, < and |
DEFENSES = [EVIL, "none", "at:pgd", "gradient_masker", *[f"d{i}" for i in range(7)]]
EPS = [0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3]


def _results() -> pd.DataFrame:
    """A small suite: 11 defenses (small multiples), an FGSM sweep over 10 eps, a PGD variant
    with an odd label on a subset, and Square at one eps."""
    rows = []
    for d, defense in enumerate(DEFENSES):
        strength = 0.02 + 0.08 * d
        clean = 0.3 if defense == "gradient_masker" else 0.98 - 0.005 * d
        for attack, name, eps_list, n in (("fgsm", "fgsm", EPS, 1000),
                                          (ODD_ATTACK, "pgd", [0.1, 0.3], 500),
                                          ("square", "square", [0.3], 200)):
            for eps in eps_list:
                acc = max(0.0, clean - eps / (strength + 0.05) * (1.5 if name == "pgd" else 1))
                rows.append({
                    "suite": "tiny<suite>", "dataset": "mnist", "data_hash": "abc",
                    "model": "lenet5", "defense": defense, "defense_name": "none",
                    "defense_params": "{}", "attack": attack, "attack_name": name,
                    "attack_params": "{}", "backend": "native", "eps": eps, "seed": 0, "n": n,
                    "clean_acc": clean, "clean_acc_lo": clean - 0.01,
                    "clean_acc_hi": min(1.0, clean + 0.01), "robust_acc": acc,
                    "robust_acc_lo": max(0.0, acc - 0.02), "robust_acc_hi": min(1.0, acc + 0.02),
                    "attack_seconds": 0.5, "role": "eval"})
    return pd.DataFrame(rows)


def _checks() -> pd.DataFrame:
    rows = []
    for defense in DEFENSES:
        rows.append((defense, "robust_le_clean", "pass", "0 of 13 rows"))
        rows.append((defense, "single_step_monotone[fgsm]", "pass", "largest rise +0.00 pp"))
    rows += [("gradient_masker", "clean_accuracy", "fail", "clean accuracy 0.300 < 0.5"),
             ("at:pgd", "blackbox_not_stronger@0.3", "warn", "square 0.4 vs best pgd 0.6"),
             (EVIL, "converged[pgd]@0.3", "warn", "pgd <i>0.5</i> vs pgd_100 0.4")]
    return pd.DataFrame(rows, columns=["defense", "check", "status", "detail"])


def _future_board(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as a run with per-image outcomes writes it: rank ranges, "" for the
    unranked, per-image worst case with a Wilson interval, n and the p-value against none."""
    board = board.copy()
    ranked = board["rank"].notna() & (board["rank"].astype(str) != "")
    labels = ["1", "2–3", "2–3"] + [str(i) for i in range(4, int(ranked.sum()) + 1)]
    board["rank"] = [labels[i] if ok else "" for i, ok in enumerate(ranked)]
    worst = next(c for c in board.columns if str(c).startswith("worst@"))
    board[f"{worst}_lo"] = (board[worst] - 0.03).clip(lower=0)
    board[f"{worst}_hi"] = (board[worst] + 0.03).clip(upper=1)
    board["worst_n"] = 200
    board["worst_kind"] = "per image"
    board["p_vs_none"] = [float("nan") if d == "none" else 0.0004 * (i + 1)
                          for i, d in enumerate(board["defense"])]
    return board


@pytest.fixture(scope="module", params=["today", "future"])
def report(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(f"report_{request.param}")
    results, checks = _results(), _checks()
    board = build_leaderboard(results, summarise(checks))
    if request.param == "future":
        board = _future_board(board)
    (tmp_path / "run.log").write_text(
        "2026-01-01T00:00:00+00:00 reproduced: largest difference 0.0 pp over 3 cells\n"
        "2026-01-01T00:00:01+00:00 done in 12.5s; results in x\n")
    (tmp_path / "run.json").write_text(
        '{"git_revision": "0123456789abcdef", "git_dirty": true, "device": "cpu", '
        '"threads": 2, "versions": {"torch": "2.x"}}')
    with OutputFolder.open(tmp_path) as out:
        write_report(out, results, checks, board, source=tmp_path)
    return {"html": (tmp_path / "report.html").read_text(encoding="utf-8"),
            "md": (tmp_path / "report.md").read_text(encoding="utf-8"),
            "folder": tmp_path, "board": board}


def visible_text(page: str) -> str:
    """The page without inlined images, styles and break hints."""
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return page.replace("<wbr>", "")


def test_no_missing_value_markers(report):
    for text in (visible_text(report["html"]), report["md"]):
        assert "<NA>" not in text and "&lt;NA&gt;" not in text
        assert not re.search(r"\bnan\b", text, re.I), re.search(r".{40}\bnan\b.{40}", text,
                                                               re.I | re.S)
        assert "None" not in text


def test_summary_before_checks_before_tables(report):
    page = report["html"]
    order = [page.index(f"id='{s}'") for s in ("summary", "checks", "leaderboard", "figures",
                                                "provenance")]
    assert order == sorted(order)
    md = report["md"]
    order = [md.index(h) for h in ("## Summary", "## Checks", "## Leaderboard by attack",
                                   "## Figures", "## Provenance")]
    assert order == sorted(order)


def test_failures_then_warnings_then_collapsed_passes(report):
    page = visible_text(report["html"])
    checks = page[page.index("id='checks'"):page.index("id='leaderboard'")]
    fail = checks.index("clean accuracy 0.300")
    warns = [checks.index("square 0.4 vs best pgd 0.6"), checks.index("pgd &lt;i&gt;0.5")]
    assert fail < min(warns)
    passes = checks.index("<details>")
    assert max(warns) < passes < checks.index("largest rise +0.00 pp")
    assert "FGSM-like accuracy rises with eps" not in checks  # it passed everywhere
    assert check_meaning("clean_accuracy") in checks
    assert "FAIL ✗" in checks and "WARN !" in checks          # readable without colour
    md = report["md"]
    assert md.index("clean accuracy 0.300") < md.index("square 0.4 vs best") < md.index(
        "<details>") < md.index("largest rise +0.00 pp")


def test_every_defense_and_attack_appears_and_is_escaped(report):
    page = visible_text(report["html"])
    for defense in DEFENSES:
        assert html.escape(defense) in page
    assert EVIL not in report["html"] and "<b>evil" not in report["html"]
    assert html.escape(ODD_ATTACK) in page and ODD_ATTACK not in report["html"]
    assert "<i>0.5</i>" not in report["html"]
    assert "&lt;suite&gt;" in page and "<suite>" not in report["html"]
    md = report["md"]
    assert "&lt;b>evil\\|def&lt;/b>" in md and "<b>" not in md and "<i>" not in md
    assert "pgd\\[steps=<5>\\|x\\]" in md.replace("&lt;", "<")  # no table break, no link
    for defense in DEFENSES:
        assert escape_markdown(defense) in md


def test_summary_lines(report):
    page = visible_text(report["html"])
    summary = page[page.index("id='summary'"):page.index("id='checks'")]
    rows = re.findall(r"<tr.*?</tr>", summary, re.S)[1:]
    assert len(rows) == len(DEFENSES)
    assert "gradient_masker" in rows[-1] and "unranked: failed clean_accuracy" in rows[-1]
    assert re.search(r"<td class='num'>–</td>", rows[-1])
    plain = [re.sub(r"<[^>]+>", "", r) for r in rows]
    assert all(len(re.findall(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", r)) == 2 for r in plain)
    if report["board"]["p_vs_none"].notna().any():
        assert "&lt;0.001" in summary and "2–3" in summary


def test_provenance_footer(report):
    footer = visible_text(report["html"]).split("id='provenance'")[1]
    for text in ("0123456789ab", "dirty", "torch 2.x", "cpu, 2 threads",
                 "12.5 s", "reproduced: largest difference 0.0 pp", "square: 200 images"):
        assert text in footer


def test_leaderboard_blocks_right_aligned_one_decimal(report):
    page = report["html"]
    board = page[page.index("id='leaderboard'"):page.index("id='figures'")]
    cells = re.findall(r"<td class='num[^']*'>([^<]*)</td>", board)
    numbers = [c for c in cells if c not in (DASH,) and not re.fullmatch(r"\d+(–\d+)?", c)]
    assert numbers and all(re.fullmatch(r"\d+\.\d|\[\d+\.\d, \d+\.\d\]|&lt;0\.001|0\.\d{3}",
                                        c) for c in numbers), set(numbers)


def test_figures_written_and_inlined(report):
    folder = report["folder"]
    for name in ("worst_case", "curve_fgsm", "curves_by_defense"):
        assert (folder / f"{name}.png").stat().st_size > 1000
        assert (folder / f"{name}.svg").exists()
    assert report["html"].count("data:image/png;base64,") == len(
        list(folder.glob("*.png")))


def test_committed_suite_regenerates(tmp_path):
    """The finalize path on a copy of a committed results folder (its manifest included)."""
    from robench.finalize import finalize

    source = REPO / "results" / "unlearning_methods_fashion"
    folder = tmp_path / "suite"
    shutil.copytree(source, folder)
    # one defense's gradients made to look masked: its check fails and it must be unranked
    diagnostics = json.loads((folder / "diagnostics.json").read_text())
    diagnostics["unlearning:ssd"]["zero_grad_fraction"] = 1.0
    with OutputFolder.open(folder) as out:
        # through the folder, so its manifest records the edit (a hand edit is refused)
        out.write_text("diagnostics.json", json.dumps(diagnostics))
        finalize(folder, out)
    page = visible_text((folder / "report.html").read_text(encoding="utf-8"))
    assert "<NA>" not in page and not re.search(r"\bnan\b", page, re.I)
    assert "unranked: failed input_gradients" in page
    assert page.index("FAIL ✗") < page.index("<details>")
    for defense in pd.read_csv(folder / "results.csv")["defense"].unique():
        assert html.escape(defense) in page
    assert not list(folder.glob("curve_*_-*.png"))  # no stale figures left behind


@pytest.mark.parametrize(("value", "text"), [
    (1, "1"), (3.0, "3"), ("4–12", "4–12"), ("", DASH), (pd.NA, DASH), (float("nan"), DASH),
    (None, DASH)])
def test_rank_text(value, text):
    assert rank_text(value) == text


def test_tables_are_packed_within_the_budget():
    board = _future_board(build_leaderboard(_results(), summarise(_checks())))
    groups = board_groups(board, _results(), BoardColumns.of(board))
    tables = pack_groups(groups, fixed_px=200, budget_px=700)
    assert [c.key for t in tables for g in t for c in g.columns] == [
        c.key for g in groups for c in g.columns]          # nothing lost, order kept
    assert all(sum(g.width for g in t) <= 500 for t in tables)
    assert any(g.title.endswith("(cont.)") for t in tables for g in t)


SCRIPT = "<script>alert('x\"y')</script>"   # a defense label with a tag and both quotes
QUOTED_ATTACK = "fgsm'<i>"                    # an attack label in a figure caption (alt='…')


def test_a_script_label_with_quotes_is_escaped(tmp_path):
    """Labels reach report.html escaped as ``html.escape`` writes them (&lt;, &#x27;, &quot;),
    in text and in attributes, never as markup."""
    results = _results()
    results = results[results["defense"].isin(["none", "d0"])].replace(
        {"defense": {"d0": SCRIPT}, "attack": {"fgsm": QUOTED_ATTACK}})
    checks = _checks()
    checks = checks[checks["defense"].isin(["none", "d0"])].replace({"defense": {"d0": SCRIPT}})
    board = build_leaderboard(results, summarise(checks))
    with OutputFolder.open(tmp_path) as out:
        write_report(out, results, checks, board, source=tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "alert('" not in page and "<i>'" not in page
    text = visible_text(page)
    assert text.count(html.escape(SCRIPT)) >= 3                 # summary, checks, leaderboard
    assert "alt='fgsm&#x27;&lt;i&gt;: accuracy vs eps" in page   # the attribute stays closed


@pytest.mark.parametrize(("name", "kind", "attack", "eps_text"), [
    ("rank", "fixed", "", ""), ("worst_n", "fixed", "", ""), ("p_vs_none", "fixed", "", ""),
    ("fgsm@0.1", "attack", "fgsm", "0.1"), ("a@b@0.3", "attack", "a@b", "0.3"),
    ("pgd[steps=<5>|x]@0.3", "attack", "pgd[steps=<5>|x]", "0.3"),
    ("fgsm@abc", "other", "", ""), ("fgsm@inf", "other", "", ""), ("fgsm_mean", "other", "", ""),
    ("worst", "worst", "", ""), ("worst_lo", "worst_lo", "", ""), ("worst@0.3", "worst", "", "0.3"),
    ("worst@0.3_lo", "worst_lo", "", "0.3"), ("worst@0.3_hi", "worst_hi", "", "0.3"),
    ("worst@_lo", "worst", "", "_lo"), ("worst@", "other", "", ""),
    ("verified@0.3", "verified", "", ""), ("notes", "other", "", "")])
def test_column_kinds(name, kind, attack, eps_text):
    column = classify(name)
    assert (column.kind, column.attack, column.eps_text) == (kind, attack, eps_text)


def test_board_columns_read_once():
    board = _future_board(build_leaderboard(_results(), summarise(_checks())))
    columns = BoardColumns.of(board)
    fgsm = columns.attacks["fgsm"]
    assert [e for e, _ in fgsm.eps] == [f"{e:g}" for e in EPS] and fgsm.mean == "fgsm_mean"
    assert columns.columns["fgsm_mean"].kind == "attack_mean"
    assert list(columns.attacks) == ["fgsm", ODD_ATTACK, "square"]
    assert columns.worst.threat == "0.3" and columns.worst.lo == {"0.3": "worst@0.3_lo"}
    assert columns.worst_kind == "per image" and "p_vs_none" in columns


def _screenshot_module():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", REPO / "benchmarks" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_no_horizontal_scrolling_at_1400px_in_chromium(report, tmp_path):
    shots = _screenshot_module()
    if shots.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    page = report["folder"] / "report.html"
    layout = shots.measure(page, width=1400)
    assert layout["scrollWidth"] <= 1400
    assert shots.overflows(layout) == []
    png = shots.screenshot(page, tmp_path / "report.png", width=1400,
                           height=layout["scrollHeight"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_browser_check_sees_overflow(tmp_path):
    shots = _screenshot_module()
    if shots.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    page = tmp_path / "wide.html"
    page.write_text("<!doctype html><html><body><table><tr><td style='white-space:nowrap'>"
                    + "wide " * 400 + "</td></tr></table></body></html>")
    layout = shots.measure(page, width=1400)
    assert layout["scrollWidth"] > 1400 and shots.overflows(layout)


def test_several_seeds_summary_clean_interval_warnings_once_and_holm_p(tmp_path):
    """With several seeds the summary's clean interval is the mean's (it holds the mean shown,
    not one seed's Wilson interval), a check warned in every seed is named once, and the p
    column is the Holm-adjusted one that decides the ranks."""
    base = _results()
    results = pd.concat([base.assign(seed=0),
                         base.assign(seed=1, clean_acc=base["clean_acc"] - 0.2,
                                     clean_acc_lo=base["clean_acc_lo"] - 0.2,
                                     clean_acc_hi=base["clean_acc_hi"] - 0.2,
                                     robust_acc=(base["robust_acc"] - 0.2).clip(lower=0))],
                        ignore_index=True)
    checks = _checks()
    checks = pd.concat([checks, checks[checks["status"] == "warn"]], ignore_index=True)
    board = _future_board(build_leaderboard(results, summarise(checks)))
    board["p_vs_none_holm"] = (board["p_vs_none"] * 5).clip(upper=1)
    with OutputFolder.open(tmp_path) as out:
        write_report(out, results, checks, board, source=tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if line.startswith("|") and "| at:pgd |" in line)
    clean, lo, hi = map(float, re.search(r"\| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|", row).groups())
    assert lo <= clean <= hi and hi - lo > 20  # the spread between the seeds (20 pp) is in it
    assert row.count("blackbox_not_stronger@0.3") == 1
    assert "| p vs none (Holm) |" in md
    holm = board.set_index("defense").loc["at:pgd", "p_vs_none_holm"]
    assert f"| {holm:.3f} |" in row
