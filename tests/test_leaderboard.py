"""The leaderboard's per-image worst case, its interval, and ranks shared by defenses that a
paired test cannot separate, on constructed tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robench.leaderboard import build_leaderboard, to_markdown
from robench.stats import mcnemar_exact, wilson_interval

from .conftest import result_row


def cells(defense: str, per_attack: dict[str, np.ndarray], eps: float = 0.3,
          clean: np.ndarray | None = None) -> tuple[list[dict], pd.DataFrame]:
    """results.csv rows and outcomes of one defense from per-attack adv_correct vectors."""
    rows, blocks = [], []
    for attack, adv in per_attack.items():
        ok = np.ones(len(adv), bool) if clean is None else clean
        robust = ok & adv
        rows.append(result_row(defense, attack, eps, ok.mean(), robust.mean(), n=len(adv)))
        blocks.append(pd.DataFrame({"defense": defense, "attack": attack, "eps": eps, "seed": 0,
                                    "image": np.arange(len(adv)), "clean_correct": ok,
                                    "adv_correct": adv}))
    return rows, pd.concat(blocks)


def board_of(*defenses):
    rows = [r for d in defenses for r in d[0]]
    outcomes = pd.concat([d[1] for d in defenses], ignore_index=True)
    return build_leaderboard(pd.DataFrame(rows), outcomes=outcomes).set_index("defense")


def test_worst_case_is_per_image_and_below_every_attack():
    # two attacks that break different halves of the images: each leaves 50 %, together 0 %
    n = 200
    first = np.arange(n) < n // 2
    board = board_of(cells("d", {"fgsm": first, "pgd": ~first}))
    assert board.loc["d", "fgsm@0.3"] == 0.5 and board.loc["d", "pgd@0.3"] == 0.5
    assert board.loc["d", "worst@0.3"] == 0.0 < min(0.5, 0.5)
    assert board.loc["d", "worst_n"] == n and board.loc["d", "worst_kind"] == "per image"
    lo, hi = wilson_interval(0, n)
    assert board.loc["d", "worst@0.3_lo"] == lo and board.loc["d", "worst@0.3_hi"] == hi


def test_worst_case_uses_only_images_every_attack_evaluated():
    rng = np.random.default_rng(0)
    full, sub = rng.random(1000) < 0.6, rng.random(100) < 0.4
    board = board_of(cells("d", {"fgsm": full, "autoattack": sub}))
    both = full[:100] & sub
    assert board.loc["d", "worst_n"] == 100
    assert board.loc["d", "worst@0.3"] == pytest.approx(both.mean())
    assert board.loc["d", "worst@0.3"] <= min(full[:100].mean(), sub.mean())


def test_an_image_wrong_before_the_attack_is_not_robust_in_the_worst_case():
    clean = np.array([True, False, True, True])
    board = board_of(cells("d", {"fgsm": np.array([True, True, False, True])}, clean=clean))
    assert board.loc["d", "worst@0.3"] == 0.5


def test_defenses_a_paired_test_cannot_separate_share_a_rank():
    n = 400
    rng = np.random.default_rng(1)
    strong = rng.random(n) < 0.8
    near = strong.copy()
    near[:3] = ~near[:3]                 # 3 discordant images: McNemar cannot separate them
    weak = rng.random(n) < 0.1
    board = board_of(cells("strong", {"pgd": strong}), cells("near", {"pgd": near}),
                     cells("none", {"pgd": weak}))
    assert board.loc["strong", "rank"] == board.loc["near", "rank"] == "1–2"
    assert board.loc["none", "rank"] == "3"
    # against none: the same exact McNemar test, by hand
    b, c = int((strong & ~weak).sum()), int((~strong & weak).sum())
    assert board.loc["strong", "p_vs_none"] == mcnemar_exact(b, c) < 0.001
    assert np.isnan(board.loc["none", "p_vs_none"])
    text = to_markdown(board.reset_index(), title="t")
    assert "<0.001" in text and "[" in text


def test_without_outcomes_the_worst_case_says_it_is_the_minimum():
    rows = [result_row("d", "fgsm", 0.3, 0.9, 0.4), result_row("d", "pgd", 0.3, 0.9, 0.2)]
    board = build_leaderboard(pd.DataFrame(rows)).set_index("defense")
    assert board.loc["d", "worst@0.3"] == 0.2
    assert board.loc["d", "worst_kind"] == "min of attacks"
    assert "no per-image outcomes" in to_markdown(board.reset_index(), title="t")


def test_eps_mask_is_same_eps_per_entry():
    """The column form decides each distinct value once and agrees with ``same_eps`` on every
    entry (eps typed two ways, 0, values that only round to the budget)."""
    import pandas as pd

    from robench.eps import same_eps
    from robench.results import eps_mask

    values = pd.Series([0.1, 0.1 + 1e-12, 0.3, 0.0, 8 / 255, 0.0313725490196, 0.1000001] * 3)
    for eps in (0.1, 8 / 255, 0.0, 0.5):
        mask = eps_mask(values, eps)
        assert mask.dtype == bool and mask.index.equals(values.index)
        assert mask.tolist() == [same_eps(v, eps) for v in values]
    assert eps_mask(values, 0.1).sum() == 6


def test_the_printed_leaderboard_carries_the_notes_of_leaderboard_md(robench_cli, tmp_path):
    """`robench leaderboard` prints the notes leaderboard.md holds (image subsets, worst case),
    not a bare table: a reader of the terminal must learn what a column was computed on."""
    import shutil

    from tests.conftest import REPO

    copy = tmp_path / "fgsm_lenet"
    shutil.copytree(REPO / "results" / "fgsm_lenet", copy)
    res = robench_cli("leaderboard", str(copy / "results.csv"))
    assert res.returncode == 0, res.stderr
    assert "pgd: 5000 random of the 10000 evaluation images" in res.stdout
    assert "worst case: per image" in res.stdout
