"""An attribution: edge scores on a graph, per-example scores when asked, and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.attribution.config import AttributionConfig
from circuitdyn.graph import Graph


@dataclass(frozen=True, eq=False)
class Attribution:
    """Edge scores `[n_src, n_dst]` (zero off the real edges), optional per-example scores
    `[n_examples, n_src, n_dst]`, the metric at the run per example, and provenance."""

    scores: Float[Tensor, "n_src n_dst"]
    graph: Graph
    metric_values: Float[Tensor, " n_examples"]
    config: AttributionConfig
    per_example: Float[Tensor, "n_examples n_src n_dst"] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def edge_scores(self) -> Float[Tensor, " n_edges"]:
        """Scores of the real edges, destination-major (the order of graph.edges())."""
        return self.scores.T[self.graph.edge_mask.T]

    def score(self, edge: str | tuple[str, str]) -> float:
        i, j = self.graph.edge_index(edge)
        return float(self.scores[i, j])

    def top_edges(self, k: int = 10) -> list[tuple[str, float]]:
        """The k edges with the largest |score|, strongest first."""
        names = self.graph.edge_names()
        values = self.edge_scores()
        order = torch.argsort(values.abs(), descending=True, stable=True)[:k]
        return [(names[i], float(values[i])) for i in order]

    def to_networkx(self) -> Any:
        return self.graph.to_networkx(self.scores)
