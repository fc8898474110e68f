"""Circuits: subsets of a graph's edges, selected from scores, pruned to what connects input to logits.

All functions are pure: they take scores or circuits and return new circuits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import no_type_check

import torch
from jaxtyping import Bool
from torch import Tensor

from circuitdyn.attribution.intervention import Ablation
from circuitdyn.attribution.method import Method
from circuitdyn.core.choices import parse_choice
from circuitdyn.graph import Graph, GraphError


# no_type_check: __post_init__ parses the string forms of the Enums (as AttributionConfig does)
@no_type_check
@dataclass(frozen=True)
class Scoring:
    """What a circuit's edges were ranked by: the attribution's objective, counterfactual and method.

    `evaluate_circuit` and `faithfulness_curve` measure a circuit under its own objective and counterfactual
    unless told otherwise: faithfulness under another one answers another question."""

    metric: str
    ablation: Ablation
    method: Method
    answer_tokens: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "ablation", parse_choice(Ablation, self.ablation, "ablation", GraphError))
        object.__setattr__(self, "method", parse_choice(Method, self.method, "method", GraphError))

    @classmethod
    def of(cls, scores: object) -> "Scoring | None":
        """The scoring recorded in an Attribution's provenance; None for a plain tensor."""
        provenance = getattr(scores, "provenance", None)
        if not isinstance(provenance, dict) or not isinstance(provenance.get("config"), dict):
            return None
        config = provenance["config"]
        return cls(str(provenance.get("metric", "logit_diff")), config.get("ablation", Ablation.NOISING),
                   config.get("method", Method.EAP), int(config.get("answer_tokens", 1)))

    def describe(self) -> str:
        return f"{self.metric} under {self.ablation.value} ({self.method.value})"


@dataclass(frozen=True, eq=False)
class Circuit:
    """A set of real edges of `graph`, as a boolean mask `[n_src, n_dst]`, and what they were selected by
    (`scoring`: None for a circuit built by hand)."""

    graph: Graph
    edges: Bool[Tensor, "n_src n_dst"]
    scoring: Scoring | None = None

    def __post_init__(self) -> None:
        if tuple(self.edges.shape) != (self.graph.n_src, self.graph.n_dst):
            raise GraphError(f"circuit mask has shape {tuple(self.edges.shape)}, the graph needs "
                             f"({self.graph.n_src}, {self.graph.n_dst})")
        bad = self.edges.bool() & ~self.graph.edge_mask
        if bad.any():
            i, j = (int(x) for x in torch.nonzero(bad)[0])
            raise GraphError(f"{self.graph.sources[i].name}->{self.graph.destinations[j].name} is not an edge of the "
                             "graph (a destination can only read sources upstream of it)")
        object.__setattr__(self, "edges", self.edges.bool().cpu())

    @classmethod
    def from_edges(cls, graph: Graph, names: Iterable[str | tuple[str, str]]) -> "Circuit":
        mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
        for name in names:
            i, j = graph.edge_index(name)
            mask[i, j] = True
        return cls(graph, mask)

    @classmethod
    def full(cls, graph: Graph) -> "Circuit":
        return cls(graph, graph.edge_mask.clone())

    @classmethod
    def empty(cls, graph: Graph) -> "Circuit":
        return cls(graph, torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool))

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    def edge_names(self) -> list[str]:
        return [f"{self.graph.sources[i].name}->{self.graph.destinations[j].name}"
                for i, j in self.graph.edges() if self.edges[i, j]]

    def nodes(self) -> set[str]:
        """Source nodes that write into the circuit, plus the nodes that read it (and `logits`)."""
        out: set[str] = set()
        for i, j in self.graph.edges():
            if self.edges[i, j]:
                out.add(self.graph.sources[i].name)
                out.update(self.graph.owners(j) or ("logits",))
        return out


def _scores(scores: Tensor | object) -> Tensor:
    s = getattr(scores, "scores", scores)  # an Attribution or a plain tensor
    if not isinstance(s, Tensor):
        raise GraphError(f"expected an Attribution or a score tensor, got {type(scores).__name__}")
    return s


def _graph(scores: Tensor | object, graph: Graph | None) -> Graph:
    g = getattr(scores, "graph", graph)
    if g is None:
        raise GraphError("pass graph= when selecting from a plain score tensor")
    return g


