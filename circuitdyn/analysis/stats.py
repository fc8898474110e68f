"""Paired statistics for base-vs-tuned comparisons, with one coherent primary test and FDR control.

For paired differences d (tuned - base, one per prompt):
- primary: the mean of d, its BCa bootstrap 95% CI (`scipy.stats.bootstrap`) and a two-sided sign-flip
  permutation test of the mean (`scipy.stats.permutation_test`, exact below 2^16 sign patterns). The CI
  and the p-value are about the same quantity, so they agree: p < 0.05 goes with a CI that excludes 0
  (up to resampling noise).
- secondary: the median of d and the Wilcoxon signed-rank p-value (a test of location that, on skewed
  heavy-tailed data, can disagree with the mean; it is reported, never used for verdicts).
- `fdr_adjust` controls the false discovery rate over a family of primary p-values (Benjamini-Hochberg).
A verdict is "up" or "down" only when the FDR-adjusted p is below alpha AND the CI excludes zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy import stats

ALPHA = 0.05
N_RESAMPLES = 400_000  # bootstrap: CI ends move by ~0.2% of the CI's width between resampling seeds
N_PERMUTATIONS = 20_000  # sign flips (exact enumeration below 2^15 patterns): p within ~0.002 at 0.05


class Direction(str, Enum):
    UP = "up"
    DOWN = "down"
    NONE = "no detectable change"
    TOO_FEW = "too few to test"  # so few pairs that no outcome could reach alpha (see min_testable)

    @property
    def detected(self) -> bool:
        return self in (Direction.UP, Direction.DOWN)


def min_testable(alpha: float = ALPHA) -> int:
    """The fewest pairs for which the two-sided sign-flip test can reach `alpha` at all: its smallest p-value
    is 2 / 2^n (every difference of one sign), so n must satisfy 2 / 2^n < alpha (6 at alpha 0.05)."""
    return math.floor(math.log2(2 / alpha)) + 1


@dataclass(frozen=True)
class PairedStat:
    """Paired-difference statistics of one metric (d = tuned - base, or (A - base) - (B - base))."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float  # sign-flip permutation test of the mean (primary)
    median: float
    wilcoxon_p: float  # secondary
    q_value: float = math.nan  # p_value after FDR control over the study's family of tests
    extra: dict[str, float] = field(default_factory=dict, compare=False)

    def direction(self, alpha: float = ALPHA) -> Direction:
        if self.n < min_testable(alpha):
            return Direction.TOO_FEW
        p = self.q_value if math.isfinite(self.q_value) else self.p_value
        if not p < alpha:
            return Direction.NONE
        if self.ci_low > 0:
            return Direction.UP
        if self.ci_high < 0:
            return Direction.DOWN
        return Direction.NONE

    def ci_only(self, alpha: float = ALPHA) -> bool:
        """The CI excludes 0 but no direction is claimed: the CI is per test, while q corrects for the number
        of tests (such a row is not a finding, and reports mark it)."""
        return (self.ci_low > 0 or self.ci_high < 0) and not self.direction(alpha).detected

    def minimum_detectable_effect(self, alpha: float = ALPHA, power: float = 0.8, level: float = 0.95) -> float:
        """The smallest |mean| this test would detect with probability `power` at two-sided `alpha`:
        (z_{1-alpha/2} + z_power) x se, the standard error read from the CI's width (se = width / (2 z_level)),
        the normal approximation. Beside "no detectable change", it says what could have been seen."""
        from statistics import NormalDist

        z = NormalDist().inv_cdf
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)) or self.n < 2:
            return math.nan
        se = (self.ci_high - self.ci_low) / (2 * z(0.5 + level / 2))
        return (z(1 - alpha / 2) + z(power)) * se

    def with_q(self, q: float) -> "PairedStat":
        return PairedStat(self.n, self.mean, self.ci_low, self.ci_high, self.p_value, self.median, self.wilcoxon_p, q,
                          self.extra)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return np.mean(x, axis=axis)


def paired_stat(diff: Sequence[float] | np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0,
                level: float = 0.95, n_permutations: int = N_PERMUTATIONS) -> PairedStat:
    """Statistics of paired differences (see the module docstring). Non-finite differences are an error:
    drop those prompts explicitly before calling."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"paired differences must be one-dimensional, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError(f"{int((~np.isfinite(d)).sum())} paired differences are not finite: drop those prompts first")
    n = len(d)
    nan = math.nan
    if n == 0:
        return PairedStat(0, nan, nan, nan, nan, nan, nan)
    mean, median = float(d.mean()), float(np.median(d))
    if n < 3 or np.all(d == d[0]):
        # no spread to resample: the CI collapses onto the mean, and no test can reject
        return PairedStat(n, mean, mean, mean, 1.0 if n >= 2 else nan, median, 1.0 if n >= 2 else nan)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        ci = stats.bootstrap((d,), _mean, method="BCa", n_resamples=n_resamples, confidence_level=level,
                             random_state=rng, vectorized=True, batch=50_000).confidence_interval
        perm = stats.permutation_test((d,), _mean, permutation_type="samples", n_resamples=min(n_permutations, 2**n),
                                      random_state=rng, vectorized=True, alternative="two-sided")
    lo, hi = float(ci.low), float(ci.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa undefined (e.g. one outlier): percentile instead
        boot = rng.choice(d, size=(n_resamples, n)).mean(1)
        lo, hi = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    wil = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return PairedStat(n, mean, lo, hi, float(perm.pvalue), median, wil)


def fdr_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return [float(v) for v in out]
