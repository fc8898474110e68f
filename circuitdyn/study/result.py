"""What a study produces: its entries (models), paired tests and the result, plus the metric lists it tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitdyn.analysis.stats import PairedStat
from circuitdyn.attribution import Attribution
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.generation import Generation
from circuitdyn.study.selection import Selection
from circuitdyn.study.streaming import ModelSource

HEADLINE = ("intensity", "entropy", "normalized_entropy", "effective_edges", "gini", "top_share_0.01",
            "top_share_0.05", "top_share_0.1", "kurtosis", "node_output_entropy")
CONCENTRATION = ("gini", "top_share_0.05", "kurtosis")
#: said once above every table of tests; rows it describes carry CI_MARK after their direction
CI_MARK = "†"
CI_NOTE = (f"The 95% CI is per test; q corrects for the number of tests (Benjamini-Hochberg). A row whose CI excludes "
           f"0 while q is not below alpha (marked {CI_MARK}) is not a finding: across this many tests, that many such "
           "intervals are expected by chance.")
LAYER_METRICS = ("intensity", "normalized_entropy", "gini")  # tested per destination layer


@dataclass(frozen=True)
class Entry:
    """One model of the study: its label ("base", "grpo", ...), replicate index (training seed), where it comes
    from, and (once opened) what it ran as: provenance and weights sha256."""

    label: str
    replicate: int
    source: ModelSource
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label if self.label == "base" else f"{self.label}#{self.replicate}"


@dataclass(frozen=True)
class Test:
    """One paired test: `comparison` is "grpo - base" or "(grpo - base) - (dpo - base)"."""

    comparison: str
    granularity: str
    scope: str  # "pooled" or "layer 3" / "logits"
    metric: str
    stat: PairedStat
    seed_means: tuple[float, ...] = ()  # per-replicate mean deltas (tuned - base tests only)
    cut: str = ""  # the paper protocol's cut coefficient ("0.1"); "" under the common protocol

    def record(self, alpha: float) -> dict[str, Any]:
        s = self.stat
        spread = np.asarray(self.seed_means) if self.seed_means else np.asarray([np.nan])
        return {"comparison": self.comparison, "cut": self.cut, "granularity": self.granularity, "scope": self.scope,
                "metric": self.metric, "n": s.n, "mean_delta": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high,
                "p_perm": s.p_value, "q_bh": s.q_value, "median_delta": s.median, "wilcoxon_p": s.wilcoxon_p,
                "direction": s.direction(alpha).value, "seeds": len(self.seed_means),
                "seed_mean_min": float(np.min(spread)), "seed_mean_max": float(np.max(spread)),
                "seed_mean_sd": float(np.std(spread, ddof=1)) if len(self.seed_means) > 1 else float("nan")}


@dataclass(frozen=True)
class StudyResult:
    config: StudyConfig
    entries: tuple[Entry, ...]
    problems_hash: str
    n_generated: int
    correct: dict[str, int]  # per entry name
    kept: tuple[int, ...]  # indices of the problems every model answered correctly
    generations: dict[str, list[Generation]]
    attributions: dict[tuple[str, str], Attribution]  # (entry name, granularity)
    metrics: dict[tuple[str, str, str], dict[str, np.ndarray]]  # (entry, granularity, scope) -> metric -> [n_kept]
    tests: tuple[Test, ...]
    claims: tuple[str, ...]
    protocol: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    # the paper protocol: one study per (label, cut coefficient), named "grpo@0.1", and each pair's selection
    cells: dict[str, "StudyResult"] = field(default_factory=dict)
    selections: dict[str, Selection] = field(default_factory=dict)

    def test(self, comparison: str, metric: str, granularity: str = "layer", scope: str = "pooled",
             cut: float | str | None = None) -> Test:
        """A test by name; `cut` picks the paper protocol's coefficient (its first one when None)."""
        want = "" if not self.cells else f"{cut:g}" if isinstance(cut, float) else cut or f"{self.config.cut_coeffs[0]:g}"
        for t in self.tests:
            if (t.comparison, t.metric, t.granularity, t.scope, t.cut) == (comparison, metric, granularity, scope, want):
                return t
        raise KeyError(f"no test {comparison!r} / {metric} / {granularity} / {scope} / cut {want!r}")
