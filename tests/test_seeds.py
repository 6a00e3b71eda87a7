"""Seeds, the validation split and random evaluation subsets: a suite repeats per seed, the
leaderboard and compare pair over seeds, subsets are random, nested and shared, and bad input
fails before anything is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from robench.compare import compare_defenses
from robench.data import evaluation_split, hold_out_validation
from robench.errors import UserError
from robench.leaderboard import build_leaderboard
from robench.outdir import OutputFolder
from robench.plan import resolve_raw
from robench.runner import RunOptions, apply_overrides
from robench.stats import mcnemar_exact, newcombe_interval, paired_over_seeds, wilson_interval

from .conftest import (
    REUSE_ATTACKS,
    REUSE_DEFENSES,
    numbers,
    result_row,
    reuse_suite,
    run_logged,
)

ATTACKS = [{"name": "fgsm", "eps": [0.1]}, {"name": "pgd", "eps": [0.1], "limit": 50}]


def suite(**extra):
    return {"name": "t", "attacks": ATTACKS, **extra}


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, message", [
    (suite(seeds=[]), "seeds: List should have at least 1 item"),
    (suite(seeds=[1, 2, 1]), "seeds: seed 1 listed twice"),
    (suite(seeds=[0, "1"]), "seeds[1]: Input should be a valid integer"),
    (suite(seeds=[0, 1.5]), "seeds[1]: Input should be a valid integer"),
    (suite(seeds=[-1]), "seeds[0]: Input should be greater than or equal to 0"),
    (suite(seed=0, seeds=[0, 1]), "seeds: give either `seed` or `seeds`, not both"),
    (suite(seeds=3), "seeds: Input should be a valid list"),
])
def test_bad_seeds_name_the_key(raw, message):
    with pytest.raises(UserError) as err:
        resolve_raw(raw, "s.yaml")
    assert f"s.yaml: {message}" in str(err.value)


def test_command_line_seeds_replace_the_suites():
    plan = resolve_raw(suite(seed=5), "s.yaml")
    assert apply_overrides(plan.suite, RunOptions(seeds="2,0"), "s").seed_list == (2, 0)
    assert apply_overrides(resolve_raw(suite(seeds=[1, 2]), "s").suite, RunOptions(seed=7),
                           "s").seed_list == (7,)
    with pytest.raises(UserError, match="--seeds: expected comma-separated integers"):
        apply_overrides(plan.suite, RunOptions(seeds="0,x"), "s")
    with pytest.raises(UserError, match="seed 1 listed twice"):
        apply_overrides(plan.suite, RunOptions(seeds="1,1"), "s")
    with pytest.raises(UserError, match="either --seed or --seeds"):
        apply_overrides(plan.suite, RunOptions(seed=1, seeds="1,2"), "s")


@pytest.mark.parametrize("text, key", [
    ("data: {eval_limit: 100}\nattacks:\n  - {name: fgsm, eps: [0.1], limit: 101}\n",
     "attacks[0].limit: limit 101 is larger than the 100 evaluation images"),
    ("data: {eval_limit: 10001}\nattacks:\n  - {name: fgsm, eps: [0.1]}\n",
     "data.eval_limit: eval_limit 10001 is larger than the 10000 test images"),
    ("data: {validation_size: 60000}\nattacks:\n  - {name: fgsm, eps: [0.1]}\n",
     "data.validation_size: validation_size 60000 leaves no training images"),
])
def test_sizes_the_data_lacks_fail_before_anything_is_written(tmp_path, robench_cli, text, key):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\n" + text)
    out = tmp_path / "out"
    proc = robench_cli("run", str(path), "--out", str(out), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}: {key}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


# -- plans per seed ----------------------------------------------------------------------------
def test_each_seed_has_its_own_models_and_attack_starts_with_the_same_labels():
    plan = resolve_raw(suite(seeds=[0, 1]), "s.yaml")
    other = plan.for_seed(1)
    assert plan.seeds == (0, 1) and plan.seed == 0 and other.seed == 1
    assert plan.for_seed(0) is plan
    assert other.baseline.cache_key != plan.baseline.cache_key
    assert [a.label for a in other.attacks] == [a.label for a in plan.attacks]
    assert all(a.seed != b.seed for a, b in zip(plan.attacks, other.attacks, strict=True))
    assert other.defenses[0].cache_key != plan.defenses[0].cache_key
    # the same seed always resolves to the same keys
    assert resolve_raw(suite(seed=1), "s.yaml").baseline.cache_key == other.baseline.cache_key


# -- subsets and the validation split -----------------------------------------------------------
def test_limit_subsets_are_random_nested_and_shared(mnist):
    full = evaluation_split(mnist.test, None, split_seed=0)
    ids = full.ids.tolist()
    assert sorted(ids) == list(range(10_000)) and ids[:100] != list(range(100))
    small = evaluation_split(mnist.test, 500, split_seed=0).head(100).ids.tolist()
    assert small == ids[:100] and set(small) < set(full.head(1000).ids.tolist())
    assert evaluation_split(mnist.test, 500, split_seed=0).ids.tolist() == ids[:500]
    assert evaluation_split(mnist.test, 500, split_seed=1).ids.tolist() != ids[:500]
    # a random sample: its class shares are those of the test split (within sampling noise)
    sample = full.head(2000).labels.bincount(minlength=10).float() / 2000
    overall = mnist.test.labels.bincount(minlength=10).float() / 10_000
    assert (sample - overall).abs().max() < 0.03


def test_validation_is_held_out_of_training(mnist):
    train, validation = hold_out_validation(mnist.train, 5000, split_seed=0)
    t, v = set(train.ids.tolist()), set(validation.ids.tolist())
    assert len(t) == 55_000 and len(v) == 5000 and not t & v
    assert t | v == set(range(60_000))
    assert validation.ids[:50].tolist() != sorted(validation.ids[:50].tolist())  # random order
    again = hold_out_validation(mnist.train, 5000, split_seed=0)[1]
    assert again.ids.tolist() == validation.ids.tolist()
    assert (validation.images == mnist.train.images[validation.ids]).all()


# -- statistics over seeds ----------------------------------------------------------------------
def test_paired_over_seeds_by_hand():
    a = [np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1], bool), np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 1],
                                                                   bool),
         np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0], bool)]
    b = [np.array([1, 1, 1, 1, 1, 0, 0, 0, 1, 1], bool), np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1],
                                                                   bool),
         np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)]
    result = paired_over_seeds(list(zip(a, b, strict=True)))
    diffs = np.array([0.2, 0.2, 0.3])  # per-seed B - A
    assert result["diff"] == pytest.approx(diffs.mean())
    # per-image mean differences: images 1, 2, 3, 4, 5 gain, none lose -> sign test 5 vs 0
    assert (result["b"], result["c"]) == (0, 5)
    p_t = st.ttest_1samp(diffs, 0).pvalue
    assert result["p_value"] == pytest.approx(max(mcnemar_exact(0, 5), p_t))
    half = st.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    lo, hi = newcombe_interval(both=12 / 3, only_a=0, only_b=7 / 3, neither=11 / 3)
    assert result["ci_low"] == pytest.approx(min(diffs.mean() - half, lo))
    assert result["ci_high"] == pytest.approx(max(diffs.mean() + half, hi))
    assert result["seeds"] == 3 and result["n"] == 10


def test_seeds_on_the_same_images_are_not_counted_as_new_images():
    a = np.zeros(1000, bool)
    b = a.copy()
    b[:3] = True  # B wins the same 3 images in every seed
    one, three = paired_over_seeds([(a, b)]), paired_over_seeds([(a, b)] * 3)
    assert three["p_value"] == pytest.approx(one["p_value"]) == pytest.approx(0.25)
    assert three["ci_low"] <= one["ci_low"] and three["ci_high"] >= one["ci_high"]


def test_paired_over_seeds_holds_its_level_when_defenses_are_equal():
    """Equal defenses, images with their own difficulty, 3 seeds: p < 0.05 at most ~5 %."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        p = rng.beta(0.3, 0.3, 500)
        pairs = [(rng.random(500) < p, rng.random(500) < p) for _ in range(3)]
        hits += paired_over_seeds(pairs)["p_value"] < 0.05
    assert hits / 200 <= 0.08


