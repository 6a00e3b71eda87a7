"""Statistics for accuracies: intervals for one accuracy, paired comparisons of two attacks or
defenses on the same images, and spread over seeds.

- ``wilson_interval``: Wilson score interval for a proportion (Wilson 1927, "Probable inference,
  the law of succession, and statistical inference", JASA 22:209-212; recommended over the Wald
  interval by Brown, Cai & DasGupta 2001, "Interval estimation for a binomial proportion",
  Statistical Science 16:101-133).
- ``mcnemar_exact``: exact (conditional) McNemar test, McNemar 1947, Psychometrika 12:153-157;
  the exact form is the binomial test on the discordant pairs (Fagerland, Lydersen & Laake 2013,
  "The McNemar test for binary matched-pairs data", BMC Med Res Methodol 13:91).
- ``paired_difference``: both accuracies, their difference, the McNemar p-value and Newcombe's
  square-and-add (hybrid score) interval for a difference of paired proportions: Newcombe 1998,
  "Improved confidence intervals for the difference between binomial proportions based on paired
  data", Statistics in Medicine 17:2635-2650, method 10; as given by Fagerland, Lydersen & Laake
  2014, "Recommended tests and confidence intervals for paired binomial proportions", Statistics
  in Medicine 33:2850-2875, and their book "Statistical Analysis of Contingency Tables" (2017),
  ch. 8. It is one of the intervals they recommend, it stays inside [-1, 1] and needs no
  iteration; the Wald interval they advise against for small or extreme counts.
- ``seed_interval``: mean, sample standard deviation and Student-t interval over seeds.
- ``paired_over_seeds``: a paired comparison repeated over seeds that scored the same images
  (a sign test on per-image mean differences and a t-test over seeds; an interval covering
  both image sampling and seed-to-seed spread). With several seeds the seed is the unit of a
  claim about a training method (Bouthillier et al. 2021, "Accounting for Variance in Machine
  Learning Benchmarks", MLSys): the t-test over per-seed differences must find the difference;
  the image-level sign test can only make the p-value larger, never replace it.
- ``holm_adjust``: Holm's step-down adjustment for a family of p-values (Holm 1979, "A simple
  sequentially rejective multiple test procedure", Scandinavian Journal of Statistics 6:65-70).
- ``wilcoxon_exact``: exact two-sided Wilcoxon signed-rank test over per-seed differences
  (Wilcoxon 1945, "Individual comparisons by ranking methods", Biometrics Bulletin 1:80-83): no
  normality assumed; exact by enumerating the sign patterns' rank sums, ties included.
- ``min_detectable_effect``: the smallest mean difference a two-sided paired t-test over n seeds
  detects with the given power (Cohen 1988, "Statistical Power Analysis for the Behavioral
  Sciences", ch. 2; power from the noncentral t distribution).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd


def _scipy_stats() -> ModuleType:
    """``scipy.stats``, imported on first use: it adds tens of MB of resident memory, and a run
    needs it only after its last cell (checks, leaderboard), not while robench's own attacks
    run (ART, as a backend, loads it itself)."""
    from scipy import stats

    return stats


#: The 97.5 % quantile of the standard normal: a two-sided 95 % interval.
Z95 = 1.959963984540054


def wilson_interval(k: Any, n: Any, z: float = Z95) -> tuple[Any, Any]:
    """Wilson score interval for a proportion of ``k`` successes in ``n`` trials.

    With p = k/n: centre (p + z²/2n) / (1 + z²/n), half-width
    z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n). The default z gives a 95 % interval.

    Args:
        k: successes (e.g. images still correct), an int or an array/Series of them.
        n: trials (images), same shape as ``k`` or broadcastable.
        z: standard-normal quantile, 1.959963984540054 for 95 %.

    Returns:
        ``(lo, hi)``: floats for scalar inputs, numpy arrays for arrays, Series (with the
        input's index) for Series. Where n = 0 both ends are nan.

    Raises:
        ValueError: if some k < 0, n < 0 or k > n.
    """
    index = next((v.index for v in (k, n) if isinstance(v, pd.Series)), None)
    k_arr = np.asarray(k, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if np.any(k_arr < 0) or np.any(n_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k!r}, n={n!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_arr / n_arr
        denom = 1.0 + z * z / n_arr
        centre = (p + z * z / (2 * n_arr)) / denom
        half = z * np.sqrt(p * (1 - p) / n_arr + z * z / (4 * n_arr * n_arr)) / denom
    lo = np.where(n_arr > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(n_arr > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    if index is not None:
        return pd.Series(lo, index=index), pd.Series(hi, index=index)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null hypothesis each discordant image is equally likely to favour either side, so
    b ~ Binomial(b + c, 1/2); the p-value is min(1, 2·P(X <= min(b, c))), the two-sided binomial
    test at 0.5 (equal to ``scipy.stats.binomtest(b, b + c).pvalue``). 1.0 when b + c = 0.

    Args:
        b: images only the first attack/defense gets right.
        c: images only the second gets right.
    """
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"mcnemar_exact: {name} must be a non-negative integer, got {value!r}")
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * float(_scipy_stats().binom.cdf(min(b, c), b + c, 0.5)))


