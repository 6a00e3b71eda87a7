"""Claims about methods in the leaderboard: Holm-adjusted ranks and p_vs_none_holm, the seed as
the unit of a rank with several seeds, the one-seed header, and an unconverged attack's column
marked as an upper bound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robench.leaderboard import ONE_SEED, UPPER_BOUND_NOTE, build_leaderboard, to_markdown
from robench.stats import holm_adjust, mcnemar_exact, paired_over_seeds

from .conftest import result_row

N = 200


def _table(robust: dict[str, dict[int, np.ndarray]]):
    """results and outcomes of one pgd@0.3 cell per defense and seed (every image clean)."""
    rows, blocks = [], []
    for defense, seeds in robust.items():
        for seed, ok in seeds.items():
            rows.append(result_row(defense, "pgd", 0.3, 1.0 - 0.01 * seed, float(ok.mean()),
                                   n=N, seed=seed,
                                   defense_name="none" if defense == "none" else "x"))
            blocks.append(pd.DataFrame({"defense": defense, "attack": "pgd", "eps": 0.3,
                                        "seed": seed, "image": np.arange(N),
                                        "clean_correct": True, "adv_correct": ok}))
    return pd.DataFrame(rows), pd.concat(blocks, ignore_index=True)


def _first(k: int) -> np.ndarray:
    return np.arange(N) < k


def test_ranks_use_holm_adjusted_p_over_the_whole_family():
    # b beats a and c (equal) by 6 images only: exact McNemar p = 2/2^6 = 0.031 each, < 0.05
    # raw; over the family of 6 pairs Holm multiplies them by 3 and 2 (0.094, 0.0625)
    results, outcomes = _table({"none": {0: _first(0)}, "a": {0: _first(100)},
                                "b": {0: _first(106)}, "c": {0: _first(100)}})
    board = build_leaderboard(results, outcomes=outcomes).set_index("defense")
    assert mcnemar_exact(0, 6) == pytest.approx(0.03125)
    # the old, uncorrected rule ranked b alone first; the adjusted one cannot separate b, a, c
    assert board.loc["b", "rank"] == "1–3" and board.loc["a", "rank"] == "1–3"
    assert board.loc["none", "rank"] == "4"
    family = [mcnemar_exact(0, k) for k in (100, 106, 100)] + [0.03125, 0.03125, 1.0]
    adjusted = holm_adjust(family)
    for i, d in enumerate("abc"):
        assert board.loc[d, "p_vs_none"] == pytest.approx(family[i])
        assert board.loc[d, "p_vs_none_holm"] == pytest.approx(adjusted[i])
    assert np.isnan(board.loc["none", "p_vs_none_holm"])
    text = to_markdown(board.reset_index(), title="t")
    assert "p_vs_none_holm" in text and "Holm-adjusted" in text


def test_one_seed_that_dominates_does_not_rank_a_method_first():
    # seed 0: b keeps 40 more images than a (image level: McNemar p ~ 1e-12, "significant" on
    # that seed); seeds 1 and 2: a and b keep the same images. Per-seed differences 0.2, 0, 0:
    # the t-test over seeds (the unit of a claim about a method) gives p = 0.42
    a = {s: _first(150) for s in range(3)}
    b = {0: _first(190), 1: _first(150), 2: _first(150)}
    results, outcomes = _table({"none": {s: _first(0) for s in range(3)}, "a": a, "b": b})
    assert paired_over_seeds([(a[0], b[0])])["p_value"] < 1e-10
    board = build_leaderboard(results, outcomes=outcomes).set_index("defense")
    assert board.loc["a", "rank"] == board.loc["b", "rank"] == "1–2"
    # per defense: mean, between-seed sd and per-seed values of the worst case and clean acc
    assert board.loc["none", "rank"] == "3"
    assert board.loc["b", "worst@0.3"] == pytest.approx(np.mean([0.95, 0.75, 0.75]))
    assert board.loc["b", "worst_sd"] == pytest.approx(np.std([0.95, 0.75, 0.75], ddof=1))
    assert board.loc["b", "worst_per_seed"] == "0:0.95;1:0.75;2:0.75"
    assert board.loc["b", "clean_per_seed"] == "0:1;1:0.99;2:0.98"
    assert board.loc["b", "clean_sd"] == pytest.approx(0.01)
    text = to_markdown(board.reset_index(), title="t")
    assert "95.0 / 75.0 / 75.0" in text and ONE_SEED not in text


def test_a_one_seed_leaderboard_says_it_compares_trained_models():
    results, outcomes = _table({"none": {0: _first(0)}, "a": {0: _first(100)}})
    board = build_leaderboard(results, outcomes=outcomes)
    text = to_markdown(board, title="t")
    assert ONE_SEED in text
    assert "compare these trained models" in ONE_SEED and "not training methods" in ONE_SEED
    assert "worst_per_seed" not in board
    assert ONE_SEED in to_markdown(board)  # what `robench leaderboard` prints, without a title


def test_an_unconverged_attack_is_marked_as_an_upper_bound():
    results, outcomes = _table({"none": {0: _first(0)}, "a": {0: _first(100)}})
    status = pd.DataFrame({"defense": ["none", "a"], "status": ["pass", "warn"],
                           "reason": ["", "converged[pgd]@0.3"]})
    board = build_leaderboard(results, status, outcomes=outcomes).set_index("defense")
    assert board.loc["a", "upper_bound"] == "pgd@0.3" and board.loc["none", "upper_bound"] == ""
    text = to_markdown(board.reset_index(), title="t")
    row = next(line for line in text.splitlines() if line.startswith("| ") and " a " in line)
    assert "50.0 †" in row
    assert UPPER_BOUND_NOTE in text and "upper bound" in UPPER_BOUND_NOTE
    # the worst case is not marked: it is the number
    assert row.count("†") == 1
