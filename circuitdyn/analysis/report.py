"""Tidy tables (records, CSV, JSON) and markdown summaries of comparisons."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from circuitdyn.analysis.comparison import Comparison
from circuitdyn.core.atomic import atomic_write_text

HEADLINE = ("intensity", "normalized_entropy", "gini", "kurtosis")


def comparison_records(comparisons: Iterable[Comparison], **extra: Any) -> list[dict[str, Any]]:
    """One record per (comparison, metric): pandas.DataFrame(records) gives the tidy table."""
    return [{**extra, **r} for c in comparisons for r in c.records()]


def to_csv(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, buf.getvalue())
    return path


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3g}" if abs(x) >= 1e-3 else f"{x:+.2e}"


def markdown_table(comparisons: Sequence[Comparison], metrics: Sequence[str] = HEADLINE) -> str:
    """Delta [95% CI] (p) per comparison and metric."""
    head = "| comparison | n | " + " | ".join(metrics) + " |"
    rule = "|---|---|" + "---|" * len(metrics)
    rows = [head, rule]
    for c in comparisons:
        cells = []
        for m in metrics:
            d = c[m]
            cells.append(f"{_fmt(d.delta)} [{_fmt(d.ci_low)}, {_fmt(d.ci_high)}] (p={d.p_value:.2g})")
        rows.append(f"| {c.name} | {c[metrics[0]].n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def direction_sentence(c: Comparison, metric: str) -> str:
    d = c[metric]
    if d.n == 0 or math.isnan(d.delta):
        return f"{c.name}: {metric} could not be compared (no shared correct prompts)."
    significant = d.p_value < 0.05 and (d.ci_low > 0 or d.ci_high < 0)
    word = "raised" if d.delta > 0 else "lowered" if d.delta < 0 else "did not change"
    by = f" by {_fmt(abs(d.delta))}" if d.delta else ""  # the verb carries the sign
    return (f"{c.name}: {word} {metric}{by} (delta {_fmt(d.delta)}, 95% CI {_fmt(d.ci_low)} to {_fmt(d.ci_high)}, "
            f"p={d.p_value:.2g}, n={d.n}){'' if significant else ', not significant'}.")


def save_records(records: list[dict[str, Any]], path: str | Path) -> Path:
    """A list of flat records as JSON (atomic)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(records, indent=1, default=float))
    return path