def _ranked(s: Tensor, graph: Graph, absolute: bool) -> Tensor:
    key = s.abs() if absolute else s
    return torch.where(graph.edge_mask, key, torch.full_like(key, -torch.inf))


def top_n(scores: Tensor | object, n: int, *, absolute: bool = True, graph: Graph | None = None) -> Circuit:
    """The n edges with the largest |score| (or score)."""
    g, s = _graph(scores, graph), _scores(scores)
    if not 0 <= n <= g.n_edges:
        raise GraphError(f"n must be in [0, {g.n_edges}] (the number of edges), got {n}")
    flat = _ranked(s, g, absolute).flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.argsort(flat, descending=True, stable=True)[:n]] = True
    return Circuit(g, mask.view_as(s), Scoring.of(scores))


def threshold(scores: Tensor | object, tau: float, *, absolute: bool = True, graph: Graph | None = None) -> Circuit:
    """Every edge whose |score| (or score) is at least tau."""
    g, s = _graph(scores, graph), _scores(scores)
    return Circuit(g, (_ranked(s, g, absolute) >= tau) & g.edge_mask, Scoring.of(scores))


def greedy(scores: Tensor | object, n: int, *, absolute: bool = True, graph: Graph | None = None) -> Circuit:
    """Grow from the logits: repeatedly add the best edge whose destination is already in the circuit
    (the logits, or a node that feeds the circuit). The result is connected to the logits by construction."""
    g, s = _graph(scores, graph), _scores(scores)
    if not 0 <= n <= g.n_edges:
        raise GraphError(f"n must be in [0, {g.n_edges}] (the number of edges), got {n}")
    key = _ranked(s, g, absolute)
    live = {"logits"}
    chosen = torch.zeros_like(g.edge_mask)
    owners = [set(g.owners(j)) or {"logits"} for j in range(g.n_dst)]
    for _ in range(n):
        reachable = torch.tensor([bool(owners[j] & live) for j in range(g.n_dst)])
        cand = torch.where(reachable[None, :] & ~chosen, key, torch.full_like(key, -torch.inf))
        best = int(torch.argmax(cand))
        i, j = divmod(best, g.n_dst)
        if cand[i, j] == -torch.inf:
            break
        chosen[i, j] = True
        live.add(g.sources[i].name)
    return Circuit(g, chosen, Scoring.of(scores))


class Selection(str, Enum):
    """How a circuit of n edges is chosen from scores."""

    TOP_N = "top_n"  # the n largest, wherever they are
    GREEDY = "greedy"  # grown from the logits, connected by construction

    @classmethod
    def parse(cls, value: "Selection | str") -> "Selection":
        return parse_choice(cls, value, "selection", GraphError)


def select(scores: Tensor | object, n: int, selection: Selection | str = Selection.TOP_N, *, absolute: bool = True,
           graph: Graph | None = None) -> Circuit:
    """A circuit of n edges chosen by `selection`."""
    chooser = {Selection.TOP_N: top_n, Selection.GREEDY: greedy}[Selection.parse(selection)]
    return chooser(scores, n, absolute=absolute, graph=graph)


def prune(circuit: Circuit) -> Circuit:
    """Drop edges that cannot lie on a path from `input` to `logits` inside the circuit."""
    g, edges = circuit.graph, circuit.edges.clone()
    owners = [set(g.owners(j)) for j in range(g.n_dst)]
    while True:
        # forward: sources reachable from the input through circuit edges
        alive = {"input"}
        for j in range(g.n_dst):  # destinations are in topological order
            if owners[j] and any(edges[i, j] and g.sources[i].name in alive for i in range(g.n_upstream[j])):
                alive |= owners[j]
        # backward: sources whose output reaches the logits
        useful: set[str] = set()
        for j in reversed(range(g.n_dst)):
            if not owners[j] or owners[j] & useful:
                useful |= {g.sources[i].name for i in range(g.n_upstream[j]) if edges[i, j]}
        keep = edges.clone()
        for i, j in g.edges():
            if not edges[i, j]:
                continue
            src_ok = g.sources[i].name in alive and g.sources[i].name in useful
            dst_ok = (not owners[j]) or bool(owners[j] & alive & useful)
            keep[i, j] = src_ok and dst_ok
        if torch.equal(keep, edges):
            return Circuit(g, edges, circuit.scoring)
        edges = keep

