"""Statistics for claims about methods: Holm's step-down adjustment, the exact Wilcoxon
signed-rank test over seeds and the minimum effect a paired t-test over seeds can detect."""

import math

import numpy as np
import pytest
from scipy import stats

from robench.stats import holm_adjust, min_detectable_effect, wilcoxon_exact


@pytest.mark.parametrize("p, adjusted", [
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, 1·0.04 = 0.02, 0.03, 0.06, 0.04;
    # the monotonicity step raises the last to 0.06 (a larger p never gets a smaller adjusted p)
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    # ties: 3·0.02 = 0.06, 2·0.02 = 0.04 -> 0.06 (monotone), 1·0.5
    ([0.02, 0.02, 0.5], [0.06, 0.06, 0.5]),
    # capped at 1: 2·0.4 = 0.8, 0.6 -> 0.8; 2·0.6 = 1.2 -> 1
    ([0.6, 0.4], [0.8, 0.8]),
    ([0.6, 0.9], [1.0, 1.0]),
    ([0.03], [0.03]),
    ([], []),
])
def test_holm_hand_computed_family(p, adjusted):
    assert holm_adjust(p) == pytest.approx(adjusted)


def test_holm_leaves_missing_p_values_out_of_the_family():
    # m = 2 (the nan is no test): 2·0.01, 1·0.2
    got = holm_adjust([0.2, float("nan"), 0.01])
    assert got[0] == pytest.approx(0.2) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)


def test_holm_rejects_impossible_p_values():
    with pytest.raises(ValueError, match="p-values"):
        holm_adjust([0.1, 1.5])


@pytest.mark.parametrize("d, p", [
    # all five positive: W+ = 15, only 1 of 2^5 sign patterns reaches it: 2·1/32
    ([0.01, 0.02, 0.03, 0.04, 0.05], 2 / 32),
    # smallest negative: W+ = 14; W+ >= 14 for 2 of 32 patterns: 2·2/32
    ([-0.01, 0.02, 0.03, 0.04, 0.05], 4 / 32),
    # tied magnitudes get midranks 1.5, 1.5, 3; all positive: W+ = 6 for 1 of 8: 2·1/8
    ([0.1, 0.1, 0.2], 2 / 8),
    # a zero difference is dropped (Wilcoxon 1945): the rest as the first case
    ([0.0, 0.01, 0.02, 0.03, 0.04, 0.05], 2 / 32),
    # symmetric: p = 1
    ([-0.1, 0.1], 1.0),
])
def test_wilcoxon_exact_hand_computed(d, p):
    assert wilcoxon_exact(d) == pytest.approx(p)


def test_wilcoxon_exact_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    for n in (3, 6, 10, 14):
        d = rng.normal(0.05, 0.1, n)
        assert wilcoxon_exact(d) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)


def test_wilcoxon_exact_no_nonzero_difference_says_nothing():
    assert wilcoxon_exact([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="no values"):
        wilcoxon_exact([])


def test_min_detectable_effect_matches_the_noncentral_t_power():
    # n = 10, two-sided alpha 0.05, power 0.8: about one sd (0.996 sd)
    delta = min_detectable_effect(sd=0.1, n=10)
    assert delta == pytest.approx(0.0996, abs=1e-4)
    df, crit = 9, stats.t.ppf(0.975, 9)
    nc = delta / 0.1 * math.sqrt(10)
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=1e-6)
    # larger than the normal approximation (z_0.975 + z_0.8) sd / sqrt(n), as the t must be
    # and by simulation: 200 000 draws of 10 normal per-seed differences with that mean
    rng = np.random.default_rng(0)
    draws = rng.normal(delta, 0.1, size=(200_000, 10))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / math.sqrt(10))
    assert (np.abs(t) > crit).mean() == pytest.approx(0.8, abs=0.005)
    assert delta > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.1 / math.sqrt(10)


def test_min_detectable_effect_bad_input():
    with pytest.raises(ValueError, match="n"):
        min_detectable_effect(sd=0.1, n=1)
    with pytest.raises(ValueError, match="n"):
        min_detectable_effect(sd=0.1, n=2.5)
    with pytest.raises(ValueError, match="sd"):
        min_detectable_effect(sd=float("nan"), n=10)
