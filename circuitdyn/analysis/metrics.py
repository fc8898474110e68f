"""Circuit metrics over edge scores, as defined in docs/concepts.md.

Let s be the scores of the E real edges and a = |s|:
  intensity = mean(a)              total_intensity = sum(a)
  entropy = -sum p log p, p = a / sum(a) (nats)    normalized_entropy = entropy / log(E)
  effective_edges = exp(entropy)   gini = Gini coefficient of a
  top_share_q = share of sum(a) held by the top ceil(q E) edges (q = 0.01, 0.05, 0.10)
  kurtosis = excess (Fisher) kurtosis of s
  node_output_entropy = per source node, the normalized entropy of a over its outgoing edges, averaged
                        over the nodes with at least two edges (needs the graph: circuit_metrics only)
  sample_diversity = 1 - the mean pairwise Pearson correlation between examples' edge-score vectors (a
                     property of a set of examples, not of one)
Every function takes `[..., E]` and reduces the last axis, so per-example scores `[N, E]` give `[N]`.
An all-zero score vector has no distribution: its entropy-type metrics are NaN.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

logger = logging.getLogger(__name__)
TOP_SHARES = (0.01, 0.05, 0.10)
METRIC_NAMES = ("intensity", "total_intensity", "entropy", "normalized_entropy", "effective_edges", "gini",
                "top_share_0.01", "top_share_0.05", "top_share_0.1", "kurtosis", "node_output_entropy")


class MetricsError(ValueError):
    """Scores the circuit metrics cannot describe (no edges, NaN or inf)."""


def _check(s: Tensor) -> Tensor:
    if s.ndim == 0 or s.shape[-1] == 0:
        raise MetricsError("metrics need at least one edge score along the last axis")
    if not torch.isfinite(s).all():
        raise MetricsError("the scores contain NaN or inf: the attribution is broken (check the metric, the "
                           "model dtype and the data); no metric of them would mean anything")
    return s.double()


def intensity(s: Float[Tensor, "... E"]) -> Tensor:
    return _check(s).abs().mean(-1)


def total_intensity(s: Float[Tensor, "... E"]) -> Tensor:
    return _check(s).abs().sum(-1)


def entropy(s: Float[Tensor, "... E"]) -> Tensor:
    a = _check(s).abs()
    total = a.sum(-1, keepdim=True)
    p = a / total
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)
    return torch.where(total[..., 0] > 0, h, torch.full_like(h, math.nan))  # all zero: no distribution


def normalized_entropy(s: Float[Tensor, "... E"]) -> Tensor:
    n = s.shape[-1]
    return entropy(s) / math.log(n) if n > 1 else torch.zeros(s.shape[:-1], dtype=torch.float64)


def effective_edges(s: Float[Tensor, "... E"]) -> Tensor:
    return torch.exp(entropy(s))


def gini(s: Float[Tensor, "... E"]) -> Tensor:
    a = torch.sort(_check(s).abs(), dim=-1).values
    n = a.shape[-1]
    i = torch.arange(1, n + 1, dtype=a.dtype)
    return ((2 * i - n - 1) * a).sum(-1) / (n * a.sum(-1))


def top_share(s: Float[Tensor, "... E"], q: float) -> Tensor:
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    a = _check(s).abs()
    k = max(1, math.ceil(q * a.shape[-1]))
    return torch.topk(a, k, dim=-1).values.sum(-1) / a.sum(-1)


def kurtosis(s: Float[Tensor, "... E"]) -> Tensor:
    x = _check(s)
    d = x - x.mean(-1, keepdim=True)
    m2, m4 = (d**2).mean(-1), (d**4).mean(-1)
    return m4 / m2**2 - 3.0


def all_metrics(s: Float[Tensor, "... E"]) -> dict[str, Tensor]:
    out = {
        "intensity": intensity(s), "total_intensity": total_intensity(s), "entropy": entropy(s),
        "normalized_entropy": normalized_entropy(s), "effective_edges": effective_edges(s), "gini": gini(s),
    }
    for q in TOP_SHARES:
        out[f"top_share_{q:g}"] = top_share(s, q)
    out["kurtosis"] = kurtosis(s)
    return out


def node_output_entropy(s: Float[Tensor, "... E"], sources: Tensor) -> Tensor:
    """Mean over source nodes (those with >= 2 real edges) of the normalized entropy of |s| over each node's
    outgoing edges; `sources[e]` is edge e's source index. Nodes whose edges all score 0 are left out; NaN
    where every node is."""
    per_node = [normalized_entropy(s[..., sources == node]) for node in torch.unique(sources)
                if int((sources == node).sum()) >= 2]
    if not per_node:
        return torch.full(s.shape[:-1], math.nan, dtype=torch.float64)
    return torch.stack(per_node, -1).nanmean(-1)


def example_correlations(per_example: Float[Tensor, "N E"]) -> tuple[Tensor, Tensor]:
    """The Pearson correlations `[N, N]` between examples' edge-score vectors, and which examples have any
    (those whose scores are not constant); the rows and columns of the others are NaN."""
    x = _check(per_example)
    usable = x.std(-1) > 0
    r = torch.full((x.shape[0], x.shape[0]), math.nan, dtype=torch.float64)
    if int(usable.sum()) >= 2:
        r[usable[:, None] & usable[None, :]] = torch.corrcoef(x[usable]).flatten()
    return r, usable


def sample_diversity(per_example: Float[Tensor, "N E"]) -> float:
    """1 - the mean Pearson correlation over all pairs of examples' edge-score vectors (examples whose scores
    are constant have no correlation and are left out). NaN with fewer than two usable examples."""
    r, usable = example_correlations(per_example)
    n = int(usable.sum())
    if n < 2:
        return math.nan
    r = r[usable][:, usable]
    return float(1 - (r.sum() - r.diagonal().sum()) / (n * (n - 1)))


def logits_layer(attribution: Any) -> int:
    """The key of the edges into `logits` in per_layer_metrics: one past the last block."""
    return int(attribution.graph.spec.n_layers)


def edge_vector(attribution: Any, *, per_example: bool = False) -> Tensor:
    """The real edges' scores of an Attribution: `[E]`, or `[N, E]` with per_example."""
    mask = attribution.graph.edge_mask
    if per_example:
        if attribution.per_example is None:
            raise ValueError("this attribution has no per-example scores: rerun attribute(..., per_example=True)")
        return attribution.per_example[:, mask]
    return attribution.scores[mask]