def _two_seed_run(tmp_path):
    """Defenses a and b, 2 seeds, 100 images: b is more robust on every seed."""
    rng = np.random.default_rng(0)
    rows, blocks = [], []
    for seed, (pa, pb) in enumerate([(0.3, 0.6), (0.4, 0.6)]):
        for name, p in (("a", pa), ("b", pb)):
            ok = rng.random(100) < p
            rows.append(result_row(name, "pgd", 0.3, 1.0, ok.mean(), n=100, seed=seed,
                                   defense_name="none" if name == "a" else "x"))
            blocks.append(pd.DataFrame({"defense": name, "attack": "pgd", "eps": 0.3,
                                        "seed": seed, "image": np.arange(100),
                                        "clean_correct": True, "adv_correct": ok}))
    results, outcomes = pd.DataFrame(rows), pd.concat(blocks, ignore_index=True)
    with OutputFolder.open(tmp_path) as out:  # a run's files: read as its manifest vouches
        out.write_text("results.csv", results.to_csv(index=False))
        with out.temp_file("outcomes.parquet") as temp:
            outcomes.to_parquet(temp, index=False)
    return results, outcomes


def test_leaderboard_reports_mean_spread_and_pairs_over_seeds(tmp_path):
    results, outcomes = _two_seed_run(tmp_path)
    board = build_leaderboard(results, outcomes=outcomes).set_index("defense")
    per_seed = {d: [results[(results["defense"] == d) & (results["seed"] == s)]["robust_acc"]
                    .item() for s in (0, 1)] for d in ("a", "b")}
    for d, values in per_seed.items():
        assert board.loc[d, "worst@0.3"] == pytest.approx(np.mean(values))
        assert board.loc[d, "worst_sd"] == pytest.approx(np.std(values, ddof=1))
        assert board.loc[d, "seeds"] == 2 and board.loc[d, "worst_n"] == 100
        # the hull of the t interval over seeds and the Wilson interval of the mean count
        lo, hi = wilson_interval(np.mean(values) * 100, 100)
        assert board.loc[d, "worst@0.3_lo"] <= min(lo, np.mean(values))
        assert board.loc[d, "worst@0.3_hi"] >= max(hi, np.mean(values))
    pairs = [(outcomes[(outcomes["defense"] == "a") & (outcomes["seed"] == s)]["adv_correct"]
              .to_numpy(), outcomes[(outcomes["defense"] == "b") & (outcomes["seed"] == s)]
              ["adv_correct"].to_numpy()) for s in (0, 1)]
    assert board.loc["b", "p_vs_none"] == pytest.approx(paired_over_seeds(pairs)["p_value"])
    assert np.isnan(board.loc["a", "p_vs_none"])


