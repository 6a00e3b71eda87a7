"""robench.stats against hand-computed numbers, a published worked example and scipy."""

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from robench.stats import Z95, mcnemar_exact, paired_difference, seed_interval, wilson_interval

# -- Wilson ---------------------------------------------------------------------------------------

# By hand, z = 1.96: for 5/10 the centre is 0.5 and the half-width
# 1.96·sqrt(0.025 + 3.8415/400)/(1 + 3.8415/10) = 0.26341; for 0/10 the centre and the half-width
# are both (3.8415/20)/1.38415 = 0.13877, so the interval is (0, 0.27753).
@pytest.mark.parametrize("k,n,lo,hi", [
    (5, 10, 0.236593, 0.763407), (0, 10, 0.0, 0.277533), (10, 10, 0.722467, 1.0),
    (1, 2, 0.094531, 0.905469),
])
def test_wilson_hand_computed(k, n, lo, hi):
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-6)


def test_wilson_matches_scipy_on_a_grid():
    for n in (1, 2, 7, 30, 100, 1000, 10_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_empty_is_nan_and_z_sets_the_width():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lo1, hi1 = wilson_interval(30, 100, z=1.0)
    lo2, hi2 = wilson_interval(30, 100, z=Z95)
    assert lo2 < lo1 < 0.3 < hi1 < hi2


def test_wilson_vectorised_over_arrays_and_series():
    k, n = np.array([0, 3, 7, 0]), np.array([10, 10, 10, 0])
    lo, hi = wilson_interval(k, n)
    for i in range(3):
        assert (lo[i], hi[i]) == pytest.approx(wilson_interval(int(k[i]), int(n[i])))
    assert np.isnan(lo[3]) and np.isnan(hi[3])
    s_lo, s_hi = wilson_interval(pd.Series([1, 9], index=["fgsm", "pgd"]), 10)
    assert list(s_lo.index) == ["fgsm", "pgd"]
    assert s_hi["pgd"] == pytest.approx(wilson_interval(9, 10)[1])


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (0, -1), (np.array([1, 12]), 10)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(k, n)


# -- McNemar --------------------------------------------------------------------------------------

def _exact_two_sided(b, c):
    """2·sum_{i <= min(b, c)} C(b+c, i) / 2^(b+c), capped at 1, in exact arithmetic."""
    n = b + c
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("b,c,p", [
    (1, 9, 0.021484375),    # 2·(1 + 10)/1024
    (9, 1, 0.021484375),
    (0, 5, 0.0625),         # 2/32
    (3, 3, 1.0), (0, 0, 1.0), (0, 1, 1.0),
    (2, 8, 0.109375),       # 2·(1 + 10 + 45)/1024
    (6, 16, 0.052478790283203125),  # Cavo et al. 2012, 2·sum_{i<=6} C(22, i)/2^22
])
def test_mcnemar_hand_table(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    if b + c:
        assert p == pytest.approx(_exact_two_sided(b, c), rel=1e-15)


def test_mcnemar_matches_scipy_binomtest():
    for b in range(0, 25, 3):
        for c in (0, 1, 4, 13, 40, 200):
            if b + c:
                ref = stats.binomtest(b, b + c, 0.5).pvalue
                assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("b,c", [(-1, 3), (1.5, 2), (2, True)])
def test_mcnemar_rejects_non_counts(b, c):
    with pytest.raises(ValueError, match="non-negative integer"):
        mcnemar_exact(b, c)


# -- paired difference ----------------------------------------------------------------------------

def _pairs(both, only_a, only_b, neither):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return np.array(a), np.array(b)


def test_paired_difference_published_example():
    # Cavo et al. 2012, as analysed in Fagerland, Lydersen & Laake, "Statistical Analysis of
    # Contingency Tables" (2017), ch. 8: table [[59, 6], [16, 80]]; Newcombe square-and-add
    # estimate -0.0621 (95% CI -0.1186 to -0.0046) for row minus column. Here A is the row, B
    # the column, and diff is B - A, so the signs flip.
    a, b = _pairs(59, 6, 16, 80)
    out = paired_difference(a, b)
    assert (out["n"], out["b"], out["c"]) == (161, 6, 16)
    assert (out["acc_a"], out["acc_b"]) == pytest.approx((65 / 161, 75 / 161))
    assert round(out["diff"], 4) == 0.0621
    assert (round(out["ci_low"], 4), round(out["ci_high"], 4)) == (0.0046, 0.1186)
    assert out["p_value"] == pytest.approx(_exact_two_sided(6, 16))
    swapped = paired_difference(b, a)
    assert (swapped["b"], swapped["c"]) == (16, 6)
    assert (swapped["ci_low"], swapped["ci_high"]) == pytest.approx(
        (-out["ci_high"], -out["ci_low"]))


def test_paired_difference_hand_computed_negative_phi():
    # A right only on image 0, B only on image 1: both = neither = 0, so the cross product is
    # -1 and psi = -1/sqrt(1·1·1·1) = -1. Each accuracy is 1/2 with Wilson interval
    # 0.5 ± 0.405469 (centre 0.5, half 1.96·sqrt(0.125 + 3.8415/16)/(1 + 3.8415/2)), so
    # the bounds are ±sqrt(d² + d² + 2d²) = ±2d with d = 0.405469.
    out = paired_difference([True, False], [False, True])
    assert out["diff"] == 0.0 and out["p_value"] == 1.0
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((-0.810938, 0.810938), abs=1e-6)


def test_paired_difference_zero_margin_uses_psi_zero():
    # Both always right: an empty margin makes psi 0, so each bound is the square root of the
    # sum of the two squared Wilson distances: sqrt(0 + (1 - l)^2) with l the Wilson lower bound
    # for 5/5.
    out = paired_difference([True] * 5, [True] * 5)
    lo5 = wilson_interval(5, 5)[0]
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((-(1 - lo5), 1 - lo5))


def test_paired_difference_interval_contains_estimate_and_stays_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 12, size=4)
        if counts.sum() == 0:
            continue
        out = paired_difference(*_pairs(*counts.tolist()))
        assert -1 <= out["ci_low"] <= out["diff"] <= out["ci_high"] <= 1


def test_paired_difference_accepts_tensors_series_and_0_1():
    a, b = _pairs(30, 5, 2, 3)
    ref = paired_difference(a, b)
    assert paired_difference(torch.from_numpy(a), torch.from_numpy(b)) == ref
    assert paired_difference(pd.Series(a), pd.Series(b)) == ref
    assert paired_difference(a.astype(int), b.astype(int)) == ref


@pytest.mark.parametrize("a,b,match", [
    ([True, False], [True], "same images"),
    ([], [], "no images"),
    ([0, 2], [1, 1], "booleans"),
    ([[True]], [[True]], "1-D"),
])
def test_paired_difference_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)