def circuit_metrics(attribution: Any, *, per_example: bool = False) -> dict[str, Tensor]:
    """All metrics of an attribution's edge scores (pooled over examples, or one value per example).
    Warns when some score vectors are all zero (their distribution metrics are NaN)."""
    s = edge_vector(attribution, per_example=per_example)
    zero = (_check(s) == 0).all(-1)
    if bool(zero.any()):
        which = f"examples {torch.nonzero(zero).flatten().tolist()[:8]}" if per_example else "the mean scores"
        logger.warning("every edge score is 0 for %s (e.g. answer and foil share their first token, or clean "
                       "equals corrupt): entropy, effective_edges, gini, top shares and kurtosis are NaN there", which)
    sources = attribution.graph.edge_mask.nonzero()[:, 0]  # edge order of edge_vector (row-major)
    return {**all_metrics(s), "node_output_entropy": node_output_entropy(s, sources)}


def per_layer_metrics(attribution: Any, *, per_example: bool = False) -> dict[int, dict[str, Tensor]]:
    """Metrics of the edges grouped by destination layer: keys 0 .. n_layers - 1 are the blocks, and key
    n_layers (one past the last block: `logits_layer(attribution)`) holds the edges into `logits`."""
    g = attribution.graph
    layers = g.dest_layers()[None, :].expand(g.n_src, -1)[g.edge_mask]
    s = edge_vector(attribution, per_example=per_example)
    return {int(l): all_metrics(s[..., layers == l]) for l in torch.unique(layers)}
