"""The formats other circuit tools read: EAP-IG's graph JSON, graphviz dot and GraphML; and EAP-IG's JSON read back.

EAP-IG's JSON (hannamw/EAP-IG, `Graph.to_json` / `Graph.from_json`) is a plain dict: "cfg" (n_layers, n_heads,
d_model, parallel_attn_mlp), "nodes" keyed by node name ("input", "a3.h1", "m3", "logits") with "in_graph", and
"edges" keyed "src->dst" ("a0.h1->a2.h3<q>", "m1->logits") with "score" and "in_graph". circuitdyn's node and
edge names are EAP-IG's, so a head graph of a model whose key/value heads equal its query heads writes a file
EAP-IG loads; layer graphs and grouped-query graphs write the same layout under circuitdyn's names (EAP-IG's
own graph has neither), with the graph's full spec under cfg["circuitdyn_graph"].

`in_graph` marks a circuit's edges (a Circuit, e.g. `top_n(attribution, 50)`); without one, every edge is in.
A dot file draws the circuit's edges only; JSON and GraphML carry every edge's score.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from circuitdyn.attribution.config import AttributionConfig
from circuitdyn.attribution.result import Attribution
from circuitdyn.circuits.circuit import Circuit
from circuitdyn.core.atomic import atomic_file, atomic_write_text
from circuitdyn.core.choices import parse_choice
from circuitdyn.core.digest import file_sha256
from circuitdyn.core.outputs import ArtifactError, check_output_file
from circuitdyn.graph import Granularity, Graph

#: the cfg keys EAP-IG's Graph.from_model reads, and the GraphSpec fields they come from
EAP_IG_CFG = {"n_layers": "n_layers", "n_heads": "n_heads", "d_model": "d_model",
              "parallel_attn_mlp": "parallel_attn_mlp"}
QKV_STYLE = {"q": "solid", "k": "dashed", "v": "dotted"}


class ExportFormat(str, Enum):
    EAP_IG_JSON = "eap-ig-json"
    DOT = "dot"
    GRAPHML = "graphml"


SUFFIX = {ExportFormat.EAP_IG_JSON: ".json", ExportFormat.DOT: ".dot", ExportFormat.GRAPHML: ".graphml"}


def _circuit(attribution: Attribution, circuit: Circuit | None) -> Circuit:
    if circuit is None:
        return Circuit.full(attribution.graph)
    if circuit.graph.spec != attribution.graph.spec:
        raise ArtifactError(f"the circuit is over another graph ({circuit.graph.spec}) than the attribution "
                            f"({attribution.graph.spec}); select it from this attribution, e.g. top_n(attribution, 50)")
    return circuit


def eap_ig_dict(attribution: Attribution, circuit: Circuit | None = None) -> dict[str, Any]:
    """The attribution as EAP-IG's graph JSON document (a plain dict)."""
    g, keep = attribution.graph, _circuit(attribution, circuit)
    spec = g.spec.as_dict()
    cfg: dict[str, Any] = {key: spec[field] for key, field in EAP_IG_CFG.items()}
    cfg["circuitdyn_graph"] = spec
    in_nodes = keep.nodes()
    nodes = {s.name: {"in_graph": s.name in in_nodes} for s in g.sources}
    nodes["logits"] = {"in_graph": True}  # EAP-IG's logits node is always in the graph
    edges = {f"{g.sources[i].name}->{g.destinations[j].name}":
             {"score": float(attribution.scores[i, j]), "in_graph": bool(keep.edges[i, j])} for i, j in g.edges()}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def _dot_id(name: str) -> str:
    return json.dumps(name)  # a double-quoted dot ID; node names hold no backslashes


