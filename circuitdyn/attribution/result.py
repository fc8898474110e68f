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

    def to_records(self, *, per_example: bool = False) -> list[dict[str, Any]]:
        """One record per real edge (edge, source, destination, layer of the destination, score); with
        `per_example`, one per (example, edge) in long form with the example's index."""
        g = self.graph
        pairs = list(g.edges())
        base = [{"edge": f"{g.sources[i].name}->{g.destinations[j].name}", "source": g.sources[i].name,
                 "destination": g.destinations[j].name, "layer": g.destinations[j].layer} for i, j in pairs]
        if not per_example:
            values = self.edge_scores().tolist()
            return [{**b, "score": v} for b, v in zip(base, values)]
        if self.per_example is None:
            raise ValueError("this attribution has no per-example scores: rerun attribute(..., per_example=True)")
        rows = self.per_example.permute(0, 2, 1)[:, g.edge_mask.T]  # [n, E], destination-major like edges()
        return [{"example": n, **b, "score": v} for n, row in enumerate(rows.tolist()) for b, v in zip(base, row)]

    def to_dataframe(self, *, per_example: bool = False) -> Any:
        """`to_records` as a pandas DataFrame (pandas is imported only here)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas (pip install pandas); to_records() gives the same rows") from None
        return pd.DataFrame.from_records(self.to_records(per_example=per_example))

    def to_networkx(self) -> Any:
        return self.graph.to_networkx(self.scores)