# -- seeds ----------------------------------------------------------------------------------------

def test_seed_interval_hand_computed():
    # mean 2.5, s = sqrt(5/3) = 1.290994, t(0.975, 3) = 3.182446: half = 3.182446·s/2 = 2.054260
    mean, std, lo, hi = seed_interval([1, 2, 3, 4])
    assert (mean, std) == pytest.approx((2.5, 1.290994), abs=1e-6)
    assert (lo, hi) == pytest.approx((0.445740, 4.554260), abs=1e-6)


def test_seed_interval_matches_scipy():
    values = [0.912, 0.897, 0.905, 0.921, 0.899]
    mean, std, lo, hi = seed_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert std == pytest.approx(np.std(values, ddof=1))
    assert seed_interval(values, confidence=0.5)[2] > lo


def test_seed_interval_single_and_constant_values():
    mean, std, lo, hi = seed_interval([0.7])
    assert mean == 0.7 and all(math.isnan(v) for v in (std, lo, hi))
    assert seed_interval([0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.0, 0.5, 0.5))


@pytest.mark.parametrize("values,kwargs", [([], {}), ([0.1, float("nan")], {}),
                                           ([0.1, 0.2], {"confidence": 1.0})])
def test_seed_interval_rejects_bad_input(values, kwargs):
    with pytest.raises(ValueError):
        seed_interval(values, **kwargs)


@pytest.mark.slow
def test_a_run_loads_scipy_only_when_a_statistic_needs_it() -> None:
    # scipy.stats is 61 MB of resident memory that a run needs only after its last cell
    code = ("import sys, robench.cli, robench.runner, robench.stats as s; "
            "assert 'scipy.stats' not in sys.modules; "
            "assert s.mcnemar_exact(3, 5) > 0; assert 'scipy.stats' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
