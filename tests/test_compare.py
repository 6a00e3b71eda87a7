"""robench compare: matched cells, B - A in points, rows missing on either side, CLI errors."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from robench.cli import app
from robench.compare import cell_differences, compare_frames, compare_results
from robench.errors import UserError
from robench.leaderboard import build_leaderboard

from .conftest import result_row


def _rows(cells, n=500, seed=0):
    """Results rows from (defense, attack, eps, clean_acc, robust_acc) tuples."""
    return pd.DataFrame([result_row(d, a, e, c, r, n=n, seed=seed) for d, a, e, c, r in cells])


def _csv_with(**changes) -> str:
    """A one-row results.csv text with some fields replaced."""
    return pd.DataFrame([{**result_row("none", "fgsm", 0.1, 0.9, 0.5), **changes}]).to_csv(
        index=False)


A = _rows([
    ("none", "fgsm", 0.1, 0.98, 0.70),
    ("none", "fgsm", 0.3, 0.98, 0.05),
    ("none", "pgd", 0.3, 0.98, 0.00),
    ("at:pgd", "pgd", 0.3, 0.95, 0.60),
])
B = _rows([
    ("none", "fgsm", 0.1, 0.97, 0.72),
    ("none", "fgsm", 0.3, 0.97, 0.02),
    ("at:pgd", "pgd", 0.3, 0.96, 0.85),
    ("at:trades", "pgd", 0.3, 0.93, 0.80),
])


def test_differences_are_b_minus_a_in_points():
    result = compare_frames(A, B)
    cells = result.cells.set_index(["defense", "attack", "eps"])
    assert len(cells) == 3
    assert cells.loc[("none", "fgsm", 0.1), "diff_pp"] == pytest.approx(2.0)
    assert cells.loc[("none", "fgsm", 0.3), "diff_pp"] == pytest.approx(-3.0)
    assert cells.loc[("at:pgd", "pgd", 0.3), "diff_pp"] == pytest.approx(25.0)
    assert cells.loc[("at:pgd", "pgd", 0.3), "robust_a"] == pytest.approx(0.60)
    assert cells.loc[("at:pgd", "pgd", 0.3), "robust_b"] == pytest.approx(0.85)
    clean = result.clean.set_index("defense")
    assert clean.loc["none", "diff_pp"] == pytest.approx(-1.0)
    assert pd.isna(clean.loc["at:trades", "clean_a"])


def test_clean_accuracy_is_the_leaderboards_on_the_most_images_per_seed():
    """A subset cell reports its subset's clean accuracy: compare shows the leaderboard's
    clean accuracy (the widest cells, mean over seeds), not a mean over cells of every size."""
    side = pd.concat([
        _rows([("none", "fgsm", 0.3, 0.98, 0.05)], n=10_000, seed=0),
        _rows([("none", "autoattack", 0.3, 0.90, 0.00)], n=1000, seed=0),
        _rows([("none", "fgsm", 0.3, 0.96, 0.05)], n=10_000, seed=1),
        _rows([("none", "autoattack", 0.3, 0.80, 0.00)], n=1000, seed=1)])
    clean = compare_frames(side, side).clean.set_index("defense")
    assert clean.loc["none", "clean_a"] == pytest.approx(0.97)
    assert clean.loc["none", "clean_a"] == build_leaderboard(side).set_index(
        "defense").loc["none", "clean_acc"]


def test_clean_accuracy_takes_each_seeds_widest_rows_and_averages_their_draws():
    """A seed whose widest cell is smaller still counts; rows of equal size (a randomized
    defense's draws) are averaged, whatever their order; tables without n or seed work."""
    side = pd.concat([
        _rows([("none", "fgsm", 0.3, 0.99, 0.05)], n=10_000, seed=0),
        _rows([("none", "fgsm", 0.3, 0.60, 0.05)], n=1000, seed=1),
        _rows([("none", "pgd", 0.3, 0.70, 0.00)], n=1000, seed=1)])
    clean = compare_frames(side, side).clean.set_index("defense")
    assert clean.loc["none", "clean_a"] == pytest.approx((0.99 + 0.65) / 2)
    reordered = compare_frames(side.iloc[::-1], side).clean.set_index("defense")
    assert reordered.loc["none", "clean_a"] == clean.loc["none", "clean_a"]
    bare = side.drop(columns=["n", "seed"])
    assert compare_frames(bare, bare).clean["clean_a"].iloc[0] == pytest.approx(
        (0.99 + 0.60 + 0.70) / 3)
    assert compare_frames(side.iloc[:0], side).clean["clean_a"].isna().all()


def test_cell_differences_are_seed_by_seed():
    """A reproduction check's unit: +2 pp in seed 0 and -2 pp in seed 1 are two differing cells
    of 2 pp, not one cell whose mean did not move."""
    a = pd.concat([_rows([("none", "fgsm", 0.1, 0.9, 0.50)], seed=0),
                   _rows([("none", "fgsm", 0.1, 0.9, 0.60)], seed=1)])
    b = pd.concat([_rows([("none", "fgsm", 0.1 + 1e-12, 0.9, 0.52)], seed=0),
                   _rows([("none", "fgsm", 0.1, 0.9, 0.58)], seed=1)])
    assert compare_frames(a, b).cells["diff_pp"].iloc[0] == pytest.approx(0.0)
    cells = cell_differences(a, b)
    assert len(cells) == 2
    assert cells.set_index("seed")["diff_pp"].to_dict() == pytest.approx({0: 2.0, 1: -2.0})
    assert len(cell_differences(a.iloc[:1].drop(columns=["seed"]), b)) == 1  # no seed: seed 0


def test_rows_missing_on_either_side_are_listed():
    result = compare_frames(A, B)
    assert result.only_a.to_dict("records") == [{"defense": "none", "attack": "pgd", "eps": 0.3}]
    assert result.only_b.to_dict("records") == [
        {"defense": "at:trades", "attack": "pgd", "eps": 0.3}]


def test_eps_matched_despite_float_noise_and_seeds_averaged():
    a = _rows([("none", "fgsm", 0.1, 0.9, 0.5)], seed=5)   # no seed in common: all averaged
    b = pd.concat([_rows([("none", "fgsm", 0.1 + 1e-12, 0.9, 0.6)], seed=0),
                   _rows([("none", "fgsm", 0.1, 0.9, 0.8)], seed=1)])
    result = compare_frames(a, b)
    assert result.only_a.empty and result.only_b.empty
    assert result.cells["robust_b"].iloc[0] == pytest.approx(0.7)
    assert result.cells["diff_pp"].iloc[0] == pytest.approx(20.0)
    assert result.cells["rows_b"].iloc[0] == 2
    # shared seeds: only those are compared (seed 0 on both sides)
    shared = compare_frames(_rows([("none", "fgsm", 0.1, 0.9, 0.5)], seed=0), b)
    assert shared.cells["robust_b"].iloc[0] == pytest.approx(0.6)
    assert shared.cells["rows_b"].iloc[0] == 1


def test_markdown_from_folders_and_csvs(tmp_path):
    (tmp_path / "a").mkdir()
    A.to_csv(tmp_path / "a" / "results.csv", index=False)
    B.assign(n=1000).to_csv(tmp_path / "b.csv", index=False)
    text = compare_results(tmp_path / "a", tmp_path / "b.csv")
    assert "| at:pgd    | pgd      | 0.3   | 60.0         | 85.0         | +25.0        |" in text
    assert "## Only in A (1)\n\n- none / pgd @ eps 0.3\n" in text
    assert "## Only in B (1)\n\n- at:trades / pgd @ eps 0.3\n" in text
    assert "3 matched cell(s) were evaluated on a different number of images" in text


@pytest.mark.parametrize("content,fragment", [
    (None, "results file not found"),
    ("defense,attack\nnone,fgsm\n", "not a robench results table"),
    ("", "not a readable CSV"),
    (_csv_with(eps="high"), "column 'eps' holds values that are not numbers"),
    (_csv_with(eps="nan"), "column 'eps' holds values that are not numbers"),
    (_csv_with(robust_acc=1.5), "accuracies must be in"),
    (_csv_with(n=0), "n > 0"),
])
def test_bad_input_is_a_user_error(tmp_path, content, fragment):
    good = tmp_path / "good.csv"
    A.to_csv(good, index=False)
    bad = tmp_path / "bad.csv"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(UserError, match=fragment):
        compare_results(good, bad)


def test_cli_prints_writes_and_fails_cleanly(tmp_path):
    A.to_csv(tmp_path / "a.csv", index=False)
    B.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "sub" / "diff.md"
    runner = CliRunner()
    ok = runner.invoke(app, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                             "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "+25.0" in ok.output and out.read_text() == ok.output
    missing = runner.invoke(app, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "robench: error:" in missing.output and "results file not found" in missing.output
    assert "Traceback" not in missing.output


def test_two_defenses_of_one_run_are_compared_on_the_same_images(tmp_path):
    import numpy as np

    from robench.stats import mcnemar_exact

    n = 100
    a_ok = np.arange(n) < 60            # defense a: images 0-59 robust
    b_ok = (np.arange(n) >= 10) & (np.arange(n) < 80)   # b: 10-79 (b=10 only a, c=20 only b)
    rows, blocks = [], []
    for name, ok in (("a", a_ok), ("b", b_ok)):
        rows.append(result_row(name, "pgd", 0.3, 1.0, ok.mean(), n=n))
        blocks.append(pd.DataFrame({"defense": name, "attack": "pgd", "eps": 0.3, "seed": 0,
                                    "image": np.arange(n), "clean_correct": True,
                                    "adv_correct": ok}))
    from robench.outdir import OutputFolder

    with OutputFolder.open(tmp_path) as out:  # a run's files: read as its manifest vouches
        out.write_text("results.csv", pd.DataFrame(rows).to_csv(index=False))
        with out.temp_file("outcomes.parquet") as temp:
            pd.concat(blocks).to_parquet(temp, index=False)
    from robench.compare import compare_defenses

    text = compare_defenses(tmp_path, "a", "b")
    expected = mcnemar_exact(10, 20)
    assert f"{expected:.3f}" in text and "+10.0" in text and "| 100 " in text
    with pytest.raises(UserError, match="no defense 'c'"):
        compare_defenses(tmp_path, "a", "c")


def test_compare_adjusts_its_p_values_with_holm_over_the_rows_it_prints(tmp_path):
    """Three paired rows (b beats a by 10, 6 and 1 images): raw McNemar p 0.002, 0.031 and
    1.0; Holm over the family of 3 gives 0.006, 0.062, 1.0, so only the first row stays below
    0.05, and only it is called significant."""
    import numpy as np

    from robench.compare import compare_defenses
    from robench.outdir import OutputFolder
    from robench.stats import holm_adjust, mcnemar_exact

    n = 100
    cells = {("pgd", 0.1): 10, ("pgd", 0.3): 6, ("fgsm", 0.3): 1}  # images only b keeps
    rows, blocks = [], []
    for (attack, eps), gain in cells.items():
        for name, ok in (("a", np.arange(n) < 50), ("b", np.arange(n) < 50 + gain)):
            rows.append(result_row(name, attack, eps, 1.0, ok.mean(), n=n))
            blocks.append(pd.DataFrame({"defense": name, "attack": attack, "eps": eps,
                                        "seed": 0, "image": np.arange(n),
                                        "clean_correct": True, "adv_correct": ok}))
    with OutputFolder.open(tmp_path) as out:
        out.write_text("results.csv", pd.DataFrame(rows).to_csv(index=False))
        with out.temp_file("outcomes.parquet") as temp:
            pd.concat(blocks).to_parquet(temp, index=False)
    raw = [mcnemar_exact(0, gain) for gain in cells.values()]
    adjusted = holm_adjust(raw)
    assert adjusted == pytest.approx([3 * raw[0], 2 * raw[1], 1.0])
    text = compare_defenses(tmp_path, "a", "b")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:2 + 3]]
    assert "Holm p" in header and "McNemar p" in header
    assert [r[header.index("McNemar p")] for r in table] == [f"{p:.3f}" for p in raw]
    assert [r[header.index("Holm p")] for r in table] == [f"{p:.3f}" for p in adjusted]
    assert adjusted[0] < 0.05 <= adjusted[1] and raw[1] < 0.05
    assert "Holm" in text and "family" in text and "3 paired rows" in text
    assert "1 of 3 rows significant" in text
    frame = compare_frames(pd.DataFrame(rows[0::2]).assign(defense="x"),
                           pd.DataFrame(rows[1::2]).assign(defense="x")).cells
    assert len(frame) == 3 and frame["p_holm"].isna().all()  # no outcomes: nothing to adjust