def test_compare_pairs_seed_by_seed(tmp_path):
    _two_seed_run(tmp_path)
    text = compare_defenses(tmp_path, "a", "b")
    assert "| seeds" in text and "paired over seeds" in text
    with OutputFolder.open(tmp_path) as out:  # damaged by robench itself: verified, unreadable
        out.write_bytes("outcomes.parquet", b"not parquet")
    with pytest.raises(UserError, match="outcomes.parquet: not a readable outcomes table"):
        compare_defenses(tmp_path, "a", "b")
    (tmp_path / "outcomes.parquet").unlink()  # deleted by hand: robench wrote it, it is gone
    with pytest.raises(UserError, match="outcomes.parquet: missing"):
        compare_defenses(tmp_path, "a", "b")


@pytest.mark.slow
def test_two_seed_run_end_to_end(tmp_path, robench_cli):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nseeds: [0, 1]\ndata: {eval_limit: 200, validation_size: 55000}\n"
                    "train: {epochs: 1}\ndefenses:\n  - name: none\n"
                    "  - name: bit_depth_reduction\n    params: {bits: 4}\n"
                    "attacks:\n  - {name: fgsm, eps: [0.1, 0.2]}\n")
    out = tmp_path / "out"
    proc = robench_cli("run", str(path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(out / "results.csv")
    assert sorted(set(results["seed"])) == [0, 1] and len(results) == 2 * 2 * 2
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    # every seed is evaluated on the same 200 images
    images = outcomes.groupby("seed")["image"].apply(lambda s: frozenset(s))
    assert images.nunique() == 1 and len(images.iloc[0]) == 200
    # the seeds train different baselines
    none = results[results["defense"] == "none"].groupby("seed")["model_hash"].first()
    assert none[0] != none[1]
    board = pd.read_csv(out / "leaderboard.csv").set_index("defense")
    mean = results[(results["defense"] == "none") & (results["eps"] == 0.2)]["robust_acc"].mean()
    assert board.loc["none", "fgsm@0.2"] == pytest.approx(mean)
    assert (board["seeds"] == 2).all()
    log = (out / "run.log").read_text()
    assert "seed 0" in log and "seed 1" in log


def test_seeds_derive_from_labels_not_positions():
    from robench.seeds import derive_seed

    assert derive_seed(7) == 7
    assert derive_seed(7, "attack", "pgd") == derive_seed(7, "attack", "pgd")
    assert derive_seed(7, "attack", "pgd") != derive_seed(7, "attack", "fgsm")
    assert derive_seed(7, "attack", "pgd") != derive_seed(8, "attack", "pgd")
    assert 0 <= derive_seed(2**62, "x") < 2**31


@pytest.mark.slow
def test_reordering_a_suite_changes_no_number(tmp_path, plugin_env, robench_subprocess):
    forward, backward = tmp_path / "f.yaml", tmp_path / "b.yaml"
    forward.write_text(reuse_suite())
    backward.write_text(reuse_suite(REUSE_DEFENSES[::-1], REUSE_ATTACKS[::-1]))
    run_logged(robench_subprocess, forward, tmp_path / "f", plugin_env)
    run_logged(robench_subprocess, backward, tmp_path / "b", plugin_env)
    pd.testing.assert_frame_equal(numbers(tmp_path / "f"), numbers(tmp_path / "b"))
