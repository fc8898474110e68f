"""Tidy tables (records, CSV, JSON) and markdown summaries of comparisons."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from circuitdyn.analysis.comparison import Comparison, MetricDelta
from circuitdyn.core.atomic import atomic_write_text

HEADLINE = ("intensity", "normalized_entropy", "gini", "kurtosis")


def comparison_records(comparisons: Iterable[Comparison], **extra: Any) -> list[dict[str, Any]]:
    """One record per (comparison, metric): pandas.DataFrame(records) gives the tidy table."""
    return [{**extra, **r} for c in comparisons for r in c.records()]


#: a text cell a spreadsheet would run as a formula when it starts with one of these (CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: text that a spreadsheet would read as a formula is quoted with a leading '
    (numbers, negative ones included, are written as they are)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def to_csv(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[csv_cell(k) for k in keys])
    writer.writeheader()
    writer.writerows({csv_cell(k): csv_cell(v) for k, v in r.items()} for r in records)
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
        have = {d.metric: d for d in c.deltas}
        cells = []
        for m in metrics:
            d = have.get(m)
            cells.append("-" if d is None else f"{_fmt(d.delta)} [{_fmt(d.ci_low)}, {_fmt(d.ci_high)}] (p={d.p_value:.2g})")
        n = next((d.n for d in c.deltas), 0)
        rows.append(f"| {c.name} | {n} | " + " | ".join(cells) + " |")
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


def comparisons_from_records(records: Any, source: str = "records") -> list[Comparison]:
    """Comparisons rebuilt from their records (the comparison.json `circuitdyn compare --out` writes), each
    record checked: the fields of a MetricDelta with numbers where numbers belong (null reads as NaN)."""
    fields = {f.name: f for f in dataclasses.fields(MetricDelta)}
    required = [k for k, f in fields.items() if f.default is dataclasses.MISSING]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{source}: expected a list of comparison records (the comparison.json that "
                         "`circuitdyn compare --out` writes)")
    if not records:
        raise ValueError(f"{source}: holds no records; nothing to report")
    by_name: dict[str, list[MetricDelta]] = {}
    for i, r in enumerate(records):
        missing = [k for k in required + ["comparison"] if k not in r]
        if missing:
            raise ValueError(f"{source}: record {i} lacks {missing}; is it a comparison.json?")
        values = {}
        for k in fields:
            if k not in r:
                continue
            v = r[k]
            if k == "metric":
                ok = isinstance(v, str)
            elif fields[k].type == "int":
                ok = isinstance(v, int) and not isinstance(v, bool)
            else:
                v = math.nan if v is None else v
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok:
                raise ValueError(f"{source}: record {i} has {k}={v!r}, which is not a "
                                 f"{'text' if k == 'metric' else 'number'}; the file was edited or damaged")
            values[k] = v
        by_name.setdefault(str(r["comparison"]), []).append(MetricDelta(**values))
    return [Comparison(name, tuple(ds)) for name, ds in by_name.items()]


def save_records(records: list[dict[str, Any]], path: str | Path) -> Path:
    """A list of flat records as JSON (atomic)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(records, indent=1, default=float))
    return path