def dot_text(attribution: Attribution, circuit: Circuit | None = None) -> str:
    """A graphviz digraph of the circuit's edges: nodes ranked by layer (input at the bottom), pen width by
    |score|, colour by sign (blue +, red -), q/k/v destinations as solid/dashed/dotted edges."""
    g, keep = attribution.graph, _circuit(attribution, circuit)
    kept = [(i, j) for i, j in g.edges() if keep.edges[i, j]]
    top = max((abs(float(attribution.scores[i, j])) for i, j in kept), default=0.0) or 1.0
    lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, style="rounded,filled", fontname=Helvetica];']
    rows: dict[int, list[str]] = {}
    for name in sorted(keep.nodes() | {"logits"}):
        layer = g.spec.n_layers if name == "logits" else g.sources[g.source_index(name)].layer
        rows.setdefault(layer, []).append(name)
    for layer, names in sorted(rows.items()):
        fill = {-1: "#dddddd", g.spec.n_layers: "#dddddd"}.get(layer, "#fde0c5")
        lines.append(f"  {{ rank=same; {' '.join(_dot_id(n) + f' [fillcolor={json.dumps(fill)}]' for n in names)} }}")
    for i, j in kept:
        score, d = float(attribution.scores[i, j]), g.destinations[j]
        style = QKV_STYLE.get(d.kind, "solid")
        colour = "#2166ac" if score >= 0 else "#b2182b"
        width = 0.5 + 4.5 * abs(score) / top
        tooltip = _dot_id(f"{g.sources[i].name}->{d.name}: {score:+.6g}")
        for owner in g.owners(j) or ("logits",):
            lines.append(f"  {_dot_id(g.sources[i].name)} -> {_dot_id(owner)} [penwidth={width:.3f}, "
                         f"color={json.dumps(colour)}, style={style}, tooltip={tooltip}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def networkx_graph(attribution: Attribution, circuit: Circuit | None = None) -> Any:
    """A networkx DiGraph over source and destination names with GraphML-safe attributes: nodes carry layer,
    kind, role, head (-1 for none) and owners (comma-joined); edges carry score and in_graph."""
    import networkx as nx

    g, keep = attribution.graph, _circuit(attribution, circuit)
    out = nx.DiGraph(granularity=Granularity(g.spec.granularity).value, n_layers=g.spec.n_layers, n_heads=g.spec.n_heads,
                     n_kv_heads=g.spec.n_kv_heads)
    for s in g.sources:
        out.add_node(s.name, layer=s.layer, kind=s.kind, role="source", head=-1 if s.head is None else s.head, owners="")
    for j, d in enumerate(g.destinations):
        out.add_node(d.name, layer=d.layer, kind=d.kind, role="destination", head=-1 if d.head is None else d.head,
                     owners=",".join(g.owners(j)))
    for i, j in g.edges():
        out.add_edge(g.sources[i].name, g.destinations[j].name, score=float(attribution.scores[i, j]),
                     in_graph=bool(keep.edges[i, j]))
    return out


def export_attribution(attribution: Attribution, path: str | Path, fmt: ExportFormat | str = ExportFormat.EAP_IG_JSON,
                       *, circuit: Circuit | None = None) -> Path:
    """Write `attribution` (and `circuit` as in_graph) in another tool's format; the write is atomic."""
    fmt = parse_choice(ExportFormat, fmt, "export format", ArtifactError)
    path = check_output_file(path, SUFFIX[fmt])
    if fmt is ExportFormat.EAP_IG_JSON:
        atomic_write_text(path, json.dumps(eap_ig_dict(attribution, circuit)))
    elif fmt is ExportFormat.DOT:
        atomic_write_text(path, dot_text(attribution, circuit))
    else:
        import networkx as nx

        with atomic_file(path) as tmp:
            nx.write_graphml(networkx_graph(attribution, circuit), str(tmp))
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: not a JSON file ({err}); give a file written by EAP-IG's Graph.to_json or "
                            "circuitdyn export --format eap-ig-json") from None
    missing = [k for k in ("cfg", "nodes", "edges") if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise ArtifactError(f"{path}: not EAP-IG graph JSON: no {missing} (its keys are cfg, nodes, edges)")
    return doc


def _check_cfg(path: Path, cfg: dict[str, Any], graph: Graph) -> None:
    spec = graph.spec.as_dict()
    differ = {key: (cfg[key], spec[field]) for key, field in EAP_IG_CFG.items() if key in cfg and cfg[key] != spec[field]}
    if differ:
        raise ArtifactError(f"{path} is a graph of another model: (file, graph) differ in {differ}; build the graph "
                            "from the model the file was scored on (Graph.from_model(model, 'head'))")
    theirs = cfg.get("circuitdyn_graph")
    if isinstance(theirs, dict) and theirs != spec:
        diff = {k: (theirs.get(k), v) for k, v in spec.items() if theirs.get(k) != v}
        raise ArtifactError(f"{path} was written for another graph: (file, graph) differ in {diff}; build the graph "
                            f"with those settings (e.g. granularity={theirs.get('granularity')!r})")


def _file_edges(path: Path, graph: Graph) -> dict[tuple[int, int], dict[str, Any]]:
    """Every edge entry of an EAP-IG graph JSON file written for `graph`, by its (source, destination) index,
    each with a finite score; refuses another model's or another graph's file, and missing or unknown edges."""
    doc = _read(path)
    _check_cfg(path, doc["cfg"], graph)
    names = {name: ij for name, ij in zip(graph.edge_names(), graph.edges())}
    given = doc["edges"]
    unknown = [n for n in given if n not in names]
    if unknown:
        hint = (" (its edges are head-level: build the graph with granularity='head')" if any(".h" in n for n in unknown)
                else "")
        raise ArtifactError(f"{path}: {len(unknown)} of its edges are not edges of this graph, e.g. {unknown[:3]}{hint}")
    absent = [n for n in names if n not in given]
    if absent:
        raise ArtifactError(f"{path} has no entry for {len(absent)} of the graph's {len(names)} edges, e.g. {absent[:3]} "
                            "(EAP-IG writes every edge; was the file cut short or edited?)")
    out = {}
    for name, info in given.items():
        score = info.get("score") if isinstance(info, dict) else None
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ArtifactError(f"{path}: edge {name} has score {score!r}; every edge needs a finite number")
        out[names[name]] = info
    return out


def import_eap_ig_json(path: str | Path, graph: Graph) -> Attribution:
    """An Attribution from EAP-IG's graph JSON, for `graph` (built from the same model: its edge names must be
    the file's). It holds the mean scores only (no per-example scores, no metric values); its provenance names
    the file and its sha256, and has no attribution config: a circuit selected from it has no recorded scoring."""
    path = Path(path)
    scores = torch.zeros(graph.n_src, graph.n_dst)
    for (i, j), info in _file_edges(path, graph).items():
        scores[i, j] = float(info["score"])
    provenance = {"imported": {"format": ExportFormat.EAP_IG_JSON.value, "file": str(path), "sha256": file_sha256(path)}}
    return Attribution(scores, graph, torch.zeros(0), AttributionConfig(), provenance=provenance)


def import_eap_ig_circuit(path: str | Path, graph: Graph) -> Circuit:
    """The edges EAP-IG's graph JSON marks `in_graph`, as a Circuit of `graph` (no recorded scoring)."""
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for (i, j), info in _file_edges(Path(path), graph).items():
        mask[i, j] = bool(info.get("in_graph", False))
    return Circuit(graph, mask)


__all__ = ["ExportFormat", "dot_text", "eap_ig_dict", "export_attribution", "import_eap_ig_circuit", "import_eap_ig_json",
           "networkx_graph"]
