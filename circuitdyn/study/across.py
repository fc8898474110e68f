"""Across studies and training seeds: each arm's change in each study (one study per model family), in units
of the base's spread, and one paired test of "does online RL move a metric more than the offline arm?" over
(family, seed) units.

An arm's change in one family is its pair's pooled tuned - base test, divided by the base's standard deviation
across that pair's prompts, so families whose scores differ in scale weigh alike. The contrast of one (family,
seed) unit is |online change| - |offline change| of that seed, each standardized in its own pair; its mean over
units is tested with the paired test of every other comparison (BCa CI, sign-flip permutation p).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from circuitdyn.analysis.stats import PairedStat, paired_stat
from circuitdyn.study.result import StudyResult

#: the per-prompt metrics an arm's change is reported in (sample diversity is a set statistic: no per-seed unit)
PER_PROMPT = ("intensity", "normalized_entropy", "kurtosis")


@dataclass(frozen=True)
class ArmEffect:
    """One arm's tuned - base change of one metric in one study (family)."""

    family: str
    arm: str
    metric: str
    granularity: str
    stat: PairedStat  # raw units
    sd: float  # the base's sd across the pair's prompts
    seed_means: tuple[float, ...]
    degraded: str | None  # the reason, when the arm answers fewer probes than the base

    @property
    def standardized(self) -> tuple[float, float, float]:
        """(mean, CI low, CI high) / sd."""
        return self.stat.mean / self.sd, self.stat.ci_low / self.sd, self.stat.ci_high / self.sd


def arm_effects(family: str, study: StudyResult, granularity: str,
                metrics: Sequence[str] = PER_PROMPT) -> list[ArmEffect]:
    """Every pair's (cell's) pooled tuned - base change of `metrics` in `study`, at its first cut coefficient."""
    cut = f"{study.config.cut_coeffs[0]:g}"
    degraded: Mapping[str, str] = study.protocol.get("degraded", {})
    out = []
    for name, view in study.cells.items():
        label, _, at = name.partition("@")
        if at != cut:
            continue
        for metric in metrics:
            test = next((t for t in view.tests if t.comparison == f"{label} - base" and t.granularity == granularity
                         and t.scope == "pooled" and t.metric == metric), None)
            if test is None:
                continue
            base = view.metrics[("base", granularity, "pooled")].get(metric)  # none for set statistics
            sd = float(np.nanstd(base, ddof=1)) if base is not None and np.isfinite(base).sum() > 1 else math.nan
            out.append(ArmEffect(family, label, metric, granularity, test.stat, sd if sd > 0 else math.nan,
                                 test.seed_means, degraded.get(label)))
    return out


@dataclass(frozen=True)
class ArmContrast:
    """|online change| - |offline change| of one metric over (family, seed) units, and which units were used."""

    online: str
    offline: str
    metric: str
    stat: PairedStat | None  # None: fewer than two units
    units: tuple[str, ...]  # "gpt2 seed 0", ...
    left_out: tuple[str, ...]  # families without both arms, or with a degraded arm, with the reason


def online_vs_offline(effects: Sequence[ArmEffect], online: str, offline: str, metric: str, *,
                      n_resamples: int = 100_000, seed: int = 0) -> ArmContrast:
    """The paired test over (family, seed) units of |online| - |offline| standardized change of `metric`."""
    by = {(e.family, e.arm): e for e in effects if e.metric == metric}
    contrasts, units, left_out = [], [], []
    for family in dict.fromkeys(e.family for e in effects):
        a, b = by.get((family, online)), by.get((family, offline))
        if a is None or b is None:
            left_out.append(f"{family}: no {online if a is None else offline} pair")
            continue
        if a.degraded or b.degraded:
            left_out.append(f"{family}: {a.degraded or b.degraded}")
            continue
        if not (math.isfinite(a.sd) and math.isfinite(b.sd)):
            left_out.append(f"{family}: the base's {metric} does not vary")
            continue
        for r, (ma, mb) in enumerate(zip(a.seed_means, b.seed_means)):
            contrasts.append(abs(ma) / a.sd - abs(mb) / b.sd)
            units.append(f"{family} seed {r}")
    stat = paired_stat(np.asarray(contrasts), n_resamples=n_resamples, seed=seed) if len(contrasts) >= 2 else None
    return ArmContrast(online, offline, metric, stat, tuple(units), tuple(left_out))
