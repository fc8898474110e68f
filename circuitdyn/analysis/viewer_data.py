"""What the circuit viewer draws, as plain data: node positions, the strongest edges with their spread over
examples, and the metric deltas. Pure functions of one or two Attributions; viewer.py turns the result into a page.

Layout: one row per node kind, input at the bottom, then each block's attention row (heads, or one node at
layer granularity) and its MLP row, logits at the top; heads spread evenly across the width. An edge ends at
the node(s) that read its destination: a q/k/v destination at its head (a grouped key/value head at the
middle of the heads it feeds), marked by its kind.

With two attributions (base, tuned) over the same graph, every edge carries both scores, the change
tuned - base and the relative change (tuned - base) / max(|base|, 1% of the largest |base|), and the page
ranks edges by whichever of base, tuned, change or relative change is shown. The page holds the top
`max_edges` edges of each ranking (their union), not every edge of a large graph.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from circuitdyn.analysis.comparison import ComparisonError, paired_delta
from circuitdyn.analysis.metrics import circuit_metrics, edge_vector, sample_diversity
from circuitdyn.analysis.stats import N_RESAMPLES

#: the metrics the page shows beside the graph, with their labels
VIEW_METRICS = {"intensity": ("intensity", "mean |score| over the edges"),
                "entropy": ("entropy", "-sum p log p, p = |score| / sum |score| (nats)"),
                "normalized_entropy": ("entropy / log E", "the entropy over its largest value, log(number of edges)"),
                "kurtosis": ("kurtosis", "excess (Fisher) kurtosis of the scores")}
RELATIVE_FLOOR = 0.01  # of the largest |base| score: the smallest |base| a relative change divides by


def node_layout(graph: Any) -> list[dict[str, Any]]:
    """Every source node and `logits`: name, kind, layer, row (0 = input) and x in [0, 1]."""
    nodes = []
    for s in graph.sources:
        if s.kind == "input":
            row, x = 0, 0.5
        elif s.kind == "mlp":
            row, x = 2 * s.layer + 2, 0.5
        elif s.kind == "head":
            row, x = 2 * s.layer + 1, (s.head + 0.5) / graph.spec.n_heads
        else:
            row, x = 2 * s.layer + 1, 0.5
        nodes.append({"name": s.name, "kind": s.kind, "layer": s.layer, "row": row, "x": x})
    nodes.append({"name": "logits", "kind": "logits", "layer": graph.spec.n_layers, "row": 2 * graph.spec.n_layers + 1,
                  "x": 0.5})
    return nodes


def spreads(values: torch.Tensor) -> list[dict[str, Any]]:
    """Per column of `[n_examples, n_edges]`: mean, sd, 10th / 50th / 90th percentiles and the share of
    positive values over the examples."""
    v = values.double()
    n = v.shape[0]
    if n == 0:
        return [{"mean": None, "sd": None, "p10": None, "p50": None, "p90": None, "positive": None, "n": 0}
                for _ in range(v.shape[1])]
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=0)
    sd = v.std(0) if n > 1 else torch.zeros(v.shape[1], dtype=torch.float64)
    columns = zip(v.mean(0).tolist(), sd.tolist(), *q.tolist(), (v > 0).double().mean(0).tolist())
    return [{"mean": m, "sd": d, "p10": a, "p50": b, "p90": c, "positive": p, "n": n} for m, d, a, b, c, p in columns]


def _check(base: Any, tuned: Any | None) -> None:
    if tuned is not None and base.graph.spec != tuned.graph.spec:
        raise ComparisonError(f"the two attributions are over different graphs ({base.graph.spec} vs "
                              f"{tuned.graph.spec}): a diff page needs one graph; attribute both models with the "
                              "same granularity on models of the same shape")


def _rankings(scores: list[torch.Tensor], relative: torch.Tensor | None) -> list[torch.Tensor]:
    keys = [s.abs() for s in scores]
    if len(scores) == 2:
        keys += [(scores[1] - scores[0]).abs(), relative.abs() if relative is not None else keys[0]]
    return keys


def edge_records(base: Any, tuned: Any | None = None, *, max_edges: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """The union of the top `max_edges` edges of each ranking, strongest (by the first) first, and the graph's
    edge count. Each record: name, source, destination, kind, owners, scores `v` ([base] or [base, tuned]),
    and with two attributions `change` and `relative`; `spread` per side (and of the change) over examples."""
    _check(base, tuned)
    if max_edges < 1:
        raise ValueError(f"max_edges must be at least 1, got {max_edges}")
    g = base.graph
    dst, src = torch.nonzero(g.edge_mask.T, as_tuple=True)  # destination-major, the order of graph.edges()
    sides = [a for a in (base, tuned) if a is not None]
    scores = [a.scores[src, dst].float() for a in sides]
    relative = None
    if tuned is not None:
        floor = RELATIVE_FLOOR * float(scores[0].abs().max()) or 1.0
        relative = (scores[1] - scores[0]) / scores[0].abs().clamp(min=floor)
    chosen: list[int] = []
    seen: set[int] = set()
    for key in _rankings(scores, relative):
        for e in torch.argsort(key, descending=True, stable=True)[:max_edges].tolist():
            if e not in seen:
                seen.add(e)
                chosen.append(e)
    per_example = [a.per_example[:, src[chosen], dst[chosen]] if a.per_example is not None else None for a in sides]
    spread = [spreads(p) if p is not None else [None] * len(chosen) for p in per_example]
    change_spread: list[Any] = [None] * len(chosen)
    if len(per_example) == 2 and per_example[0] is not None and per_example[1] is not None and \
            per_example[0].shape[0] == per_example[1].shape[0]:
        change_spread = spreads(per_example[1] - per_example[0])
    records = []
    for k, e in enumerate(chosen):
        i, j = int(src[e]), int(dst[e])
        d = g.destinations[j]
        record: dict[str, Any] = {"name": f"{g.sources[i].name}->{d.name}", "source": g.sources[i].name,
                                  "destination": d.name, "kind": d.kind, "owners": list(g.owners(j)) or ["logits"],
                                  "v": [float(s[e]) for s in scores],
                                  "spread": [side[k] for side in spread]}
        if tuned is not None and relative is not None:
            record["change"] = float(scores[1][e] - scores[0][e])
            record["relative"] = float(relative[e])
            if change_spread[k] is not None:
                record["change_spread"] = change_spread[k]
        records.append(record)
    return records, len(src)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN


def _diversity(attribution: Any) -> float:
    if attribution.per_example is None or attribution.per_example.shape[0] < 2:
        return math.nan
    return sample_diversity(edge_vector(attribution, per_example=True))


def metric_rows(base: Any, tuned: Any | None = None, *, n_resamples: int = N_RESAMPLES, seed: int = 0
                ) -> list[dict[str, Any]]:
    """One row per metric: the mean over examples of each example's metric (the scores' own metric when there
    are no per-example scores), per side; with two attributions that have per-example scores on as many
    examples, the paired change (examples paired by index) with its 95% BCa CI and permutation p. Sample
    diversity is a property of a set of examples: its value per side and their difference, without a CI."""
    _check(base, tuned)
    sides = [a for a in (base, tuned) if a is not None]
    per_ex = all(a.per_example is not None for a in sides)
    values = [circuit_metrics(a, per_example=per_ex) for a in sides]
    paired = tuned is not None and per_ex and base.per_example.shape[0] == tuned.per_example.shape[0]
    rows = []
    for metric, (label, meaning) in VIEW_METRICS.items():
        arrays = [np.asarray(v[metric], dtype=float).reshape(-1) for v in values]
        row: dict[str, Any] = {"metric": metric, "label": label, "meaning": meaning,
                               "values": [_finite(float(np.nanmean(a))) if np.isfinite(a).any() else None for a in arrays]}
        if paired:
            d = paired_delta(metric, arrays[0], arrays[1], n_resamples=n_resamples, seed=seed)
            row.update(delta=_finite(d.delta), ci=[_finite(d.ci_low), _finite(d.ci_high)], p=_finite(d.p_value), n=d.n)
        elif tuned is not None and all(v is not None for v in row["values"]):
            row["delta"] = row["values"][1] - row["values"][0]
        rows.append(row)
    diversity = [_diversity(a) for a in sides]
    row = {"metric": "sample_diversity", "label": "sample diversity", "values": [_finite(x) for x in diversity],
           "meaning": "1 - the mean Pearson correlation between examples' edge scores (a set's property: no CI)"}
    if tuned is not None and all(math.isfinite(x) for x in diversity):
        row["delta"] = diversity[1] - diversity[0]
    rows.append(row)
    return rows


def describe(attribution: Any) -> dict[str, Any]:
    """What the page says about where an attribution came from."""
    p, config = attribution.provenance, attribution.config.as_dict()
    model = p.get("model") if isinstance(p.get("model"), dict) else {}
    imported = p.get("imported")
    training = model.get("training") if isinstance(model.get("training"), dict) else {}
    return {"model": model.get("spec") or model.get("family") or "",
            "training": f"{training.get('algorithm')}, {training.get('step')} steps" if training else "",
            "weights": (model.get("weights_sha256") or "")[:12], "metric": p.get("metric", ""),
            "method": "" if imported else config.get("method", ""), "ablation": "" if imported else config.get("ablation", ""),
            "examples": int(attribution.metric_values.shape[0]),
            "per_example": attribution.per_example is not None, "imported": imported or None}


def page_data(base: Any, tuned: Any | None = None, *, labels: tuple[str, str] = ("base", "tuned"), title: str = "",
              max_edges: int = 1000, top: int = 30, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """Everything the page needs, as one JSON-able dict."""
    edges, n_edges = edge_records(base, tuned, max_edges=max_edges)
    spec = base.graph.spec.as_dict()
    sides = [a for a in (base, tuned) if a is not None]
    return {"title": title or (f"{labels[1]} vs {labels[0]}" if tuned is not None else labels[0]),
            "labels": list(labels[: len(sides)]), "graph": spec, "n_edges": n_edges, "nodes": node_layout(base.graph),
            "edges": edges, "top": max(1, min(top, len(edges))), "metrics": metric_rows(base, tuned, n_resamples=n_resamples),
            "n_resamples": n_resamples,
            "sources": [describe(a) for a in sides], "relative_floor": RELATIVE_FLOOR}


__all__ = ["VIEW_METRICS", "edge_records", "metric_rows", "node_layout", "page_data"]