def _as_bool(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if arr.ndim != 1:
        raise ValueError(f"paired_difference: {name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"paired_difference: {name} must hold booleans (or 0/1)")
        arr = arr.astype(bool)
    return arr


def paired_difference(a_correct: Any, b_correct: Any, z: float = Z95) -> dict[str, float | int]:
    """Compare two attacks or defenses scored on the SAME images, image by image.

    Args:
        a_correct: per image, whether A gets it right (bool array, tensor, list or Series).
        b_correct: the same for B, in the same image order.
        z: standard-normal quantile of the interval (95 % by default).

    Returns:
        A dict of numbers:
        ``n`` images; ``acc_a`` and ``acc_b``; ``diff`` = acc_b - acc_a; ``b`` images only A gets
        right and ``c`` images only B gets right (the discordant pairs); ``p_value`` the exact
        McNemar test on b and c; ``ci_low`` and ``ci_high`` Newcombe's square-and-add interval
        (1998, method 10) for ``diff``: the Wilson intervals (l_a, u_a), (l_b, u_b) of the two
        accuracies are combined as
        diff - sqrt((acc_b - l_b)² + (u_a - acc_a)² - 2ψ(acc_b - l_b)(u_a - acc_a)) and
        diff + sqrt((acc_a - l_a)² + (u_b - acc_b)² - 2ψ(acc_a - l_a)(u_b - acc_b)),
        where ψ is the continuity-corrected phi coefficient of the paired 2x2 table:
        with A = n_both·n_neither - b·c, ψ = (A - n/2)/sqrt(product of the four margins) if
        A > n/2, 0 if 0 <= A <= n/2, A/sqrt(...) if A < 0, and 0 when a margin is empty.

    Raises:
        ValueError: for inputs of different lengths, no images, or non-boolean values.
    """
    a = _as_bool(a_correct, "a_correct")
    b_arr = _as_bool(b_correct, "b_correct")
    if a.shape != b_arr.shape:
        raise ValueError(f"paired_difference: a_correct has {a.size} images, "
                         f"b_correct {b_arr.size}; they must be the same images")
    n = int(a.size)
    if n == 0:
        raise ValueError("paired_difference: no images")
    both = int((a & b_arr).sum())
    only_a = int((a & ~b_arr).sum())
    only_b = int((~a & b_arr).sum())
    neither = n - both - only_a - only_b
    acc_a, acc_b = (both + only_a) / n, (both + only_b) / n
    diff = acc_b - acc_a
    ci_low, ci_high = newcombe_interval(both, only_a, only_b, neither, z)
    return {
        "n": n, "acc_a": acc_a, "acc_b": acc_b, "diff": diff, "b": only_a, "c": only_b,
        "p_value": mcnemar_exact(only_a, only_b), "ci_low": ci_low, "ci_high": ci_high,
    }


def newcombe_interval(both: float, only_a: float, only_b: float, neither: float,
                      z: float = Z95) -> tuple[float, float]:
    """Newcombe's square-and-add interval (1998, method 10) for acc_b - acc_a from a paired
    2x2 table (formula in ``paired_difference``). Counts may be averages (e.g. over seeds that
    scored the same images): the interval is then that of one average table of n images."""
    n = both + only_a + only_b + neither
    k_a, k_b = both + only_a, both + only_b
    acc_a, acc_b = k_a / n, k_b / n
    diff = acc_b - acc_a
    l_a, u_a = wilson_interval(k_a, n, z)
    l_b, u_b = wilson_interval(k_b, n, z)
    margins = k_a * (n - k_a) * k_b * (n - k_b)
    if margins <= 0:
        psi = 0.0
    else:
        cross = both * neither - only_a * only_b
        if cross > n / 2:
            psi = (cross - n / 2) / math.sqrt(margins)
        elif cross >= 0:
            psi = 0.0
        else:
            psi = cross / math.sqrt(margins)
    down_b, up_a = acc_b - l_b, u_a - acc_a
    down_a, up_b = acc_a - l_a, u_b - acc_b
    return (diff - math.sqrt(max(down_b**2 + up_a**2 - 2 * psi * down_b * up_a, 0.0)),
            diff + math.sqrt(max(down_a**2 + up_b**2 - 2 * psi * down_a * up_b, 0.0)))


def seed_interval(values: Any, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation (ddof 1) and Student-t interval over seeds.

    The interval is mean ± t_{(1+confidence)/2, m-1} · s/sqrt(m) for m values (Student 1908,
    "The probable error of a mean", Biometrika 6:1-25). It treats the seeds as independent draws;
    with a handful of seeds it is wide, as it should be.

    Returns:
        ``(mean, std, lo, hi)``; for a single value std, lo and hi are nan.

    Raises:
        ValueError: for no values, non-finite values, or confidence outside (0, 1).
    """
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("seed_interval: no values")
    if not np.isfinite(arr).all():
        raise ValueError(f"seed_interval: values must be finite, got {arr.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"seed_interval: confidence must be in (0, 1), got {confidence}")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, math.nan, math.nan, math.nan
    std = float(arr.std(ddof=1))
    quantile = float(_scipy_stats().t.ppf((1 + confidence) / 2, arr.size - 1))
    half = quantile * std / math.sqrt(arr.size)
    return mean, std, mean - half, mean + half


def paired_over_seeds(pairs: list[tuple[Any, Any]], z: float = Z95) -> dict[str, float | int]:
    """Compare B with A over several seeds that scored the SAME images (robench draws the
    evaluation images from ``split_seed`` alone), each seed aligned image by image.

    ``pairs``: per seed, (A correct per image, B correct per image), every seed in the same
    image order. With one seed this is ``paired_difference``. With m >= 2 seeds the images are
    not new draws per seed, so nothing is pooled as if they were:

    - ``diff``: the mean over seeds of the per-seed differences acc_b - acc_a;
    - ``p_value``: the larger of two two-sided tests, so a difference counts only when both the
      images and the seeds support it: (1) an exact sign test on the per-image mean differences
      d_i = mean over seeds of (b_i - a_i) (images with d_i > 0 against d_i < 0, binomial with
      p = 1/2; with one seed it is the exact McNemar test), and (2) the one-sample t-test of
      the m per-seed differences (when they are all equal it says nothing: p = 1 if they are
      0, else only test (1) decides);
    - ``ci_low``, ``ci_high``: the hull of the Student-t 95 % interval of the m per-seed
      differences (seed randomness) and Newcombe's interval of the seed-averaged 2x2 table on
      n images (image sampling), so it is never narrower than one seed's;
    - ``n``: images per seed; ``seeds``: m; ``b``, ``c``: images with d_i < 0 and d_i > 0.
    """
    if not pairs:
        raise ValueError("paired_over_seeds: no seeds")
    if len(pairs) == 1:
        return {**paired_difference(*pairs[0], z=z), "seeds": 1}
    a = np.stack([_as_bool(x, "a_correct") for x, _ in pairs]).astype(float)
    b = np.stack([_as_bool(y, "b_correct") for _, y in pairs]).astype(float)
    if a.shape != b.shape:
        raise ValueError("paired_over_seeds: A and B must score the same images in every seed")
    m, n = a.shape
    diffs = b.mean(axis=1) - a.mean(axis=1)
    per_image = (b - a).mean(axis=0)
    worse, better = int((per_image < 0).sum()), int((per_image > 0).sum())
    mean, _, t_lo, t_hi = seed_interval(diffs)
    if np.ptp(diffs) <= 1e-12:  # identical per-seed differences: no seed variance to test
        p_seeds = 1.0 if abs(mean) <= 1e-12 else 0.0
    else:
        p_seeds = float(_scipy_stats().ttest_1samp(diffs, 0.0).pvalue)
    table = [float(((x > 0) & (y > 0)).sum()) / m for x, y in
             ((a, b), (a, 1 - b), (1 - a, b), (1 - a, 1 - b))]
    both, only_a, only_b, neither = table
    lo, hi = newcombe_interval(both, only_a, only_b, neither, z=z)
    return {"n": n, "seeds": m, "acc_a": float(a.mean()), "acc_b": float(b.mean()),
            "diff": float(mean), "b": worse, "c": better,
            "p_value": max(mcnemar_exact(worse, better), p_seeds),
            "ci_low": max(min(lo, t_lo), -1.0), "ci_high": min(max(hi, t_hi), 1.0)}


def holm_adjust(p_values: Any) -> list[float]:
    """Holm-adjusted p-values of one family, in the input order (Holm 1979).

    Sort the m p-values p_(1) <= ... <= p_(m); the adjusted p_(k) is
    max_{j <= k} min(1, (m - j + 1) p_(j)): the step-down multiplier, then the running maximum,
    so a larger raw p never gets a smaller adjusted one. Rejecting where the adjusted p < alpha
    is Holm's procedure at family-wise error rate alpha. NaN entries are no test: they stay NaN
    and do not count in m.

    Raises:
        ValueError: for a p-value outside [0, 1].
    """
    arr = np.asarray(p_values, dtype=float).ravel()
    present = ~np.isnan(arr)
    if ((arr[present] < 0) | (arr[present] > 1)).any():
        raise ValueError(f"holm_adjust: p-values must be in [0, 1], got {arr.tolist()}")
    out = np.full(arr.shape, np.nan)
    index = np.flatnonzero(present)
    order = index[np.argsort(arr[index], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * float(arr[i])))
        out[i] = running
    return [float(v) for v in out]


def wilcoxon_exact(differences: Any) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value for paired differences (e.g. per seed).

    Zero differences are dropped (Wilcoxon's convention); the others are ranked by magnitude
    (ties get their mean rank) and W+ is the sum of the ranks of the positive ones. Under the
    null each sign is + or - with probability 1/2 independently, so the exact distribution of W+
    is that of the sum over a random subset of the ranks, counted over all 2^n subsets (by
    dynamic programming on doubled ranks, exact with ties as well). p = min(1,
    2 min(P(W+ <= w), P(W+ >= w))); 1.0 when every difference is zero. Without ties it equals
    ``scipy.stats.wilcoxon(d, method="exact")``. With n differences the smallest possible p is
    2 / 2^n (0.25 for 3 seeds, 0.002 for 10).

    Raises:
        ValueError: for no values or non-finite ones.
    """
    d = np.asarray(differences, dtype=float).ravel()
    if d.size == 0:
        raise ValueError("wilcoxon_exact: no values")
    if not np.isfinite(d).all():
        raise ValueError(f"wilcoxon_exact: values must be finite, got {d.tolist()}")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    doubled = np.rint(2 * _scipy_stats().rankdata(np.abs(d))).astype(int)  # midranks x 2
    w = int(doubled[d > 0].sum())
    counts = np.zeros(int(doubled.sum()) + 1)
    counts[0] = 1.0
    for r in doubled:  # number of sign patterns reaching each doubled rank sum
        counts[r:] = counts[r:] + counts[:-r].copy()
    total = counts.sum()
    low, high = counts[:w + 1].sum() / total, counts[w:].sum() / total
    return float(min(1.0, 2.0 * min(low, high)))


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided one-sample (paired) t-test over ``n``
    values with between-value standard deviation ``sd`` detects at level ``alpha`` with
    probability ``power`` (Cohen 1988): the delta solving
    P(|T| > t_{1-alpha/2, n-1}) = power, T noncentral t with n - 1 degrees of freedom and
    noncentrality delta sqrt(n) / sd. For n = 10, alpha 0.05, power 0.8 it is 0.996 sd.

    Raises:
        ValueError: for n < 2, sd not finite and positive, alpha or power outside (0, 1).
    """
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"min_detectable_effect: n must be an integer >= 2, got {n!r}")
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"min_detectable_effect: sd must be finite and > 0, got {sd!r}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("min_detectable_effect: alpha and power must be in (0, 1)")
    st = _scipy_stats()
    df = int(n) - 1
    crit = float(st.t.ppf(1 - alpha / 2, df))

    def shortfall(nc: float) -> float:
        lower = float(st.nct.cdf(-crit, df, nc))  # nan far in the tail, where it is ~0
        return float(st.nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0) - power

    from scipy.optimize import brentq

    high = 1.0
    while shortfall(high) < 0:  # power rises with the noncentrality: bracket the root
        high *= 2
    nc = brentq(shortfall, 0.0, high, xtol=1e-12)
    return float(nc * sd / math.sqrt(int(n)))
